//! Edge-side seeder routing: directory lookup, ketama choice among healthy seeders, hedging,
//! fallback to the origin.
//!
//! On a local cache miss an edge asks its upstream for the object. [`SeederOrigin`] is that
//! upstream when seeders are deployed: an [`Origin`] that serves segments from the seeders that
//! hold them and everything else, and every failure, from the origin behind it.
//!
//! For a path under the streams prefix (`/vod/movies/m1/720p/seg_001.ts`):
//!
//! 1. **Who holds it**: the seeder directory in Redis ([`Directory::holders`]), answers (empty
//!    ones too) cached locally for `lookup_cache_ttl`. While Redis is down the lookup fails fast,
//!    is counted, and the segment goes to the origin: edges keep serving.
//! 2. **Whom to ask**: a ketama ring (`pingora-ketama`) over the live seeders (heartbeat younger
//!    than `heartbeat_stale`, refreshed every `membership_refresh`), keyed by seeder id. Walking it
//!    from the path's hash gives every edge the same order, so a segment is read from the same
//!    seeder everywhere and stays hot there. Kept: holders that are healthy; holders the ring does
//!    not know yet come after. With no holder at all (and `pull_through_on_miss`), the ring owner
//!    itself, which pulls the segment from the origin and keeps it. At most `max_seeders`.
//! 3. **Hedged chain**: the first candidate starts; the next starts when it fails, or when it has
//!    not finished within `hedge_delay`; the origin is the chain's last link. The first success
//!    wins and the other attempts are dropped. An object larger than a slice is read slice by
//!    slice (`Range` requests the seeder answers from its per-slice checksums), all of one
//!    version (the first healthy holder's checksum, or the one a later slice is asked for with
//!    its entity tag), and the origin serves a slice only once no seeder is left running. An
//!    origin answer that hashes like the seeders' (the whole checksum, or the slice's from the
//!    directory's slice list, kept by the edge once read) carries their entity tag, so a
//!    response started on a seeder goes on from the origin; without a slice list it carries
//!    the origin's, and the response is cut at that slice (the player asks again).
//! 4. **Verification**: a seeder's answer counts only with status 200 (206 for a slice), the
//!    whole body (a connection cut before `Content-Length` bytes is an error) of at most
//!    `max_object` bytes (a larger one is cut off, never buffered whole) and a body whose SHA-256
//!    equals its `x-content-sha256` header; the file's checksum (the body's, or a slice's
//!    `x-object-sha256`) and size must be the directory's. A truncated or corrupt body is
//!    never returned. A 404 moves on to the next candidate; any other failure also takes the
//!    seeder out of use until its `GET /_seeder/health` answers 200 again (probed every
//!    `probe_interval`).
//!
//! Each edge counts its outcomes per seeder and adds them to the seeder's record in the
//! directory every `report_interval` ([`Directory::record`], `successRate` of `seeder:<id>`).
//!
//! Metrics (registered by [`SeederOrigin::new`]):
//!
//! | metric | labels | meaning |
//! |---|---|---|
//! | `edge_upstream_fetches_total` | seeder, result | attempts at a seeder: `ok`, `error`, `not_found` |
//! | `edge_upstream_hedges_total` | | attempts started because the previous one was slow |
//! | `edge_upstream_fallbacks_total` | | segment requests that ended at the origin (answered or failed there) |
//! | `edge_upstream_seeder_healthy` | seeder | 1 while the seeder is used, 0 while it awaits a probe |
//! | `edge_upstream_seeder_success_rate` | seeder | this edge's `ok / (ok + error)` for the seeder |
//! | `edge_upstream_directory_errors_total` | | directory (Redis) reads that failed |
//!
//! ```no_run
//! # async fn f(directory: edge_directory::Directory, s3: std::sync::Arc<dyn edge_origin::Origin>) {
//! use edge_upstream::{RoutingConfig, SeederOrigin};
//! let registry = prometheus::Registry::new();
//! let upstream = SeederOrigin::new(RoutingConfig::default(), directory, s3, &registry).unwrap();
//! let _tasks = upstream.spawn();
//! // `upstream` is an `Origin`: put it behind the edge's caches.
//! # }
//! ```

mod fetch;
mod health;
mod hedge;
mod metrics;
mod ring;
mod route;

use arc_swap::ArcSwap;
use edge_directory::{Directory, Holding, SegmentRef};
use edge_origin::{Opened, Origin, OriginError};
use hedge::OriginLink;
use std::{
    ops::Range,
    sync::{Arc, Weak, atomic::AtomicBool},
    time::Duration,
};
use tokio::task::JoinHandle;

/// How segments are routed to seeders.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutingConfig {
    /// Public path prefix of the streams (`/vod/movies/`); only paths of the form
    /// `<prefix><stream>/<name>` are routed to seeders, everything else goes to the origin.
    pub streams_prefix: String,
    /// How long a directory answer (the holders of a segment, or that there are none) is reused
    /// before Redis is asked again.
    pub lookup_cache_ttl: Duration,
    /// How often the seeder list is read; the ring is rebuilt when it changed.
    pub membership_refresh: Duration,
    /// Seeders whose last heartbeat is older than this are not used.
    pub heartbeat_stale: Duration,
    /// Bound on one attempt at a seeder, body included (and on a health probe).
    pub request_timeout: Duration,
    /// Largest body accepted from a seeder, in bytes (the edge's slice: larger objects are read
    /// by slice); a larger one is a failed attempt, cut off as soon as it is known to be too
    /// large.
    pub max_object: u64,
    /// Bytes per slice: the edge's `cache.slice`, which its seeders must share (their slice
    /// checksums are computed for it).
    pub slice: u64,
    /// When the running attempt has not finished after this long, the next candidate starts too.
    pub hedge_delay: Duration,
    /// Seeders tried before the origin.
    pub max_seeders: usize,
    /// How often unhealthy seeders are probed (`GET /_seeder/health`); a 200 makes them healthy.
    pub probe_interval: Duration,
    /// How often this edge's per-seeder outcome counts are added to the directory.
    pub report_interval: Duration,
    /// A segment no seeder holds is asked of its ring owner (which pulls it from the origin and
    /// keeps it) rather than of the origin directly.
    pub pull_through_on_miss: bool,
}

impl Default for RoutingConfig {
    /// `/vod/movies/`, lookups cached 1 s, membership every 2 s, heartbeats stale after 15 s,
    /// 2 s per attempt, bodies up to 256 MiB, slices of 4 MiB, hedge after 100 ms, 2 seeders, probes every 1 s,
    /// reports every 5 s, pull-through on.
    fn default() -> Self {
        Self {
            streams_prefix: "/vod/movies/".into(),
            lookup_cache_ttl: Duration::from_secs(1),
            membership_refresh: Duration::from_secs(2),
            heartbeat_stale: Duration::from_secs(15),
            request_timeout: Duration::from_secs(2),
            max_object: 256 << 20,
            slice: 4 << 20,
            hedge_delay: Duration::from_millis(100),
            max_seeders: 2,
            probe_interval: Duration::from_secs(1),
            report_interval: Duration::from_secs(5),
            pull_through_on_miss: true,
        }
    }
}

/// One seeder as this edge sees it, for `/health` and the admin API.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SeederView {
    /// Seeder id.
    pub id: String,
    /// Where it serves (`host:port`).
    pub address: String,
    /// Whether requests go to it (false after a failure, until a health probe succeeds).
    pub healthy: bool,
    /// Verified fetches by this edge since it started tracking the seeder.
    pub ok: u64,
    /// Failed fetches by this edge (404s are neither).
    pub failed: u64,
    /// `ok / (ok + failed)`, `None` before any outcome.
    pub success_rate: Option<f64>,
}

/// An [`Origin`] that reads segments from the seeders holding them (see the crate docs) and
/// everything else, and whatever they cannot serve, from `fallback`.
///
/// Created with [`SeederOrigin::new`]; its background work (membership, probes, reports) runs
/// in the tasks [`SeederOrigin::spawn`] starts, which end once the last `Arc` is dropped.
pub struct SeederOrigin {
    cfg: RoutingConfig,
    directory: Directory,
    fallback: Arc<dyn Origin>,
    client: reqwest::Client,
    membership: ArcSwap<route::Membership>,
    seeders: health::Seeders,
    lookups: route::Lookups,
    slice_lists: route::SliceLists,
    metrics: metrics::Metrics,
    /// Whether the last directory call failed (to warn once per outage).
    directory_down: AtomicBool,
}

impl std::fmt::Debug for SeederOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeederOrigin")
            .field("directory", &self.directory.describe())
            .field("fallback", &self.fallback.describe())
            .field("ring", &self.membership.load().ring)
            .finish_non_exhaustive()
    }
}

/// The background loops of [`SeederOrigin::spawn`].
#[derive(Debug, Clone, Copy)]
enum Task {
    Membership,
    Probe,
    Report,
}

impl SeederOrigin {
    /// A seeder router reading `directory`, falling back to `fallback`, with its metrics
    /// registered in `registry` (which fails if they already are). No seeder is known until the
    /// membership task of [`spawn`](Self::spawn) has read the directory once; until then only
    /// the holders' own directory entries are used.
    pub fn new(
        cfg: RoutingConfig,
        directory: Directory,
        fallback: Arc<dyn Origin>,
        registry: &prometheus::Registry,
    ) -> Result<Arc<Self>, prometheus::Error> {
        let metrics = metrics::Metrics::new(registry)?;
        // Seeders are internal: never through a proxy from the environment.
        let client = reqwest::Client::builder()
            .connect_timeout(cfg.request_timeout)
            .timeout(cfg.request_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .no_proxy()
            .build()
            .map_err(|e| prometheus::Error::Msg(format!("seeder HTTP client: {e}")))?;
        Ok(Arc::new(Self {
            lookups: route::Lookups::new(cfg.lookup_cache_ttl),
            slice_lists: route::SliceLists::new(cfg.lookup_cache_ttl),
            cfg,
            directory,
            fallback,
            client,
            membership: ArcSwap::default(),
            seeders: health::Seeders::default(),
            metrics,
            directory_down: AtomicBool::new(false),
        }))
    }

    /// Starts the background tasks on the current tokio runtime: membership refresh (first run
    /// immediately), the prober of unhealthy seeders, and the outcome reporter. They hold only a
    /// weak reference and end once the router is dropped; abort the handles to stop them sooner.
    pub fn spawn(self: &Arc<Self>) -> Vec<JoinHandle<()>> {
        [
            (Task::Membership, self.cfg.membership_refresh),
            (Task::Probe, self.cfg.probe_interval),
            (Task::Report, self.cfg.report_interval),
        ]
        .into_iter()
        .map(|(task, period)| tokio::spawn(Self::every(Arc::downgrade(self), period, task)))
        .collect()
    }

    async fn every(this: Weak<Self>, period: Duration, task: Task) {
        let mut tick = tokio::time::interval(period.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(this) = this.upgrade() else {
                return;
            };
            match task {
                Task::Membership => this.refresh_membership().await,
                Task::Probe => this.probe_unhealthy().await,
                Task::Report => this.report().await,
            }
        }
    }

    /// The seeders this edge tracks (the live ones, and holders met before the membership knew
    /// them), sorted by id.
    pub fn seeders(&self) -> Vec<SeederView> {
        self.seeders.views()
    }

    /// Forwards a purge (`body`: `{"path": …}` or `{"prefix": …}`) to every live seeder's
    /// `POST /_seeder/purge` with `token`, so a corrected object is not served again from a
    /// seeder's old copy. Returns, per seeder id, the files it deleted or why it failed; a seeder
    /// that could not be reached keeps its copy until its retention or a later purge.
    pub async fn purge(&self, body: &str, token: &str) -> Vec<(String, Result<u64, String>)> {
        let members: Vec<(String, String)> = self
            .membership
            .load()
            .ring
            .members()
            .iter()
            .map(|m| (m.id.clone(), m.address.clone()))
            .collect();
        let asks = members.into_iter().map(|(id, address)| async move {
            let result = self
                .client
                .post(format!("http://{address}/_seeder/purge"))
                .bearer_auth(token)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_owned())
                .send()
                .await;
            let outcome = match result {
                Ok(r) if r.status().is_success() => r
                    .bytes()
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|b| {
                        serde_json::from_slice::<serde_json::Value>(&b).map_err(|e| e.to_string())
                    })
                    .map(|v| v["deleted"].as_u64().unwrap_or(0)),
                Ok(r) => Err(format!("status {}", r.status())),
                Err(e) => Err(e.to_string()),
            };
            (id, outcome)
        });
        futures::future::join_all(asks).await
    }
}

#[async_trait::async_trait]
impl Origin for SeederOrigin {
    /// A segment from the seeders (verified) or the origin; any other path from the origin. The
    /// error, when everything failed, is the origin's: `NotFound` only if the origin says so.
    ///
    /// A segment the directory lists is read in one version — the one `if_match` names (a
    /// seeder's entity tag), else the first healthy holder's in ring order — from the seeders
    /// holding that version: whole when `range` covers it (the origin hedged in), else by slice
    /// (the origin once they all failed). An origin answer whose bytes hash like that version's
    /// (the whole checksum, or the slice's from the directory's slice list) is labelled that
    /// version, so a response started on a seeder goes on with the origin's bytes. Any other
    /// `if_match` goes to the origin. A segment nobody holds is asked of its ring owner, which
    /// pulls it, for a read from its first byte.
    async fn open(
        &self,
        path: &str,
        range: Option<Range<u64>>,
        if_match: Option<&str>,
    ) -> Result<Opened, OriginError> {
        let Some(segment) = SegmentRef::from_path(&self.cfg.streams_prefix, path) else {
            return self.fallback.open(path, range, if_match).await;
        };
        // What a whole read may hold: the bytes asked for, at most `max_object`.
        let limit = range.as_ref().map_or(self.cfg.max_object, |r| {
            r.end.saturating_sub(r.start).min(self.cfg.max_object)
        });
        let pinned = if_match.map(|e| e.trim_start_matches("W/").trim_matches('"'));
        let holders = self.holders(&segment).await;
        let version = match (&holders, pinned) {
            (Some(h), Some(tag)) => h.iter().find(|h| etag_of(&h.checksum) == tag),
            (Some(h), None) => self
                .candidates(path, h)
                .first()
                .and_then(|c| h.iter().find(|h| Some(&h.checksum) == c.checksum.as_ref()))
                .or(h.first()),
            (None, _) => None,
        };
        let Some(version) = version.cloned() else {
            if let Some(tag) = pinned
                && let Some(read) = self.remembered(path, range.clone(), tag, limit).await
            {
                // A seeder version no longer listed (or the directory down), whose slice
                // checksums this edge still has: the origin's bytes, if they are the same.
                return read;
            }
            let owners = match &holders {
                Some(h) if h.is_empty() && pinned.is_none() => self.candidates(path, h),
                _ => Vec::new(),
            };
            if range.as_ref().is_none_or(|r| r.start == 0) && !owners.is_empty() {
                // Nobody holds it: the ring owner pulls it whole.
                let ask = fetch::Ask {
                    path,
                    range: None,
                    timeout: self.cfg.request_timeout,
                    limit,
                };
                let origin = OriginLink::Hedged {
                    range,
                    limit,
                    verify: None,
                };
                return self.hedged(&ask, &owners, None, origin).await;
            }
            // No seeder to ask, or another version than theirs: the origin's read streams.
            self.metrics.fallbacks.inc();
            return self.fallback.open(path, range, if_match).await;
        };
        // The seeders of that version, in ring order, up to `max_seeders`.
        let of_version: Vec<Holding> = holders
            .iter()
            .flat_map(|h| h.iter())
            .filter(|h| h.checksum == version.checksum)
            .cloned()
            .collect();
        let candidates = self.candidates(path, &of_version);
        let size = version.size;
        let want = range.clone().unwrap_or(0..size);
        let want = want.start..want.end.min(size);
        if want.start >= want.end || want.end - want.start > self.cfg.max_object {
            if pinned.is_some() {
                return Err(OriginError::Unavailable(format!(
                    "bytes {want:?} of {path} are not held by the seeders as asked"
                )));
            }
            self.metrics.fallbacks.inc();
            return self.fallback.open(path, range, None).await;
        }
        let whole = want == (0..size);
        let slice = if whole || want.start % self.cfg.slice != 0 {
            None
        } else {
            let count = size.div_ceil(self.cfg.slice);
            self.slice_digest(&version.checksum, want.start / self.cfg.slice, count)
                .await
        };
        let sha256 = if whole {
            <[u8; 32]>::try_from(hex::decode(&version.checksum).unwrap_or_default()).ok()
        } else {
            slice
        };
        // No seeder to ask and nothing to keep the version by: the origin's read streams.
        if candidates.is_empty() && pinned.is_none() && (whole || sha256.is_none()) {
            self.metrics.fallbacks.inc();
            return self.fallback.open(path, range, None).await;
        }
        let verify = sha256.map(|sha256| hedge::Verify {
            sha256,
            etag: etag_of(&version.checksum).to_owned(),
            size: Some(size),
            required: pinned.is_some(),
        });
        let origin = match (whole, pinned, verify) {
            (_, Some(_), None) => OriginLink::Never,
            (true, None, verify) => OriginLink::Hedged {
                range,
                limit,
                verify,
            },
            (_, _, verify) => OriginLink::AfterSeeders {
                range,
                limit,
                verify,
            },
        };
        // A whole file must be of the directory's size (checked once read); a slice is exact.
        let ask = fetch::Ask {
            path,
            range: (!whole).then_some(want.clone()),
            timeout: self.cfg.request_timeout,
            limit: if whole { limit } else { want.end - want.start },
        };
        self.hedged(&ask, &candidates, slice, origin).await
    }

    /// The origin's check: seeders are an optimisation, the edge is healthy without them.
    async fn check(&self) -> Result<(), OriginError> {
        self.fallback.check().await
    }

    /// `seeders (redis://host:port) → <origin>`.
    fn describe(&self) -> String {
        format!(
            "seeders ({}) → {}",
            self.directory.describe(),
            self.fallback.describe()
        )
    }
}

/// The entity tag a seeder gives a file of checksum `sha256` (unquoted): its first 32 digits
/// (the whole value when it is not that long, or not ASCII: it comes from Redis).
pub(crate) fn etag_of(sha256: &str) -> &str {
    sha256.get(..32).unwrap_or(sha256)
}

#[cfg(test)]
mod tests;
