//! Which seeders to ask for a segment: membership (the ring), the directory lookup and its short
//! local cache, and the candidate order.

use crate::{
    SeederOrigin, fetch,
    health::SeederState,
    hedge::{self, OriginLink},
    ring::{Member, Ring},
};
use edge_directory::{Holding, SegmentRef};
use edge_kv::KvError;
use edge_origin::{Opened, OriginError};
use parking_lot::Mutex;
use std::{
    collections::{HashMap, HashSet},
    ops::Range,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// Most directory answers kept locally; beyond it expired ones are dropped (all of them if none
/// expired).
const MAX_LOOKUPS: usize = 65_536;

/// The directory's seeder list as last read.
#[derive(Debug)]
pub(crate) struct Membership {
    /// Seeders with a fresh heartbeat.
    pub(crate) ring: Arc<Ring>,
    /// Listed seeders whose heartbeat is stale: their directory entries are ignored.
    pub(crate) stale: HashSet<String>,
    /// Every listed seeder (fresh or stale), i.e. whose `seeder:<id>` record exists.
    pub(crate) listed: HashSet<String>,
}

impl Default for Membership {
    fn default() -> Self {
        Self {
            ring: Arc::new(Ring::new(Vec::new())),
            stale: HashSet::new(),
            listed: HashSet::new(),
        }
    }
}

/// A directory answer and when it was read.
type Lookup = (Instant, Arc<[Holding]>);

/// Directory answers (holders per segment, empty ones included) for `ttl`.
#[derive(Debug)]
pub(crate) struct Lookups {
    ttl: Duration,
    map: Mutex<HashMap<SegmentRef, Lookup>>,
}

impl Lookups {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            map: Mutex::default(),
        }
    }

    fn get(&self, segment: &SegmentRef) -> Option<Arc<[Holding]>> {
        let map = self.map.lock();
        let (at, holders) = map.get(segment)?;
        (at.elapsed() < self.ttl).then(|| holders.clone())
    }

    fn put(&self, segment: SegmentRef, holders: Arc<[Holding]>) {
        if self.ttl.is_zero() {
            return;
        }
        let mut map = self.map.lock();
        if map.len() >= MAX_LOOKUPS {
            map.retain(|_, (at, _)| at.elapsed() < self.ttl);
            if map.len() >= MAX_LOOKUPS {
                map.clear();
            }
        }
        map.insert(segment, (Instant::now(), holders));
    }
}

/// The SHA-256 of each slice of a content, in order.
pub(crate) type Digests = Arc<[[u8; 32]]>;

/// Most slice lists kept (each up to 32 bytes a slice: 32 KiB for 4 GiB in 4 MiB slices).
const MAX_SLICE_LISTS: usize = 1024;

/// Slice lists read from the directory, by content checksum: found ones are kept (the key is
/// content-addressed, its value never changes) up to [`MAX_SLICE_LISTS`], missing ones for `ttl`.
#[derive(Debug)]
pub(crate) struct SliceLists {
    ttl: Duration,
    map: Mutex<HashMap<String, (Instant, Option<Digests>)>>,
}

impl SliceLists {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            map: Mutex::default(),
        }
    }

    /// `Some(list)` when known (`None` inside: none published, as of less than `ttl` ago).
    #[allow(
        clippy::option_option,
        reason = "not looked up, looked up and absent, looked up and found"
    )]
    fn get(&self, checksum: &str) -> Option<Option<Digests>> {
        let map = self.map.lock();
        let (at, list) = map.get(checksum)?;
        (list.is_some() || at.elapsed() < self.ttl).then(|| list.clone())
    }

    /// A list found, of the content whose seeders' entity tag is `tag`, with its checksum.
    fn by_tag(&self, tag: &str) -> Option<(String, Digests)> {
        let map = self.map.lock();
        map.iter().find_map(|(sum, (_, list))| {
            let list = list.as_ref()?;
            (crate::etag_of(sum) == tag).then(|| (sum.clone(), list.clone()))
        })
    }

    fn put(&self, checksum: &str, list: Option<Digests>) {
        let mut map = self.map.lock();
        if map.len() >= MAX_SLICE_LISTS {
            map.clear();
        }
        map.insert(checksum.to_owned(), (Instant::now(), list));
    }
}

/// A seeder to ask, in order.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub(crate) seeder: Arc<SeederState>,
    pub(crate) address: String,
    /// The directory's checksum of the segment at this seeder, when it holds it.
    pub(crate) checksum: Option<String>,
    /// The directory's size of the segment at this seeder, when it holds it.
    pub(crate) size: Option<u64>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl SeederOrigin {
    /// Reads the seeder list; rebuilds the ring when the live seeders (fresh heartbeat) or their
    /// addresses changed, and forgets the seeders that left. On a directory error the last
    /// membership stays.
    pub(crate) async fn refresh_membership(&self) {
        let statuses = match self.directory.seeders().await {
            Ok(s) => {
                self.directory_ok();
                s
            }
            Err(e) => {
                self.directory_error(&e);
                return;
            }
        };
        let fresh_after = now_ms().saturating_sub(
            u64::try_from(self.cfg.heartbeat_stale.as_millis()).unwrap_or(u64::MAX),
        );
        let mut live = Vec::new();
        let mut stale = HashSet::new();
        let mut listed = HashSet::new();
        for s in statuses {
            listed.insert(s.seeder_id.clone());
            if s.last_active >= fresh_after && !s.address.is_empty() {
                live.push(Member {
                    id: s.seeder_id,
                    address: s.address,
                });
            } else {
                stale.insert(s.seeder_id);
            }
        }
        live.sort_by(|a, b| a.id.cmp(&b.id));
        let current = self.membership.load();
        let ring = if current.ring.members() == live.as_slice() {
            current.ring.clone()
        } else {
            tracing::info!(
                seeders = ?live.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
                "seeder ring rebuilt"
            );
            Arc::new(Ring::new(live))
        };
        for m in ring.members() {
            self.seeders
                .get_or_insert(&m.id, &m.address, true, &self.metrics);
        }
        let keep: HashSet<&str> = ring.members().iter().map(|m| m.id.as_str()).collect();
        self.seeders.retain(&keep, &self.metrics);
        self.membership.store(Arc::new(Membership {
            ring,
            stale,
            listed,
        }));
    }

    /// The holders of `segment`, from the local cache or the directory; `None` when the
    /// directory cannot be read.
    pub(crate) async fn holders(&self, segment: &SegmentRef) -> Option<Arc<[Holding]>> {
        if let Some(h) = self.lookups.get(segment) {
            return Some(h);
        }
        match self.directory.holders(segment).await {
            Ok(h) => {
                self.directory_ok();
                let h: Arc<[Holding]> = h.into();
                self.lookups.put(segment.clone(), h.clone());
                Some(h)
            }
            Err(e) => {
                self.directory_error(&e);
                None
            }
        }
    }

    /// The seeders to ask for `path`, best first, at most `max_seeders`: healthy holders in ring
    /// order from the path's hash, then healthy holders the ring does not know yet (in id order);
    /// with no holder at all and `pull_through_on_miss`, the healthy ring owners instead.
    pub(crate) fn candidates(&self, path: &str, holders: &[Holding]) -> Vec<Candidate> {
        let max = self.cfg.max_seeders;
        let membership = self.membership.load();
        let ring = &membership.ring;
        let mut out = Vec::with_capacity(max.min(holders.len().max(1)));
        if max == 0 {
            return out;
        }
        // Without holders, the ring owners themselves (they pull from the origin and keep it).
        let owners = holders.is_empty();
        if owners && !self.cfg.pull_through_on_miss {
            return out;
        }
        let by_id: HashMap<&str, &Holding> =
            holders.iter().map(|h| (h.seeder_id.as_str(), h)).collect();
        for m in ring.walk(path) {
            if out.len() == max {
                return out;
            }
            let (checksum, size) = match by_id.get(m.id.as_str()) {
                Some(h) => (Some(h.checksum.clone()), Some(h.size)),
                None if owners => (None, None),
                None => continue,
            };
            let seeder = self
                .seeders
                .get_or_insert(&m.id, &m.address, true, &self.metrics);
            if seeder.is_healthy() {
                out.push(Candidate {
                    address: m.address.clone(),
                    seeder,
                    checksum,
                    size,
                });
            }
        }
        for h in holders {
            if out.len() == max {
                break;
            }
            if ring.contains(&h.seeder_id)
                || membership.stale.contains(&h.seeder_id)
                || h.address.is_empty()
            {
                continue;
            }
            let seeder = self
                .seeders
                .get_or_insert(&h.seeder_id, &h.address, false, &self.metrics);
            if seeder.is_healthy() {
                out.push(Candidate {
                    address: seeder.address(),
                    seeder,
                    checksum: Some(h.checksum.clone()),
                    size: Some(h.size),
                });
            }
        }
        out
    }

    /// The SHA-256 of slice `index` of the content `checksum` (of `count` slices), from the
    /// slice list its seeders published; `None` when there is none (or the directory is down).
    pub(crate) async fn slice_digest(
        &self,
        checksum: &str,
        index: u64,
        count: u64,
    ) -> Option<[u8; 32]> {
        let index = usize::try_from(index).ok()?;
        let list = match self.slice_lists.get(checksum) {
            Some(list) => list,
            None => match self.directory.slices(checksum, self.cfg.slice, count).await {
                Ok(list) => {
                    self.directory_ok();
                    let list = list.map(|l| l.digests);
                    self.slice_lists.put(checksum, list.clone());
                    list
                }
                Err(e) => {
                    self.directory_error(&e);
                    None
                }
            },
        };
        list?.get(index).copied()
    }

    /// The read of `range` of `path` asked for the seeders' version of entity tag `tag` when
    /// no seeder lists it any more (or the directory is down): the origin's slice, which must
    /// hash like that version's slice in the list this edge kept. `None` when it kept none or
    /// `range` is not one slice.
    pub(crate) async fn remembered(
        &self,
        path: &str,
        range: Option<Range<u64>>,
        tag: &str,
        limit: u64,
    ) -> Option<Result<Opened, OriginError>> {
        let (_, list) = self.slice_lists.by_tag(tag)?;
        let r = range.clone()?;
        if r.start % self.cfg.slice != 0 {
            return None;
        }
        let sha256 = *list.get(usize::try_from(r.start / self.cfg.slice).ok()?)?;
        let verify = hedge::Verify {
            sha256,
            etag: tag.to_owned(),
            size: None,
            required: true,
        };
        let ask = fetch::Ask {
            path,
            range,
            timeout: self.cfg.request_timeout,
            limit,
        };
        let origin = OriginLink::AfterSeeders {
            range: ask.range.clone(),
            limit,
            verify: Some(verify),
        };
        Some(self.hedged(&ask, &[], None, origin).await)
    }

    /// Counts a directory failure; warns once per outage.
    pub(crate) fn directory_error(&self, e: &KvError) {
        self.metrics.directory_errors.inc();
        if !self.directory_down.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                directory = %self.directory.describe(),
                error = %e,
                "seeder directory unreachable; segments go to the origin until it is back"
            );
        }
    }

    /// Notes a directory success (ending an outage, if any).
    pub(crate) fn directory_ok(&self) {
        if self.directory_down.swap(false, Ordering::Relaxed) {
            tracing::info!(directory = %self.directory.describe(), "seeder directory reachable again");
        }
    }
}
