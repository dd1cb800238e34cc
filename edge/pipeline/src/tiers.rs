//! Filling the memory tier from the tiers below it: disk, then the upstream (seeders, origin),
//! one slice at a time.
//!
//! Runs inside the memory tier's coalesced fetch, so 200 concurrent misses of one slice read the
//! disk once and ask the upstream at most once. A fill from the upstream answers as soon as the
//! upstream did: its body is copied into the slice by a task of its own, which every viewer of
//! the slice follows (see `fill.rs`); a body that breaks off is resumed from where it stopped
//! with a range request for the same version of the object.

use crate::{
    EventSink, FetchError, MediaKind,
    fill::{Data, FinishGuard},
    slices::{Head, Slice},
};
use bytes::{Bytes, BytesMut};
use edge_cache::Cache;
use edge_disk_cache::{DiskCache, Meta, PurgeMark};
use edge_events::{CacheFill, NewRecord};
use edge_origin::{Origin, OriginError, Tier};
use futures::{FutureExt, StreamExt};
use headers::{CacheControl, HeaderMapExt};
use http::{HeaderMap, HeaderValue};
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

/// A filling slice is handed to its readers in pieces of at most this much, and of at least
/// [`MIN_PIECE`] when the upstream pauses (the first bytes go at once): readers follow the fill
/// closely without a wake-up per network read, and a complete slice is a few pieces to write.
const PIECE: usize = 1 << 20;
const MIN_PIECE: usize = 64 << 10;
/// How long bytes smaller than [`MIN_PIECE`] wait for more before readers get them anyway.
const LINGER: Duration = Duration::from_millis(2);

/// How often a body that broke off is resumed (range request from where it stopped) before the
/// fill fails.
const RESUMES: usize = 2;

/// Where the object a viewer got came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The disk tier.
    Disk,
    /// A seeder node.
    Seeder,
    /// The origin store.
    Origin,
}

impl Source {
    /// `disk`, `seeder` or `origin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disk => "disk",
            Self::Seeder => "seeder",
            Self::Origin => "origin",
        }
    }
}

/// Metrics of the tiers below memory:
///
/// | metric | labels | meaning |
/// |---|---|---|
/// | `edge_cache_lookups_total` | tier=`disk`, result | `hit`, `miss`, `stale` (expired copy served because the upstream failed) |
/// | `edge_cache_served_bytes_total` | tier | body bytes served to viewers by tier (`memory`, `disk`, `seeder`, `origin`, `stale`) |
/// | `edge_upstream_fills_total` | source, result | slice fills from below the disk: `seeder`/`origin` × `ok`, or `upstream` × `error`/`not_found`/`busy` (no free place among `max_fills` within 10 s) |
/// | `edge_upstream_resumes_total` | | bodies that broke off and were resumed with a range request |
#[derive(Clone)]
pub(crate) struct TierMetrics {
    disk_hit: IntCounter,
    disk_miss: IntCounter,
    disk_stale: IntCounter,
    served: IntCounterVec,
    fills: IntCounterVec,
    resumes: IntCounter,
}

impl TierMetrics {
    pub(crate) fn new(
        registry: &Registry,
        lookups: &IntCounterVec,
    ) -> Result<Self, prometheus::Error> {
        let served = IntCounterVec::new(
            Opts::new(
                "edge_cache_served_bytes_total",
                "Body bytes served to viewers by tier",
            ),
            &["tier"],
        )?;
        let fills = IntCounterVec::new(
            Opts::new(
                "edge_upstream_fills_total",
                "Fills from seeders and the origin",
            ),
            &["source", "result"],
        )?;
        let resumes = IntCounter::new(
            "edge_upstream_resumes_total",
            "Upstream bodies that broke off and were resumed with a range request",
        )?;
        registry.register(Box::new(served.clone()))?;
        registry.register(Box::new(fills.clone()))?;
        registry.register(Box::new(resumes.clone()))?;
        Ok(Self {
            disk_hit: lookups.with_label_values(&["disk", "hit"]),
            disk_miss: lookups.with_label_values(&["disk", "miss"]),
            disk_stale: lookups.with_label_values(&["disk", "stale"]),
            served,
            fills,
            resumes,
        })
    }

    pub(crate) fn served(&self, tier: &str, bytes: usize) {
        self.served.with_label_values(&[tier]).inc_by(bytes as u64);
    }
}

/// Freshness rules of a fill.
#[derive(Debug, Clone)]
pub(crate) struct Freshness {
    pub(crate) manifest_ttl: Duration,
    pub(crate) segment_ttl: Duration,
    pub(crate) stale_if_error: Duration,
}

impl Freshness {
    /// How long an object stays fresh: the origin's `Cache-Control` when it says, else the
    /// configured TTL of its kind. Zero = not cached.
    pub(crate) fn ttl(&self, kind: MediaKind, cache_control: Option<&str>) -> Duration {
        let default = match kind {
            MediaKind::Manifest => self.manifest_ttl,
            MediaKind::Segment => self.segment_ttl,
        };
        let Some(cc) = cache_control
            .and_then(|v| HeaderValue::from_str(v).ok())
            .and_then(|v| {
                let mut h = HeaderMap::new();
                h.insert(http::header::CACHE_CONTROL, v);
                h.typed_get::<CacheControl>()
            })
        else {
            return default;
        };
        if cc.no_store() || cc.no_cache() || cc.private() {
            return Duration::ZERO;
        }
        cc.s_max_age().or(cc.max_age()).unwrap_or(default)
    }
}

/// The tiers below memory.
pub(crate) struct Tiers {
    pub(crate) upstream: Arc<dyn Origin>,
    pub(crate) disk: Option<DiskCache>,
    pub(crate) freshness: Freshness,
    pub(crate) metrics: TierMetrics,
    pub(crate) events: std::sync::OnceLock<Arc<dyn EventSink>>,
    /// Bytes per slice.
    pub(crate) slice: u64,
    /// One permit per fill from the upstream in progress (`max_fills`).
    pub(crate) fills: Arc<tokio::sync::Semaphore>,
    /// Longest one slice may take to fill.
    pub(crate) fill_timeout: Duration,
}

/// How long a fill waits for a free place among `max_fills` before it fails as an outage.
const FILL_WAIT: Duration = Duration::from_secs(10);

/// The key of the slice starting at byte `start` of the object at `path`: the path itself for
/// the first slice (so an object of one slice is cached under its path, as before slicing),
/// `path` NUL `start` for the others (normalised paths never hold a NUL).
pub(crate) fn slice_key(path: &str, start: u64) -> std::borrow::Cow<'_, str> {
    if start == 0 {
        path.into()
    } else {
        format!("{path}\0{start}").into()
    }
}

/// A slice being filled from the upstream, handed to its task.
struct Filling {
    key: String,
    path: String,
    slice: Slice,
    /// The object as the upstream described it (for resuming the same version).
    info: edge_origin::ObjectInfo,
    ttl: Duration,
    mark: Option<PurgeMark>,
    started: Instant,
    /// Its place among `max_fills`, given back when the body is in.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Tiers {
    /// The slice `index` of the object at `path` (of media `kind`) from disk (fresh) or the
    /// upstream; an expired disk copy when the upstream is down. Returns as soon as the upstream
    /// answered, with how long the memory tier may keep the slice; its body then fills in a task
    /// that removes the slice from `memory` again if the body fails. With `pin` (an unquoted
    /// entity tag), the upstream is asked for that version (`If-Match`) and a disk copy of
    /// another is not used.
    pub(crate) async fn fill(
        self: &Arc<Self>,
        memory: &Cache<Slice, FetchError>,
        path: &str,
        index: u64,
        kind: MediaKind,
        pin: Option<&str>,
    ) -> Result<(Slice, Duration), FetchError> {
        let started = Instant::now();
        let start = index.saturating_mul(self.slice);
        let key = slice_key(path, start);
        let now = SystemTime::now();
        // Before the lookup: a purge from here on drops the disk write of what the upstream
        // returns, which may have been read before the purge.
        let mut mark = self.disk.as_ref().map(DiskCache::purge_mark);
        let mut expired = None;
        if let Some(disk) = &self.disk {
            match disk.get(&key).await {
                Some(e)
                    if !self.fits(&e.meta, e.body.len() as u64, start)
                        || pin.is_some_and(|p| {
                            e.meta.etag.as_deref().map(|t| t.trim_matches('"')) != Some(p)
                        }) =>
                {
                    disk.remove(&key).await;
                    // After our own removal: the slice read below may be kept.
                    mark = Some(disk.purge_mark());
                }
                Some(e) if e.meta.expires_at > now => {
                    self.metrics.disk_hit.inc();
                    let ttl = e.meta.expires_at.duration_since(now).unwrap_or_default();
                    let slice = from_disk(start, e.body, &e.meta, false);
                    self.emit(&key, "disk", "ok", slice.len, started);
                    return Ok((slice, ttl));
                }
                Some(e) => expired = Some(e),
                None => {}
            }
            self.metrics.disk_miss.inc();
        }
        let permit = match tokio::time::timeout(FILL_WAIT, self.fills.clone().acquire_owned()).await
        {
            Ok(Ok(p)) => Ok(p),
            _ => Err(OriginError::Unavailable(
                "every fill slot is taken (cache.max_fills)".into(),
            )),
        };
        let busy = permit.is_err();
        let range = start..start.saturating_add(self.slice);
        let opened = match permit {
            Ok(permit) => self
                .upstream
                .open(path, Some(range), pin)
                .await
                .map(|o| (o, permit)),
            Err(busy) => {
                self.metrics
                    .fills
                    .with_label_values(&["upstream", "busy"])
                    .inc();
                Err(busy)
            }
        };
        match opened {
            Ok((opened, permit)) => {
                let source = match opened.info.tier {
                    Tier::Seeder => crate::Source::Seeder,
                    Tier::Origin => crate::Source::Origin,
                };
                let expected = opened.info.size.saturating_sub(start).min(self.slice);
                let got = opened.range.end - opened.range.start;
                if opened.range.start != start || got != expected {
                    let e = OriginError::Unavailable(format!(
                        "upstream answered bytes {:?} of {} for slice at {start}",
                        opened.range, opened.info.size
                    ));
                    return Err(self.failed(&key, e, started));
                }
                self.metrics
                    .fills
                    .with_label_values(&[source.as_str(), "ok"])
                    .inc();
                let ttl = self
                    .freshness
                    .ttl(kind, opened.info.cache_control.as_deref());
                let head = Head {
                    size: opened.info.size,
                    etag: opened
                        .info
                        .etag
                        .as_deref()
                        .map(|e| format!("\"{}\"", e.trim_matches('"'))),
                    last_modified: opened.info.last_modified,
                    cache_control: opened.info.cache_control.clone(),
                    source,
                    fetched_at: now,
                    stale: false,
                    max_age: ttl,
                };
                let slice = Slice::new(Arc::new(head), start, Arc::new(Data::empty(got)));
                let task = Filling {
                    key: key.into_owned(),
                    path: path.to_owned(),
                    slice: slice.clone(),
                    info: opened.info,
                    ttl,
                    mark,
                    started,
                    _permit: permit,
                };
                tokio::spawn(self.clone().copy(memory.clone(), task, opened.body));
                Ok((slice, ttl))
            }
            Err(e) => {
                if !busy {
                    self.metrics
                        .fills
                        .with_label_values(&["upstream", outcome(&e)])
                        .inc();
                }
                match expired {
                    Some(entry)
                        if e.is_outage()
                            && entry.meta.expires_at + self.freshness.stale_if_error > now =>
                    {
                        self.metrics.disk_stale.inc();
                        tracing::warn!(key = &*key, error = %e, "upstream failed; serving the expired disk copy");
                        let slice = from_disk(start, entry.body, &entry.meta, true);
                        self.emit(&key, "disk", "stale", slice.len, started);
                        Ok((slice, Duration::ZERO))
                    }
                    Some(_) if e == OriginError::NotFound => {
                        if let Some(disk) = &self.disk {
                            disk.remove(&key).await;
                        }
                        Err(self.failed(&key, e, started))
                    }
                    _ => Err(self.failed(&key, e, started)),
                }
            }
        }
    }

    /// Whether a disk entry of `len` bytes is the slice at `start` under the current slice size
    /// (entries written whole, or with another slice size, are not).
    fn fits(&self, meta: &Meta, len: u64, start: u64) -> bool {
        let size = meta.object_size.unwrap_or(len);
        start < size.max(1) && len == size.saturating_sub(start).min(self.slice)
    }

    fn failed(&self, key: &str, e: OriginError, started: Instant) -> FetchError {
        self.emit(key, "upstream", outcome(&e), 0, started);
        e.into()
    }

    /// Records a `cache.fill` event, when events are on.
    fn emit(&self, key: &str, source: &str, result: &str, bytes: u64, started: Instant) {
        let Some(events) = self.events.get() else {
            return;
        };
        let fill = CacheFill {
            path: key.split('\0').next().unwrap_or(key).to_owned(),
            source: source.to_owned(),
            result: result.to_owned(),
            bytes,
            millis: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            timestamp: edge_events::timestamp(SystemTime::now()),
        };
        events.emit(NewRecord::new(&fill, key));
    }

    /// Copies the upstream body into the slice; then keeps it on disk. A failed body ends the
    /// slice's readers with the error and takes the slice out of `memory`.
    async fn copy(
        self: Arc<Self>,
        memory: Cache<Slice, FetchError>,
        task: Filling,
        body: edge_origin::ByteStream,
    ) {
        let data = task.slice.data.clone();
        let guard = FinishGuard(data.clone());
        let source = task.slice.head.source.as_str();
        let filled = tokio::time::timeout(self.fill_timeout, self.body(&task, body))
            .await
            .unwrap_or(Err(OriginError::Timeout(self.fill_timeout)));
        match filled {
            Ok(()) => {
                data.finish(Ok(()));
                self.emit(&task.key, source, "ok", task.slice.len, task.started);
                // The disk tier is a victim cache: a slice goes there when memory lets go of
                // it. One memory let go of while it filled (evicted, not admitted) is written
                // now; the eviction hook writes those it lets go of later.
                if data.let_go() && !task.ttl.is_zero() {
                    self.keep(
                        &task.key,
                        &task.slice,
                        task.mark,
                        task.slice.head.fetched_at + task.ttl,
                    );
                }
            }
            Err(e) => {
                tracing::warn!(path = task.path, slice = task.slice.start, error = %e, "fill failed mid-body");
                data.finish(Err(e));
                memory.remove_if(&task.key, |s| Arc::ptr_eq(&s.data, &data));
                self.emit(&task.key, source, "error", 0, task.started);
            }
        }
        drop(guard);
    }

    /// Moves the bytes of `body` into the slice of `task`, resuming a body that broke off.
    async fn body(
        &self,
        task: &Filling,
        mut body: edge_origin::ByteStream,
    ) -> Result<(), OriginError> {
        let len = task.slice.len;
        let data = &task.slice.data;
        let mut buf = BytesMut::with_capacity(usize::try_from(len).unwrap_or(0));
        let mut done = 0u64;
        let mut resumes = 0;
        loop {
            let item = match body.next().now_or_never() {
                Some(item) => item,
                None => {
                    // The upstream pauses: hand readers what is here (the first bytes at once,
                    // later ones in pieces of at least MIN_PIECE, or whatever is here once the
                    // pause lasts LINGER), then wait.
                    if done == 0 || buf.len() >= MIN_PIECE {
                        hand_over(data, &mut buf, &mut done);
                    }
                    if buf.is_empty() {
                        body.next().await
                    } else {
                        match tokio::time::timeout(LINGER, body.next()).await {
                            Ok(item) => item,
                            Err(_) => {
                                hand_over(data, &mut buf, &mut done);
                                body.next().await
                            }
                        }
                    }
                }
            };
            match item {
                Some(Ok(chunk)) => {
                    if done + (buf.len() + chunk.len()) as u64 > len {
                        return Err(OriginError::Unavailable(format!(
                            "upstream sent more than the {len} bytes of the slice"
                        )));
                    }
                    buf.extend_from_slice(&chunk);
                    // Complete: readers get the rest now, not when the stream says it ended.
                    if done + buf.len() as u64 == len {
                        break;
                    }
                    if buf.len() >= PIECE {
                        hand_over(data, &mut buf, &mut done);
                    }
                }
                // Every byte is here: however the stream ends, the slice is complete.
                _ if done + buf.len() as u64 == len => break,
                end => {
                    let error = match end {
                        Some(Err(e)) => e,
                        _ => OriginError::Unavailable("body ended early".into()),
                    };
                    hand_over(data, &mut buf, &mut done);
                    if resumes == RESUMES || error == OriginError::Changed {
                        return Err(error);
                    }
                    resumes += 1;
                    body = self.resume(task, done, &error).await?;
                }
            }
        }
        hand_over(data, &mut buf, &mut done);
        Ok(())
    }

    /// The rest of the slice of `task` from byte `done` of it, of the same version of the object.
    async fn resume(
        &self,
        task: &Filling,
        done: u64,
        error: &OriginError,
    ) -> Result<edge_origin::ByteStream, OriginError> {
        let from = task.slice.start + done;
        let to = task.slice.start + task.slice.len;
        tracing::info!(path = task.path, from, to, %error, "upstream body broke off; resuming with a range request");
        self.metrics.resumes.inc();
        let etag = task.info.etag.as_deref();
        let opened = self.upstream.open(&task.path, Some(from..to), etag).await?;
        // Checked here too: not every origin honours If-Match.
        let same = match etag {
            Some(e) => opened.info.etag.as_deref() == Some(e),
            None => opened.info.last_modified == task.info.last_modified,
        };
        if !same || opened.range != (from..to) || opened.info.size != task.slice.head.size {
            return Err(OriginError::Changed);
        }
        Ok(opened.body)
    }

    /// Writes `slice` (when complete) to disk under `key` in the background, fresh until
    /// `expires_at`; dropped if a purge of `key` came after `mark`.
    pub(crate) fn keep(
        &self,
        key: &str,
        slice: &Slice,
        mark: Option<PurgeMark>,
        expires_at: SystemTime,
    ) {
        if let Some(write) = self.disk_write(key, slice, mark, expires_at) {
            tokio::spawn(write);
        }
    }

    /// The disk write of [`Tiers::keep`], to run wherever the caller likes; `None` when there is
    /// nothing to write (no disk tier, the slice incomplete, or no longer servable even stale).
    fn disk_write(
        &self,
        key: &str,
        slice: &Slice,
        mark: Option<PurgeMark>,
        expires_at: SystemTime,
    ) -> Option<impl std::future::Future<Output = bool> + Send + 'static> {
        let (Some(disk), Some(mark)) = (self.disk.clone(), mark) else {
            return None;
        };
        if expires_at + self.freshness.stale_if_error <= SystemTime::now() {
            return None;
        }
        let pieces = slice.data.pieces()?;
        let head = &slice.head;
        let meta = Meta {
            etag: head.etag.clone(),
            last_modified: head.last_modified,
            cache_control: head.cache_control.clone(),
            stored_at: head.fetched_at,
            expires_at,
            source: head.source.as_str().to_owned(),
            object_size: Some(head.size),
        };
        let key = key.to_owned();
        Some(async move {
            let body = match pieces.as_slice() {
                [one] => one.clone(),
                _ => {
                    match tokio::task::spawn_blocking(move || Bytes::from(pieces.concat())).await {
                        Ok(b) => b,
                        Err(_) => return false,
                    }
                }
            };
            match disk.put_since(&key, body, meta, mark).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::debug!(key, error = %e, "not kept on disk");
                    false
                }
            }
        })
    }

    /// What memory evicted (or did not admit), caught by the disk tier. A slice still filling
    /// is marked, and written by its fill task once complete.
    pub(crate) fn victim(&self, key: &str, slice: &Slice, expires: tokio::time::Instant) {
        let Some(disk) = &self.disk else { return };
        // Marked before looking at its bytes: either this sees it complete, or its fill task,
        // finishing after, sees the mark (or both, and it is written twice: harmless).
        slice.data.mark_let_go();
        if slice.data.filling() || self.on_disk(key, slice) {
            return;
        }
        self.keep(key, slice, Some(disk.purge_mark()), wall_clock(expires));
    }

    /// Whether the disk tier has this slice already (it came from there and is still there).
    fn on_disk(&self, key: &str, slice: &Slice) -> bool {
        slice.head.source == crate::Source::Disk
            && self
                .disk
                .as_ref()
                .is_some_and(|d| d.expires_at(key).is_some())
    }

    /// Writes every complete slice memory holds (and disk does not) to disk, one after the
    /// other; returns how many were written. For a drain: a victim cache keeps nothing of what
    /// only memory held across a restart otherwise. Slices still filling are not waited for.
    pub(crate) async fn spill(&self, memory: &Cache<Slice, FetchError>) -> usize {
        let Some(disk) = &self.disk else { return 0 };
        let mark = disk.purge_mark();
        let mut written = 0;
        for (key, slice, expires) in memory.snapshot() {
            if self.on_disk(&key, &slice) {
                continue;
            }
            if let Some(write) = self.disk_write(&key, &slice, Some(mark), wall_clock(expires))
                && write.await
            {
                written += 1;
            }
        }
        written
    }
}

/// `not_found` or `error`, for metrics and events.
fn outcome(e: &OriginError) -> &'static str {
    if *e == OriginError::NotFound {
        "not_found"
    } else {
        "error"
    }
}

/// Gives the slice's readers what `buf` holds (nothing when it is empty), counting it in `done`.
fn hand_over(data: &Data, buf: &mut BytesMut, done: &mut u64) {
    if !buf.is_empty() {
        *done += buf.len() as u64;
        data.push(buf.split().freeze());
    }
}

/// The wall-clock time of the monotonic `at`.
fn wall_clock(at: tokio::time::Instant) -> SystemTime {
    let now = tokio::time::Instant::now();
    if at >= now {
        SystemTime::now() + (at - now)
    } else {
        SystemTime::now() - (now - at)
    }
}

fn from_disk(start: u64, body: Bytes, meta: &Meta, stale: bool) -> Slice {
    let len = body.len() as u64;
    let max_age = if stale {
        Duration::ZERO
    } else {
        meta.expires_at
            .duration_since(meta.stored_at)
            .unwrap_or_default()
    };
    let head = Head {
        size: meta.object_size.unwrap_or(len),
        etag: meta.etag.clone(),
        last_modified: meta.last_modified,
        cache_control: meta.cache_control.clone(),
        source: crate::Source::Disk,
        fetched_at: meta.stored_at,
        stale,
        max_age,
    };
    Slice::new(Arc::new(head), start, Arc::new(Data::complete(body)))
}
