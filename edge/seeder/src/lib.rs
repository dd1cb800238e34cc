//! The seeder role: serves a segment directory to edges, publishes it to the Redis directory,
//! expires old files.
//!
//! A seeder is a cache-heavy node: HLS/DASH segments on a big disk, served over HTTP to edges that
//! miss them. Files mirror public paths: `<cache_path>/vod/movies/m1/720p/seg_001.ts` is the public
//! path `/vod/movies/m1/720p/seg_001.ts`, which with the streams prefix `/vod/movies/` is segment
//! `720p/seg_001.ts` of stream `m1` ([`SegmentRef::from_path`]).
//!
//! [`Seeder::spawn`] runs the maintenance loop that replaces the Java seeder worker:
//!
//! - **scan** every `scan_interval` ([`Seeder::scan_once`]): walk the cache, checksum new or changed
//!   files, whole and per slice (unchanged ones keep their SHA-256 by path, size and mtime),
//!   publish a [`Holding`] for
//!   every file under the streams prefix with a TTL of `key_ttl` (so keys of a dead seeder expire
//!   by themselves), withdraw the segments that disappeared, delete files not accessed for
//!   `retention` (the later of their mtime and the last time this seeder served them), and log a
//!   maintenance summary;
//! - **heartbeat** every `heartbeat_interval`: `seeder:<id>` with `lastActive`, renewed for three
//!   intervals.
//!
//! The directory is advisory. Serving never waits for Redis, scans go on while it is down (one
//! `warn!` when an outage starts, one `info!` when it ends), and when it returns everything is
//! published again, since a restarted Redis is empty. Without a directory the seeder just serves.
//!
//! The HTTP face is an [`edge_contract::Handler`]: `GET`/`HEAD` of a public path answers the file
//! whole, with `x-content-sha256` for edges to verify the body; a `Range` request for one slice
//! of a file (of any size) answers that slice alone, 206 with the slice's own checksum, computed
//! at scan, and the whole file's (`x-object-sha256`, the version); with `pull_through` a missing
//! segment is read once from the origin (concurrent requests share the read), stored atomically
//! and published at once. `GET /_seeder/health` reports readiness ([`HEALTH_PATH`]).
//!
//! | metric | labels | meaning |
//! |---|---|---|
//! | `edge_seeder_requests_total` | result = `hit`, `pull`, `not_found`, `error` | object requests (not health checks) |
//! | `edge_seeder_bytes_served_total` | | body bytes of GET responses |
//! | `edge_seeder_segments` | | segments published (files under the streams prefix) |
//! | `edge_seeder_stored_bytes` | | bytes of every file in the cache |
//! | `edge_seeder_deleted_total` | | files deleted by retention |
//! | `edge_seeder_directory_errors_total` | | failed directory calls |
//! | `edge_seeder_ready` | | 1 once the first scan finished, 0 after shutdown |

mod files;
mod metrics;
mod pull;
mod purge;
mod scan;
mod serve;

pub use purge::PURGE_PATH;
pub use serve::HEALTH_PATH;

use edge_directory::{Directory, Holding, SeederStatus, SegmentRef, SliceList};
use edge_kv::KvError;
use edge_origin::Origin;
use files::{Catalog, Digests};
use http::HeaderValue;
use metrics::Metrics;
use parking_lot::Mutex;
use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio::{sync::watch, task::JoinHandle};

/// Settings of a seeder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeederConfig {
    /// The seeder's id in the directory (`seeder:<id>`, the field of its holdings).
    pub id: String,
    /// The cache directory (`SEEDER_CACHE_PATH`); created when missing.
    pub cache_path: PathBuf,
    /// `host:port` at which edges reach this seeder's HTTP listener.
    pub advertise: String,
    /// Public path prefix of the streams (`/vod/movies/`): starts and ends with `/`.
    pub streams_prefix: String,
    /// How often the cache is rescanned and its holdings republished.
    pub scan_interval: Duration,
    /// TTL of the segment keys, renewed by every scan; longer than `scan_interval`
    /// (3 × by default) so one slow scan does not make segments vanish.
    pub key_ttl: Duration,
    /// How often `seeder:<id>` is renewed; it expires after three intervals.
    pub heartbeat_interval: Duration,
    /// Files whose last access is older are deleted; [`Duration::ZERO`] keeps them forever.
    pub retention: Duration,
    /// Fetch missing segments from the origin, keep them and publish them.
    pub pull_through: bool,
    /// Largest file served whole or pulled, in bytes (such files are read whole into memory).
    /// Larger files are served by slice.
    pub max_object: u64,
    /// Bytes per slice: a `Range` request for one slice of a file (`bytes=i*slice-…`, up to the
    /// next slice or the end of the file) is answered 206 with the slice's own SHA-256, computed
    /// when the file was scanned. The edges' `cache.slice`, which must be the same.
    pub slice: u64,
    /// Bearer token of `POST /_seeder/purge` (the edges' `server.admin_token`); `None` refuses
    /// purges.
    pub purge_token: Option<String>,
}

impl SeederConfig {
    /// Settings with the defaults of the seeder worker this replaces: streams under
    /// `/vod/movies/`, a scan every 30 s with keys living 90 s, a heartbeat every 5 s, files kept
    /// forever, no pull-through, whole reads up to 64 MiB, slices of 4 MiB.
    pub fn new(
        id: impl Into<String>,
        cache_path: impl Into<PathBuf>,
        advertise: impl Into<String>,
    ) -> Self {
        Self {
            id: id.into(),
            cache_path: cache_path.into(),
            advertise: advertise.into(),
            streams_prefix: "/vod/movies/".into(),
            scan_interval: Duration::from_secs(30),
            key_ttl: Duration::from_secs(90),
            heartbeat_interval: Duration::from_secs(5),
            retention: Duration::ZERO,
            pull_through: false,
            max_object: 64 * 1024 * 1024,
            slice: 4 * 1024 * 1024,
            purge_token: None,
        }
    }

    fn check(&self) -> Result<(), SeederError> {
        let bad = |what: &str| Err(SeederError::Config(what.to_owned()));
        if self.id.is_empty() || HeaderValue::from_str(&self.id).is_err() {
            return bad("id must be non-empty visible ASCII");
        }
        if self.advertise.is_empty() {
            return bad("advertise must be a host:port");
        }
        if !self.streams_prefix.starts_with('/') || !self.streams_prefix.ends_with('/') {
            return bad("streams_prefix must start and end with /");
        }
        if self.scan_interval.is_zero()
            || self.heartbeat_interval.is_zero()
            || self.key_ttl.is_zero()
        {
            return bad("scan_interval, heartbeat_interval and key_ttl must be positive");
        }
        if self.slice == 0 {
            return bad("slice must be positive");
        }
        Ok(())
    }
}

/// Why a seeder could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SeederError {
    /// The settings are inconsistent.
    #[error("invalid seeder settings: {0}")]
    Config(String),
    /// The cache directory cannot be created or read.
    #[error("seeder cache path {path}: {source}")]
    CachePath {
        /// The configured path.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The metrics could not be registered (registered twice?).
    #[error("registering seeder metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// What one scan found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// Files in the cache after deletions.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Holdings published to the directory (0 without a directory or when it failed).
    pub published: u64,
    /// Segments withdrawn from the directory (gone from disk, or expired).
    pub withdrawn: u64,
    /// Files deleted because their last access was older than the retention.
    pub deleted: u64,
    /// The first directory failure of the scan; `None` when it succeeded or there is none.
    pub directory_error: Option<String>,
}

/// What the seeder holds, as last published.
#[derive(Debug, Default)]
struct State {
    /// Every published segment (last scan plus pulls since).
    holdings: HashMap<SegmentRef, Holding>,
    /// The slice checksums of the segments larger than a slice (last scan), by checksum.
    slice_lists: HashMap<Arc<str>, Digests>,
    /// Withdrawals that failed, retried by the next directory sync.
    pending_withdraw: HashSet<SegmentRef>,
    /// Files in the cache.
    files: u64,
    /// Their bytes.
    bytes: u64,
}

/// A seeder: the maintenance loop ([`Seeder::spawn`]) and the HTTP face (its
/// [`edge_contract::Handler`] implementation).
pub struct Seeder {
    cfg: SeederConfig,
    me: Weak<Seeder>,
    directory: Option<Directory>,
    origin: Option<Arc<dyn Origin>>,
    catalog: Arc<Catalog>,
    metrics: Metrics,
    id_header: HeaderValue,
    started_at: u64,
    state: Mutex<State>,
    flights: Mutex<HashMap<String, pull::Flight>>,
    ready: AtomicBool,
    running: AtomicBool,
    stopping: AtomicBool,
    stop: watch::Sender<bool>,
    directory_down: AtomicBool,
    /// Scans one at a time.
    scan_lock: tokio::sync::Mutex<()>,
    /// Held (shared) by every directory write; [`Seeder::shutdown`] takes it exclusively, so no
    /// publish or heartbeat lands after the seeder deregistered.
    gate: tokio::sync::RwLock<()>,
}

impl std::fmt::Debug for Seeder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seeder")
            .field("id", &self.cfg.id)
            .field("cache_path", &self.cfg.cache_path)
            .field("directory", &self.directory)
            .field("origin", &self.origin.as_ref().map(|o| o.describe()))
            .finish_non_exhaustive()
    }
}

/// Resolves once shutdown was requested.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Milliseconds since the Unix epoch.
fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Seeder {
    /// A seeder over `cfg.cache_path` (created when missing; leftovers of interrupted pulls are
    /// removed), publishing to `directory` when given and pulling missing segments from `origin`
    /// when `cfg.pull_through`. Registers its metrics into `registry`. Nothing runs until
    /// [`Seeder::spawn`]; the handler serves at once.
    pub fn new(
        cfg: SeederConfig,
        directory: Option<Directory>,
        origin: Option<Arc<dyn Origin>>,
        registry: &prometheus::Registry,
    ) -> Result<Arc<Self>, SeederError> {
        cfg.check()?;
        let io = |source| SeederError::CachePath {
            path: cfg.cache_path.clone(),
            source,
        };
        std::fs::create_dir_all(&cfg.cache_path).map_err(io)?;
        let root = std::fs::canonicalize(&cfg.cache_path).map_err(io)?;
        let catalog = Catalog::new(root, cfg.slice);
        catalog.clear_tmp().map_err(io)?;
        let metrics = Metrics::new(registry)?;
        let id_header =
            HeaderValue::from_str(&cfg.id).map_err(|e| SeederError::Config(e.to_string()))?;
        if cfg.key_ttl <= cfg.scan_interval {
            tracing::warn!(
                seeder = cfg.id,
                key_ttl = ?cfg.key_ttl,
                scan_interval = ?cfg.scan_interval,
                "key_ttl is not longer than scan_interval: segments may expire between scans"
            );
        }
        if cfg.pull_through && origin.is_none() {
            tracing::warn!(
                seeder = cfg.id,
                "pull_through without an origin: missing segments are 404"
            );
        }
        Ok(Arc::new_cyclic(|me| Self {
            me: me.clone(),
            directory,
            origin,
            catalog: Arc::new(catalog),
            metrics,
            id_header,
            started_at: epoch_ms(SystemTime::now()),
            state: Mutex::default(),
            flights: Mutex::default(),
            ready: AtomicBool::new(false),
            running: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            stop: watch::channel(false).0,
            directory_down: AtomicBool::new(false),
            scan_lock: tokio::sync::Mutex::new(()),
            gate: tokio::sync::RwLock::new(()),
            cfg,
        }))
    }

    /// The settings.
    pub fn config(&self) -> &SeederConfig {
        &self.cfg
    }

    /// Whether the first scan finished (whether or not the directory could be reached), and
    /// [`Seeder::shutdown`] has not been called.
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Starts the maintenance loop: a first scan and heartbeat, then
    /// `info!("Seeder ready to serve peers")`, then a scan (with a maintenance summary) every
    /// `scan_interval` and a heartbeat every `heartbeat_interval` (heartbeats do not wait for a
    /// long scan) until [`Seeder::shutdown`]. Call once; the task ends after shutdown.
    pub fn spawn(self: &Arc<Self>) -> JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move { me.run().await })
    }

    async fn run(self: Arc<Self>) {
        if self.running.swap(true, Ordering::AcqRel) {
            tracing::warn!(seeder = self.cfg.id, "seeder loop already running");
            return;
        }
        let stop = self.stop.subscribe();
        tokio::join!(self.heartbeats(stop.clone()), self.scans(stop));
        tracing::info!(seeder = self.cfg.id, "seeder loop stopped");
    }

    async fn heartbeats(&self, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.cfg.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.heartbeat().await,
                _ = stopped(&mut stop) => return,
            }
        }
    }

    async fn scans(&self, mut stop: watch::Receiver<bool>) {
        let first = tokio::select! {
            r = self.scan_once() => r,
            _ = stopped(&mut stop) => return,
        };
        self.heartbeat().await;
        tracing::info!(
            seeder = self.cfg.id,
            address = self.cfg.advertise,
            cache = %self.catalog.root().display(),
            directory = self.directory.as_ref().map(Directory::describe),
            files = first.files,
            bytes = first.bytes,
            published = first.published,
            deleted = first.deleted,
            directory_error = first.directory_error,
            "Seeder ready to serve peers"
        );
        let start = tokio::time::Instant::now() + self.cfg.scan_interval;
        let mut tick = tokio::time::interval_at(start, self.cfg.scan_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopped(&mut stop) => return,
            }
            let started = std::time::Instant::now();
            let r = self.scan_once().await;
            tracing::info!(
                seeder = self.cfg.id,
                files = r.files,
                bytes = r.bytes,
                published = r.published,
                withdrawn = r.withdrawn,
                deleted = r.deleted,
                directory_error = r.directory_error,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "seeder maintenance"
            );
        }
    }

    /// Stops the maintenance loop, waits for directory writes in flight, withdraws every holding
    /// and deregisters the seeder (best effort: with Redis down the keys expire with their TTLs).
    /// The handler keeps serving; health reports not ready.
    pub async fn shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
        self.stop.send_replace(true);
        self.ready.store(false, Ordering::Release);
        self.metrics.ready.set(0);
        let Some(dir) = &self.directory else { return };
        let _gate = self.gate.write().await;
        let segments: Vec<SegmentRef> = {
            let state = self.state.lock();
            state
                .holdings
                .keys()
                .chain(state.pending_withdraw.iter())
                .cloned()
                .collect()
        };
        let withdrawn = self.note(dir.withdraw(&self.cfg.id, &segments).await);
        let deregistered = self.note(dir.deregister(&self.cfg.id).await);
        match (withdrawn, deregistered) {
            (Ok(_), Ok(_)) => {
                tracing::info!(
                    seeder = self.cfg.id,
                    segments = segments.len(),
                    "seeder withdrawn from the directory"
                )
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(seeder = self.cfg.id, error = %e, "seeder left the directory to expire its keys")
            }
        }
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Tracks directory outages: counts failures, logs the start and the end of an outage.
    /// `Ok(true)` when this call ended an outage.
    fn note<T>(&self, result: Result<T, KvError>) -> Result<bool, KvError> {
        match result {
            Ok(_) => {
                let recovered = self.directory_down.swap(false, Ordering::AcqRel);
                if recovered {
                    tracing::info!(seeder = self.cfg.id, "directory reachable again");
                }
                Ok(recovered)
            }
            Err(e) => {
                self.metrics.directory_errors.inc();
                if !self.directory_down.swap(true, Ordering::AcqRel) {
                    tracing::warn!(seeder = self.cfg.id, error = %e, "directory unavailable; serving from disk, will republish when it returns");
                }
                Err(e)
            }
        }
    }

    /// Renews `seeder:<id>`; after an outage, republishes every holding at once.
    async fn heartbeat(&self) {
        let Some(dir) = &self.directory else { return };
        let _gate = self.gate.read().await;
        if self.stopping() {
            return;
        }
        let status = {
            let state = self.state.lock();
            SeederStatus {
                seeder_id: self.cfg.id.clone(),
                address: self.cfg.advertise.clone(),
                last_active: epoch_ms(SystemTime::now()),
                started_at: self.started_at,
                segments: state.holdings.len() as u64,
                bytes: state.bytes,
                ..SeederStatus::default()
            }
        };
        let beat = dir
            .heartbeat(&status, self.cfg.heartbeat_interval.saturating_mul(3))
            .await;
        if self.note(beat) == Ok(true) {
            let _ = self.sync_directory(dir, Vec::new()).await;
        }
    }

    /// Withdraws `stale` and pending withdrawals, then publishes every holding. The caller holds
    /// the gate. Returns (published, withdrawn, first error).
    async fn sync_directory(
        &self,
        dir: &Directory,
        stale: Vec<SegmentRef>,
    ) -> (u64, u64, Option<String>) {
        let (holdings, withdraw, lists) = {
            let mut state = self.state.lock();
            let lists: Vec<SliceList> = state
                .slice_lists
                .iter()
                .map(|(sum, digests)| SliceList {
                    checksum: sum.to_string(),
                    slice: self.cfg.slice,
                    digests: digests.clone(),
                })
                .collect();
            state.pending_withdraw.extend(stale);
            let holdings = &state.holdings;
            let withdraw: Vec<SegmentRef> = state
                .pending_withdraw
                .iter()
                .filter(|s| !holdings.contains_key(s))
                .cloned()
                .collect();
            let holdings: Vec<(SegmentRef, Holding)> = holdings
                .iter()
                .map(|(s, h)| (s.clone(), h.clone()))
                .collect();
            (holdings, withdraw, lists)
        };
        let mut error = None;
        let mut withdrawn = 0;
        if !withdraw.is_empty() {
            match self.note(dir.withdraw(&self.cfg.id, &withdraw).await) {
                Ok(_) => {
                    withdrawn = withdraw.len() as u64;
                    let mut state = self.state.lock();
                    for s in &withdraw {
                        state.pending_withdraw.remove(s);
                    }
                }
                Err(e) => error = Some(e.to_string()),
            }
        }
        {
            // Segments held again need no withdrawal.
            let mut state = self.state.lock();
            let State {
                holdings,
                pending_withdraw,
                ..
            } = &mut *state;
            pending_withdraw.retain(|s| !holdings.contains_key(s));
        }
        let mut published = 0;
        if error.is_none() {
            match self.note(dir.publish(&holdings, self.cfg.key_ttl).await) {
                Ok(_) => published = holdings.len() as u64,
                Err(e) => error = Some(e.to_string()),
            }
        }
        // After the holdings: an edge that finds a holding without its slice list reads the
        // seeders' slices all the same, it just cannot verify an origin's slice against them.
        if error.is_none()
            && !lists.is_empty()
            && let Err(e) = self.note(dir.publish_slices(&lists, self.cfg.key_ttl).await)
        {
            error = Some(e.to_string());
        }
        (published, withdrawn, error)
    }

    fn holding(&self, size: u64, checksum: &str, last_access: SystemTime) -> Holding {
        Holding {
            seeder_id: self.cfg.id.clone(),
            address: self.cfg.advertise.clone(),
            size,
            checksum: checksum.to_owned(),
            last_access: epoch_ms(last_access),
        }
    }

    /// Sets the gauges from the state.
    fn update_gauges(&self) {
        let state = self.state.lock();
        self.metrics.segments.set(state.holdings.len() as i64);
        self.metrics
            .stored_bytes
            .set(i64::try_from(state.bytes).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests;
