//! Objects of any size through the memory tier, in fixed-size slices.
//!
//! An object is cached as slices of `cache.slice` bytes (the last one shorter), each its own
//! entry in the memory and disk tiers, as nginx's `slice` module and CloudFront do: a viewer
//! seeking into a 4 GiB MP4 costs the slices it reads, never the whole object, and what is held
//! in memory is bounded by the memory tier plus the slices filling. A slice is coalesced like any
//! entry (one upstream read however many viewers want it) and handed out while it fills: the
//! first byte of a cold object goes out when the upstream's first byte arrived.
//!
//! A response spanning several slices reads them in order, asking for the next one while the
//! current one is sent, and checks that each is of the same version of the object (size and
//! entity tag) as the first: a slice of another version is fetched again once, then the response
//! is cut (never a body stitched from two versions).

use crate::{
    FetchError, MediaKind, Source,
    fill::Data,
    tiers::{Tiers, slice_key},
};
use bytes::Bytes;
use edge_cache::{Cache, Status, Weighted};
use edge_contract::{BodyError, BodyStream};
use edge_origin::OriginError;
use futures::{StreamExt, stream::BoxStream};
use std::{
    ops::Range,
    sync::{Arc, OnceLock},
    time::{Duration, SystemTime},
};

/// An object as the tiers know it, without its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The whole object's size.
    pub size: u64,
    /// Strong entity tag, quoted (`"abc"`).
    pub etag: Option<String>,
    /// Last modification time.
    pub last_modified: Option<SystemTime>,
    /// The origin's `Cache-Control` for the object.
    pub cache_control: Option<String>,
    /// Which tier filled the memory tier with it.
    pub source: Source,
    /// When it was fetched from a seeder or the origin (for `Age`).
    pub fetched_at: SystemTime,
    /// An expired copy answering because the upstream failed.
    pub stale: bool,
    /// Freshness lifetime from `fetched_at` (the origin's `Cache-Control` or the configured TTL).
    pub max_age: Duration,
}

impl Head {
    /// Whether `other` describes the same version of the object.
    fn same_version(&self, other: &Head) -> bool {
        self.size == other.size
            && self.etag == other.etag
            && (self.etag.is_some() || self.last_modified == other.last_modified)
    }
}

/// One slice of an object, as the memory tier holds it: complete or filling.
#[derive(Clone)]
pub(crate) struct Slice {
    pub(crate) head: Arc<Head>,
    /// Offset of its first byte in the object.
    pub(crate) start: u64,
    /// Its length.
    pub(crate) len: u64,
    pub(crate) data: Arc<Data>,
    /// For a manifest of one slice: where tokens go, found once (`None` when it does not parse).
    pub(crate) manifest: Arc<OnceLock<Option<Arc<edge_manifest::Prepared>>>>,
}

impl Slice {
    pub(crate) fn new(head: Arc<Head>, start: u64, data: Arc<Data>) -> Self {
        Self {
            head,
            start,
            len: data.len(),
            data,
            manifest: Arc::default(),
        }
    }

    /// One past its last byte in the object.
    pub(crate) fn end(&self) -> u64 {
        self.start + self.len
    }
}

impl Weighted for Slice {
    fn weight(&self) -> usize {
        usize::try_from(self.len).unwrap_or(usize::MAX)
    }
}

/// The memory tier over slices, and the tiers that fill it. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Slices {
    pub(crate) memory: Cache<Slice, FetchError>,
    pub(crate) tiers: Arc<Tiers>,
}

impl Slices {
    /// Bytes per slice.
    pub(crate) fn size(&self) -> u64 {
        self.tiers.slice
    }

    /// Slice `index` of the object at `path`: from memory, or one coalesced fill.
    pub(crate) async fn get(
        &self,
        path: &str,
        index: u64,
        kind: MediaKind,
    ) -> Result<(Slice, Status), FetchError> {
        self.get_version(path, index, kind, None).await
    }

    /// [`Slices::get`], a fill asking the upstream for the version of entity tag `pin` (unquoted)
    /// when given (a fill already running is joined whatever it reads).
    async fn get_version(
        &self,
        path: &str,
        index: u64,
        kind: MediaKind,
        pin: Option<&str>,
    ) -> Result<(Slice, Status), FetchError> {
        let key = slice_key(path, index.saturating_mul(self.size()));
        let mut last = None;
        for _ in 0..2 {
            let fill = || {
                let (tiers, memory, p) = (self.tiers.clone(), self.memory.clone(), path.to_owned());
                let pin = pin.map(str::to_owned);
                async move { tiers.fill(&memory, &p, index, kind, pin.as_deref()).await }
            };
            let got = self.memory.get_or_fetch(&key, fill).await?;
            // A fill that failed after it was cached is on its way out: ask again.
            if !got.0.data.failed() {
                return Ok(got);
            }
            self.memory
                .remove_if(&key, |s| Arc::ptr_eq(&s.data, &got.0.data));
            last = Some(got.0);
        }
        let why = last
            .map(|s| s.data.error())
            .unwrap_or_else(|| OriginError::Unavailable("slice fill failed".into()));
        Err(FetchError::Origin(why))
    }

    /// `got`, the slice at `index` of the object at `path`, when it is of the version `head`
    /// describes. Another version: its copies (memory and disk) are dropped and the slice is
    /// asked for once more, of `head`'s version (its entity tag as `If-Match`: a seeder's version
    /// stays on the seeders, an origin's on the origin); still another version, the object
    /// changed at the origin, and every cached slice of it is dropped so the next viewer starts
    /// on one version.
    async fn same_version(
        &self,
        path: &str,
        kind: MediaKind,
        head: &Head,
        index: u64,
        mut got: Slice,
    ) -> Result<Slice, OriginError> {
        for attempt in 0..2 {
            if got.head.same_version(head) {
                return Ok(got);
            }
            let key = slice_key(path, got.start);
            self.memory
                .remove_if(&key, |s| Arc::ptr_eq(&s.data, &got.data));
            if let Some(disk) = &self.tiers.disk {
                disk.remove(&key).await;
            }
            if attempt == 1 {
                break;
            }
            let pin = head.etag.as_deref().map(|e| e.trim_matches('"'));
            match self.get_version(path, index, kind, pin).await {
                Ok((slice, _)) => got = slice,
                // The upstream no longer has that version.
                Err(FetchError::Origin(OriginError::Changed)) => break,
                Err(e) => return Err(origin_error(e)),
            }
        }
        tracing::warn!(
            path,
            "object changed at the origin while being served; cached slices dropped"
        );
        self.purge(path).await;
        Err(OriginError::Changed)
    }

    /// Removes `path` (every slice of it) from memory and disk: memory, disk, memory again — a
    /// slice memory evicts meanwhile is written to disk with a mark from before the disk purge
    /// (dropped), or stays in memory until the second pass.
    pub(crate) async fn purge(&self, path: &str) -> crate::Purged {
        let rest = format!("{path}\0");
        let memory = || usize::from(self.memory.purge(path)) + self.memory.purge_prefix(&rest);
        let mut purged = crate::Purged {
            memory: memory(),
            disk: 0,
        };
        if let Some(d) = &self.tiers.disk {
            purged.disk = usize::from(d.remove(path).await) + d.purge_prefix(&rest).await;
        }
        purged.memory += memory();
        purged
    }

    /// The bytes `range` of the object whose first slice read is `first`, slice after slice,
    /// the next one asked for while the current one is sent.
    pub(crate) fn stream(
        &self,
        path: &str,
        kind: MediaKind,
        first: Slice,
        range: Range<u64>,
    ) -> BodyStream {
        let cursor = Cursor {
            slices: self.clone(),
            path: Arc::from(path),
            kind,
            head: first.head.clone(),
            first: Some(first),
            pos: range.start,
            end: range.end,
            reading: None,
            ahead: None,
            ahead_at: None,
        };
        futures::stream::unfold(cursor, |mut c| async move {
            let item = c.next().await?;
            if item.is_err() {
                c.pos = c.end;
                c.reading = None;
            }
            Some((item, c))
        })
        .boxed()
    }

    /// The whole object whose first slice is `first` (manifests, which are rewritten whole), up
    /// to `limit` bytes.
    pub(crate) async fn whole(
        &self,
        path: &str,
        kind: MediaKind,
        first: &Slice,
        limit: u64,
    ) -> Result<Bytes, OriginError> {
        if first.head.size > limit {
            return Err(OriginError::TooLarge(first.head.size));
        }
        if first.start == 0
            && first.len == first.head.size
            && let Some(b) = first.data.whole()
        {
            return Ok(b);
        }
        let mut body = self.stream(path, kind, first.clone(), 0..first.head.size);
        let mut all = bytes::BytesMut::new();
        while let Some(chunk) = body.next().await {
            all.extend_from_slice(&chunk.map_err(|e| OriginError::Unavailable(e.to_string()))?);
        }
        Ok(all.freeze())
    }
}

fn origin_error(e: FetchError) -> OriginError {
    match e {
        FetchError::Origin(e) => e,
        FetchError::Task(e) => OriginError::Unavailable(e.to_string()),
    }
}

/// A slice asked for ahead of the reader.
type Ahead = (u64, tokio::task::JoinHandle<Result<Slice, OriginError>>);

/// Where a streamed response is.
struct Cursor {
    slices: Slices,
    path: Arc<str>,
    kind: MediaKind,
    /// The version every slice must be of.
    head: Arc<Head>,
    /// The slice the response was planned on, until it is read.
    first: Option<Slice>,
    pos: u64,
    end: u64,
    reading: Option<BoxStream<'static, Result<Bytes, OriginError>>>,
    /// The next slice, asked for while the current one is sent (held here: a slice the memory
    /// tier does not keep would otherwise be filled twice).
    ahead: Option<Ahead>,
    /// When the reader passes this byte, the slice starting at the second one is asked for:
    /// half-way through the current slice, so a player that probes and hangs up costs no extra
    /// slice.
    ahead_at: Option<(u64, u64)>,
}

impl Cursor {
    async fn next(&mut self) -> Option<Result<Bytes, BodyError>> {
        loop {
            if let Some(reading) = &mut self.reading {
                match reading.next().await {
                    Some(Ok(b)) => {
                        self.pos += b.len() as u64;
                        self.maybe_read_ahead();
                        return Some(Ok(b));
                    }
                    Some(Err(e)) => return Some(Err(BodyError::Interrupted(e.to_string()))),
                    None => self.reading = None,
                }
            }
            if self.pos >= self.end {
                return None;
            }
            let slice = match self.slice_at(self.pos).await {
                Ok(s) => s,
                Err(e) => return Some(Err(BodyError::Interrupted(e.to_string()))),
            };
            if slice.end() <= self.pos || slice.start > self.pos {
                return Some(Err(BodyError::Interrupted(format!(
                    "slice at {} does not hold byte {}",
                    slice.start, self.pos
                ))));
            }
            if slice.end() < self.end {
                self.ahead_at = Some((slice.start + slice.len / 2, slice.end()));
                self.maybe_read_ahead();
            }
            let (from, to) = (
                self.pos - slice.start,
                self.end.min(slice.end()) - slice.start,
            );
            self.reading = Some(slice.data.clone().read(from, to).boxed());
        }
    }

    /// The slice holding byte `at`, of the response's version.
    async fn slice_at(&mut self, at: u64) -> Result<Slice, OriginError> {
        if let Some(first) = self.first.take()
            && (first.start..first.end()).contains(&at)
        {
            return Ok(first);
        }
        let index = at / self.slices.size();
        let got = match self.ahead.take() {
            Some((i, task)) if i == index => task
                .await
                .map_err(|e| OriginError::Unavailable(e.to_string()))??,
            _ => {
                self.slices
                    .get(&self.path, index, self.kind)
                    .await
                    .map_err(origin_error)?
                    .0
            }
        };
        let head = self.head.clone();
        self.slices
            .same_version(&self.path, self.kind, &head, index, got)
            .await
    }

    /// Asks for the slice starting at the end of the current one once the reader is half-way
    /// through it, so it fills while the rest of the current one is sent.
    fn maybe_read_ahead(&mut self) {
        let Some((at, next_start)) = self.ahead_at else {
            return;
        };
        if self.pos < at || self.ahead.is_some() {
            return;
        }
        self.ahead_at = None;
        let next = next_start / self.slices.size();
        let (slices, path, kind) = (self.slices.clone(), self.path.clone(), self.kind);
        let task = tokio::spawn(async move {
            slices
                .get(&path, next, kind)
                .await
                .map(|(s, _)| s)
                .map_err(origin_error)
        });
        self.ahead = Some((next, task));
    }
}

impl Drop for Cursor {
    fn drop(&mut self) {
        // A viewer gone: the slice asked for ahead is not waited for (its fill, once started,
        // completes in its own task and stays cached).
        if let Some((_, task)) = self.ahead.take() {
            task.abort();
        }
    }
}
