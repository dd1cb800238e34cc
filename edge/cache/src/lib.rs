//! The in-memory segment cache: bounded by bytes, TinyUFO admission and eviction (scan-resistant:
//! one viewer seeking through a long stream does not flush what everyone else watches), with
//! request coalescing.
//!
//! [`Cache::get_or_fetch`] returns a fresh cached value, or runs the fetch **once** for any number
//! of concurrent callers of the same key: the first caller's fetch runs in its own task (so a
//! viewer who hangs up does not fail the others) and every waiter gets its result. The fetch is
//! where the lower tiers live (disk, seeders, origin), so coalescing spans all of them.
//!
//! A purge also detaches the fetches of its keys that are in flight: their results still answer
//! the callers already waiting, but are not kept, and later callers start a fresh fetch.
//!
//! Expired entries are kept until evicted: when a fetch fails with an error that
//! [`FetchFailure::serve_stale`] accepts (an origin outage, not a 404), a copy expired less than
//! [`CacheConfig::stale_if_error`] ago answers instead ([`Status::Stale`]).
//!
//! ```
//! # tokio_test_block_on(async {
//! use edge_cache::{Cache, CacheConfig, FetchFailure, Status, TaskFailed, Weighted};
//! #[derive(Clone)] struct Obj(bytes::Bytes);
//! impl Weighted for Obj { fn weight(&self) -> usize { self.0.len() } }
//! #[derive(Clone, Debug)] struct Failed;
//! impl From<TaskFailed> for Failed { fn from(_: TaskFailed) -> Self { Failed } }
//! impl FetchFailure for Failed { fn serve_stale(&self) -> bool { true } }
//! let cache: Cache<Obj, Failed> = Cache::new(CacheConfig::default(), None);
//! let fetch = || async { Ok::<_, Failed>((Obj(bytes::Bytes::from_static(b"seg")), std::time::Duration::from_secs(60))) };
//! let (_, status) = cache.get_or_fetch("/vod/a.ts", fetch).await.unwrap();
//! assert_eq!(status, Status::Miss);
//! let (_, status) = cache.get_or_fetch("/vod/a.ts", fetch).await.unwrap();
//! assert_eq!(status, Status::Hit);
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output { tokio::runtime::Runtime::new().unwrap().block_on(f) }
//! ```

mod metrics;

pub use metrics::CacheMetrics;

use futures::{
    FutureExt,
    future::{BoxFuture, Shared},
};
use std::{
    collections::{BTreeSet, HashMap},
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};
use tinyufo::TinyUfo;
use tokio::time::Instant;

/// TinyUFO weighs entries in `u16` units; one unit is this many bytes.
const WEIGHT_UNIT: usize = 1024;

/// The size of a cached value, in bytes.
pub trait Weighted {
    /// Bytes this value holds.
    fn weight(&self) -> usize;
}

/// How a value was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Served from the cache.
    Hit,
    /// This caller's fetch filled it.
    Miss,
    /// Another caller's in-flight fetch filled it.
    Coalesced,
    /// The fetch failed and an expired copy answered (stale-if-error).
    Stale,
}

impl Status {
    /// `HIT`, `MISS` or `COALESCED`, for the `x-cache` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "HIT",
            Self::Miss => "MISS",
            Self::Coalesced => "COALESCED",
            Self::Stale => "STALE",
        }
    }
}

/// Size limits of a cache.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Total bytes of values kept.
    pub capacity: usize,
    /// Values larger than this are returned but not kept.
    pub max_object: usize,
    /// Expected number of entries (sizes TinyUFO's frequency sketch).
    pub estimated_entries: usize,
    /// How long after expiry an entry may still answer a failed fetch; zero disables.
    pub stale_if_error: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            capacity: 256 << 20,
            max_object: 64 << 20,
            estimated_entries: 16_384,
            stale_if_error: Duration::ZERO,
        }
    }
}

/// Why a fetch task produced no result: it panicked or was cancelled at shutdown.
#[derive(Debug, Clone, thiserror::Error)]
#[error("fetch task failed: {0}")]
pub struct TaskFailed(pub String);

/// The error of a fetch: cloneable (one failure answers every coalesced waiter), made from a
/// failed task, and saying whether a stale copy may answer in its place.
pub trait FetchFailure: Clone + From<TaskFailed> + Send + Sync + 'static {
    /// Whether this failure is an outage a stale copy may cover (not a "not found").
    fn serve_stale(&self) -> bool;
}

#[derive(Clone)]
struct Entry<V> {
    key: Arc<str>,
    /// Shared by TinyUFO's bucket and every copy of this entry, and emptied when the cache lets
    /// go of the entry (evicted, replaced, purged). TinyUFO's map frees a removed bucket only
    /// when its memory reclamation runs, for a batch of retired buckets at a time: with 4 MiB
    /// slices that held ~200 MiB of evicted bytes beyond the capacity. Emptied, they go as soon
    /// as no reader holds them.
    ///
    /// `None` for a purged key: TinyUFO's `remove` leaves the key in its queues and skews its
    /// weight accounting, so a purge overwrites the entry with an expired, 1-unit tombstone.
    value: Arc<Mutex<Option<V>>>,
    expires: Instant,
}

impl<V: Clone> Entry<V> {
    fn new(key: Arc<str>, value: Option<V>, expires: Instant) -> Self {
        Self {
            key,
            value: Arc::new(Mutex::new(value)),
            expires,
        }
    }

    fn value(&self) -> Option<V> {
        self.value.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Empties the entry (see `value`), returning what it held.
    fn take(&self) -> Option<V> {
        self.value.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn usable(&self, key: &Arc<str>, now: Instant, grace: Duration) -> Option<V> {
        (self.key == *key && self.expires + grace > now)
            .then(|| self.value())
            .flatten()
    }
}

/// What a put made TinyUFO let go of (evicted, or not admitted), taken out of its entries.
struct Released<V> {
    key: Arc<str>,
    value: V,
    expires: Instant,
}

type Flight<V, E> = Shared<BoxFuture<'static, Result<V, E>>>;

/// A fetch in flight, and whether a purge detached it (then its result is not kept).
struct InFlight<V, E> {
    flight: Flight<V, E>,
    purged: Arc<AtomicBool>,
}

/// A byte-bounded cache of `V` with coalesced fills that fail with `E`. Cheap to clone.
pub struct Cache<V, E> {
    inner: Arc<Inner<V, E>>,
}

impl<V, E> Clone for Cache<V, E> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<V, E> {
    ufo: TinyUfo<Arc<str>, Entry<V>>,
    flights: Mutex<HashMap<Arc<str>, InFlight<V, E>>>,
    /// Every key holding a value, for purges by prefix (TinyUFO cannot be iterated). Its lock
    /// also orders a fetch's store against a purge of its key; taken before `flights`.
    keys: Mutex<BTreeSet<Arc<str>>>,
    max_object: usize,
    stale_if_error: Duration,
    metrics: Option<CacheMetrics>,
    evicted: std::sync::OnceLock<EvictHook<V>>,
}

/// Called with every value the cache lets go of to make room (or did not admit): its key, the
/// value and when it expires (or expired).
type EvictHook<V> = Box<dyn Fn(&str, &V, Instant) + Send + Sync>;

impl<V, E> Cache<V, E>
where
    V: Weighted + Clone + Send + Sync + 'static,
    E: FetchFailure,
{
    /// An empty cache.
    pub fn new(cfg: CacheConfig, metrics: Option<CacheMetrics>) -> Self {
        let units = (cfg.capacity / WEIGHT_UNIT).max(1);
        let max_object = cfg.max_object.min(u16::MAX as usize * WEIGHT_UNIT);
        Self {
            inner: Arc::new(Inner {
                ufo: TinyUfo::new(units, cfg.estimated_entries.max(16)),
                flights: Mutex::new(HashMap::new()),
                keys: Mutex::new(BTreeSet::new()),
                max_object,
                stale_if_error: cfg.stale_if_error,
                metrics,
                evicted: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Calls `hook` with every value evicted to make room, or not admitted (TinyUFO), after the
    /// fact and outside the cache's locks — not with the purged or removed values themselves. Where a tier below
    /// catches what memory lets go of (a victim cache). Set once; returns false after that.
    pub fn on_evict(&self, hook: impl Fn(&str, &V, Instant) + Send + Sync + 'static) -> bool {
        self.inner.evicted.set(Box::new(hook)).is_ok()
    }

    /// Every value held (fresh or expired, not purged), with its key and expiry: what a tier
    /// below takes over when this one goes away (a drain).
    pub fn snapshot(&self) -> Vec<(Arc<str>, V, Instant)> {
        let keys: Vec<Arc<str>> = self
            .inner
            .keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        keys.into_iter()
            .filter_map(|k| {
                let e = self.inner.ufo.get(&k).filter(|e| e.key == k)?;
                let v = e.value()?;
                Some((k, v, e.expires))
            })
            .collect()
    }

    /// The fresh value of `key`, if cached.
    pub fn get(&self, key: &str) -> Option<V> {
        let key: Arc<str> = Arc::from(key);
        self.inner.fresh(&key)
    }

    /// The fresh cached value of `key`, or the result of `fetch` — run once however many callers
    /// ask for `key` at the same time. `fetch` returns the value and how long it stays fresh.
    pub async fn get_or_fetch<F, Fut>(&self, key: &str, fetch: F) -> Result<(V, Status), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(V, Duration), E>> + Send + 'static,
    {
        let key: Arc<str> = Arc::from(key);
        if let Some(v) = self.inner.fresh(&key) {
            self.inner.count(Status::Hit);
            return Ok((v, Status::Hit));
        }
        let (flight, status) = {
            let mut flights = self.inner.flights.lock().unwrap_or_else(|e| e.into_inner());
            match flights.get(&key) {
                Some(f) => (f.flight.clone(), Status::Coalesced),
                None => {
                    // Checked again under the lock: a flight may have filled it meanwhile.
                    if let Some(v) = self.inner.fresh(&key) {
                        drop(flights);
                        self.inner.count(Status::Hit);
                        return Ok((v, Status::Hit));
                    }
                    let purged = Arc::new(AtomicBool::new(false));
                    let flight =
                        Inner::launch(self.inner.clone(), key.clone(), purged.clone(), fetch());
                    flights.insert(
                        key.clone(),
                        InFlight {
                            flight: flight.clone(),
                            purged,
                        },
                    );
                    (flight, Status::Miss)
                }
            }
        };
        self.inner.count(status);
        match flight.await {
            Ok(v) => Ok((v, status)),
            Err(e) if e.serve_stale() => match self.inner.stale(&key) {
                Some(v) => {
                    self.inner.count(Status::Stale);
                    Ok((v, Status::Stale))
                }
                None => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// Removes `key` and detaches a fetch of it in flight; returns whether it was cached.
    pub fn purge(&self, key: &str) -> bool {
        self.inner.purge(&Arc::from(key))
    }

    /// Removes `key` when its cached value satisfies `pred` (a value its reader found broken,
    /// or of another version); fills in flight are left alone. Returns whether it removed it.
    pub fn remove_if(&self, key: &str, pred: impl FnOnce(&V) -> bool) -> bool {
        let key: Arc<str> = Arc::from(key);
        let mut keys = self.inner.keys.lock().unwrap_or_else(|e| e.into_inner());
        let Some(old) = self.inner.ufo.get(&key).filter(|e| e.key == key) else {
            return false;
        };
        let Some(value) = old.value() else {
            return false;
        };
        if !pred(&value) {
            return false;
        }
        keys.remove(&key);
        let tombstone = Entry::new(key.clone(), None, Instant::now());
        let evicted = self.inner.ufo.put(key, tombstone, 1);
        old.take();
        self.inner.forget_evicted(&mut keys, &evicted);
        drop(keys);
        let released = release(evicted);
        self.inner.account(0, value.weight(), &released);
        self.inner.hand_over(&released);
        true
    }

    /// Removes every key starting with `prefix` and detaches the fetches of such keys in flight;
    /// returns how many were cached.
    pub fn purge_prefix(&self, prefix: &str) -> usize {
        self.inner
            .flights
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, f| {
                let hit = k.starts_with(prefix);
                if hit {
                    f.purged.store(true, Ordering::Relaxed);
                }
                !hit
            });
        let keys: Vec<Arc<str>> = {
            let keys = self.inner.keys.lock().unwrap_or_else(|e| e.into_inner());
            keys.range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|k| k.starts_with(prefix))
            .cloned()
            .collect()
        };
        keys.iter().filter(|k| self.inner.purge(k)).count()
    }
}

impl<V, E> Inner<V, E>
where
    V: Weighted + Clone + Send + Sync + 'static,
    E: FetchFailure,
{
    fn purge(&self, key: &Arc<str>) -> bool {
        // Under the keys lock: a fetch stores before this (and is removed) or sees its flag.
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.remove(key);
        if let Some(f) = self
            .flights
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key)
        {
            f.purged.store(true, Ordering::Relaxed);
        }
        let (old, held) = self.held(key);
        if held == 0 {
            return false;
        }
        let tombstone = Entry::new(key.clone(), None, Instant::now());
        // The tombstone's put may evict other entries: they leave as any eviction does.
        let evicted = self.ufo.put(key.clone(), tombstone, 1);
        if let Some(old) = old {
            old.take();
        }
        self.forget_evicted(&mut keys, &evicted);
        drop(keys);
        let released = release(evicted);
        self.account(0, held, &released);
        self.hand_over(&released);
        true
    }

    /// The entry of `key` and the bytes it holds (0 when absent or purged).
    fn held(&self, key: &Arc<str>) -> (Option<Entry<V>>, usize) {
        let Some(entry) = self.ufo.get(key).filter(|e| e.key == *key) else {
            return (None, 0);
        };
        let bytes = entry.value().map_or(0, |v| v.weight());
        (Some(entry), bytes)
    }

    /// Updates the byte gauge: `added` bytes stored, `replaced` bytes overwritten in place, and
    /// whatever TinyUFO evicted (or refused to admit).
    fn account(&self, added: usize, replaced: usize, released: &[Released<V>]) {
        if let Some(m) = &self.metrics {
            let freed: usize = released.iter().map(|r| r.value.weight()).sum();
            m.stored(added as i64 - replaced as i64 - freed as i64);
            m.evicted(released.len() as u64);
        }
    }

    fn fresh(&self, key: &Arc<str>) -> Option<V> {
        self.ufo
            .get(key)
            .and_then(|e| e.usable(key, Instant::now(), Duration::ZERO))
    }

    fn stale(&self, key: &Arc<str>) -> Option<V> {
        if self.stale_if_error.is_zero() {
            return None;
        }
        self.ufo
            .get(key)
            .and_then(|e| e.usable(key, Instant::now(), self.stale_if_error))
    }

    fn count(&self, status: Status) {
        if let Some(m) = &self.metrics {
            m.lookup(status);
        }
    }

    fn launch<Fut>(
        this: Arc<Self>,
        key: Arc<str>,
        purged: Arc<AtomicBool>,
        fut: Fut,
    ) -> Flight<V, E>
    where
        Fut: Future<Output = Result<(V, Duration), E>> + Send + 'static,
    {
        let task = tokio::spawn(async move {
            // Lands the flight when dropped, even if `fut` panics; only after the store below, so a
            // caller arriving in between finds the value.
            let landing = Landing {
                inner: this,
                key,
                purged,
            };
            let result = fut.await;
            if let Ok((value, ttl)) = &result {
                landing
                    .inner
                    .store(&landing.key, value.clone(), *ttl, &landing.purged);
            }
            drop(landing);
            result.map(|(v, _)| v)
        });
        task.map(|joined| joined.unwrap_or_else(|e| Err(E::from(TaskFailed(e.to_string())))))
            .boxed()
            .shared()
    }

    /// Keeps the result of a fetch of `key`, unless a purge detached the fetch (`purged`).
    fn store(&self, key: &Arc<str>, value: V, ttl: Duration, purged: &AtomicBool) {
        let bytes = value.weight();
        if bytes > self.max_object || ttl.is_zero() {
            return;
        }
        let units = bytes.div_ceil(WEIGHT_UNIT).clamp(1, u16::MAX as usize) as u16;
        let entry = Entry::new(key.clone(), Some(value), Instant::now() + ttl);
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if purged.load(Ordering::Relaxed) {
            return;
        }
        let (old, replaced) = self.held(key);
        keys.insert(key.clone());
        let evicted = self.ufo.put(key.clone(), entry, units);
        if let Some(old) = old {
            old.take();
        }
        self.forget_evicted(&mut keys, &evicted);
        drop(keys);
        let released = release(evicted);
        self.account(bytes, replaced, &released);
        self.hand_over(&released);
    }

    /// Drops the keys of what a put evicted from the key set (under its lock).
    fn forget_evicted(&self, keys: &mut BTreeSet<Arc<str>>, evicted: &[tinyufo::KV<Entry<V>>]) {
        for kv in evicted {
            if self
                .ufo
                .get(&kv.data.key)
                .is_none_or(|e| e.key != kv.data.key)
            {
                keys.remove(&kv.data.key);
            }
        }
    }

    /// Gives what a put evicted to the eviction hook (outside the locks).
    fn hand_over(&self, released: &[Released<V>]) {
        if let Some(hook) = self.evicted.get() {
            for r in released {
                hook(&r.key, &r.value, r.expires);
            }
        }
    }
}

/// Takes the values out of what a put evicted (see `Entry::value`).
fn release<V: Clone>(evicted: Vec<tinyufo::KV<Entry<V>>>) -> Vec<Released<V>> {
    evicted
        .into_iter()
        .filter_map(|kv| {
            Some(Released {
                value: kv.data.take()?,
                key: kv.data.key,
                expires: kv.data.expires,
            })
        })
        .collect()
}

struct Landing<V, E> {
    inner: Arc<Inner<V, E>>,
    key: Arc<str>,
    purged: Arc<AtomicBool>,
}

impl<V, E> Drop for Landing<V, E> {
    fn drop(&mut self) {
        let mut flights = self.inner.flights.lock().unwrap_or_else(|e| e.into_inner());
        // Not the fresh fetch that replaced this one after a purge.
        if flights
            .get(&self.key)
            .is_some_and(|f| Arc::ptr_eq(&f.purged, &self.purged))
        {
            flights.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests;
