//! The state of what the process depends on (origin, Redis, Kafka, the event spool).
//!
//! The viewer listener's `/health` answers the latest check while it is younger than [`MAX_AGE`]
//! and otherwise runs one check for every caller waiting (single flight): a flood of it costs at
//! most one origin `list`, Redis `PING` and Kafka metadata request per [`MAX_AGE`] (the Kafka one
//! blocks a thread of the pool that disk and seeder reads share), none while nobody asks, and it
//! names no bucket, endpoint or path. The admin listener's `/health` checks live and reports the
//! details.

use edge_contract::{Call, EdgeRequest, EdgeResponse, Service};
use edge_events::Spool;
use edge_kafka::KafkaSink;
use edge_kv::RedisStore;
use edge_origin::Origin;
use edge_signaling::Hub;
use parking_lot::Mutex;
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

/// How old a check the viewer `/health` answers with at most.
const MAX_AGE: Duration = Duration::from_secs(2);
/// Bound on the origin's check.
const ORIGIN_CHECK: Duration = Duration::from_secs(3);

/// One check of every dependency: each `Ok(word)` or `Err(why)`.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    /// The origin (`s3` in the replaced service's shape, whatever the origin kind); `None` in a
    /// process that reads no origin (the signaling role alone).
    pub(crate) origin: Option<Result<(), String>>,
    /// `None`: no Redis configured.
    pub(crate) redis: Option<Result<(), String>>,
    /// `None`: no Kafka configured.
    pub(crate) kafka: Option<Result<(), String>>,
    /// The signaling node's id and whether it reaches the other nodes (`None`: no cluster);
    /// `None` without the signaling role.
    pub(crate) signaling: Option<(String, Option<bool>)>,
}

impl Report {
    pub(crate) fn healthy(&self) -> bool {
        self.origin.as_ref().is_none_or(Result::is_ok)
            && self.redis.as_ref().is_none_or(Result::is_ok)
            && self.kafka.as_ref().is_none_or(Result::is_ok)
    }

    /// The replaced service's shape: `{"status": "healthy"|"degraded", "s3": "ok"|"error",
    /// "redis": "ok"|"error"|"disabled", "kafka": "enabled"|"unavailable"|"disabled"}`; with
    /// `detail`, the errors' words instead of only their kind.
    pub(crate) fn json(&self, detail: bool) -> serde_json::Value {
        let word = |r: &Result<(), String>, ok: &str, bad: &str| match r {
            Ok(()) => ok.to_owned(),
            Err(e) if detail => format!("{bad}: {e}"),
            Err(_) => bad.to_owned(),
        };
        let optional = |r: &Option<Result<(), String>>, ok: &str, bad: &str| match r {
            None => "disabled".to_owned(),
            Some(r) => word(r, ok, bad),
        };
        let mut v = serde_json::json!({
            "status": if self.healthy() { "healthy" } else { "degraded" },
            "s3": optional(&self.origin, "ok", "error"),
            "redis": optional(&self.redis, "ok", "error"),
            "kafka": optional(&self.kafka, "enabled", "unavailable"),
        });
        // The signaling seed's shape: `nodeId` beside the status; `signaling` says whether
        // its peers span the cluster.
        if let Some((node, cluster)) = &self.signaling {
            v["nodeId"] = node.as_str().into();
            v["signaling"] = match cluster {
                None => "local",
                Some(true) => "clustered",
                Some(false) => "local_only",
            }
            .into();
        }
        v
    }
}

/// The dependencies and the latest [`Report`].
pub(crate) struct Monitor {
    origin: Option<Arc<dyn Origin>>,
    redis: Option<Arc<RedisStore>>,
    kafka: Option<Arc<KafkaSink>>,
    spool: Option<Spool>,
    signaling: Option<Arc<Hub>>,
    /// The newest check and when it started.
    latest: Mutex<Option<(Instant, Arc<Report>)>>,
    /// Held while a viewer's check runs: the others wait for it and take its result instead of
    /// checking too.
    refreshing: tokio::sync::Mutex<()>,
    /// Viewer checks finished (read before waiting for `refreshing`).
    refreshed: std::sync::atomic::AtomicU64,
}

impl Monitor {
    pub(crate) fn new(
        origin: Option<Arc<dyn Origin>>,
        redis: Option<Arc<RedisStore>>,
        kafka: Option<Arc<KafkaSink>>,
        spool: Option<Spool>,
        signaling: Option<Arc<Hub>>,
    ) -> Self {
        Self {
            origin,
            redis,
            kafka,
            spool,
            signaling,
            latest: Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
            refreshed: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The signaling role's hub, when it runs.
    pub(crate) fn signaling(&self) -> Option<&Arc<Hub>> {
        self.signaling.as_ref()
    }

    /// Checks every dependency now (each bounded by its own timeout) and keeps the result unless
    /// a check that started later finished first.
    pub(crate) async fn check(&self) -> Arc<Report> {
        let started = Instant::now();
        let origin = async {
            let origin = self.origin.as_ref()?;
            Some(
                match tokio::time::timeout(ORIGIN_CHECK, origin.check()).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("timed out".to_owned()),
                },
            )
        };
        let redis = async {
            let r = self.redis.as_ref()?;
            Some(
                r.run(async |mut c| redis::cmd("PING").query_async::<String>(&mut c).await)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string()),
            )
        };
        let kafka = async {
            Some(match self.kafka.as_ref()?.health().await {
                edge_kafka::Health::Ok => Ok(()),
                edge_kafka::Health::Unavailable(e) => Err(e),
            })
        };
        let (origin, redis, kafka) = tokio::join!(origin, redis, kafka);
        let signaling = self
            .signaling
            .as_ref()
            .map(|h| (h.node_id().to_owned(), h.cluster_up()));
        let report = Arc::new(Report {
            origin,
            redis,
            kafka,
            signaling,
        });
        let mut latest = self.latest.lock();
        if latest.as_ref().is_none_or(|(at, _)| *at < started) {
            *latest = Some((started, report.clone()));
        }
        drop(latest);
        report
    }

    /// The latest check if it started less than [`MAX_AGE`] ago, else a new one (one at a time;
    /// whoever waited for it takes its result).
    pub(crate) async fn latest(&self) -> Arc<Report> {
        let fresh = || {
            self.latest
                .lock()
                .as_ref()
                .filter(|(at, _)| at.elapsed() < MAX_AGE)
                .map(|(_, r)| r.clone())
        };
        if let Some(r) = fresh() {
            return r;
        }
        // A check that finished while this caller waited answers it, however long it took (a
        // slow dependency must not make every waiter check again, one after another).
        use std::sync::atomic::Ordering::SeqCst;
        let seen = self.refreshed.load(SeqCst);
        let _refreshing = self.refreshing.lock().await;
        if self.refreshed.load(SeqCst) != seen
            && let Some((_, r)) = self.latest.lock().as_ref()
        {
            return r.clone();
        }
        if let Some(r) = fresh() {
            return r;
        }
        let report = self.check().await;
        self.refreshed.fetch_add(1, SeqCst);
        report
    }

    /// The detailed report of the admin listener: every dependency checked now, with the
    /// errors' words, the origin's description and the spool's state.
    pub(crate) async fn detailed(&self) -> (Arc<Report>, serde_json::Value) {
        let report = self.check().await;
        let mut v = report.json(true);
        if let Some(origin) = &self.origin {
            v["origin"] = origin.describe().into();
        }
        if let Some(spool) = &self.spool {
            let st = spool.stats();
            v["events"] = serde_json::json!({
                "spool": spool.dir().display().to_string(),
                "backlog_bytes": st.backlog_bytes,
                "bytes_on_disk": st.bytes_on_disk,
                "next_seq": st.next_seq,
            });
        }
        (report, v)
    }
}

/// `/health` on the viewer listeners: the latest check ([`Monitor::latest`]), in the replaced
/// service's shape (no details).
pub(crate) struct ViewerHealth(pub(crate) Arc<Monitor>);

#[async_trait::async_trait]
impl Service for ViewerHealth {
    async fn call(&self, req: &EdgeRequest, _call: Call<'_>) -> EdgeResponse {
        if req.method != http::Method::GET && req.method != http::Method::HEAD {
            let mut r =
                EdgeResponse::error(http::StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
            r.headers.insert(
                http::header::ALLOW,
                http::HeaderValue::from_static("GET, HEAD"),
            );
            return r;
        }
        let report = self.0.latest().await;
        crate::admin::json(http::StatusCode::OK, &report.json(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_origin::{Opened, OriginError};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// An origin that counts its checks and fails them while `down`.
    #[derive(Default)]
    struct Checked {
        checks: AtomicUsize,
        down: AtomicBool,
        /// How long a check takes.
        slow: Option<Duration>,
    }

    #[async_trait::async_trait]
    impl Origin for Checked {
        async fn open(
            &self,
            _: &str,
            _: Option<std::ops::Range<u64>>,
            _: Option<&str>,
        ) -> Result<Opened, OriginError> {
            Err(OriginError::NotFound)
        }
        async fn check(&self) -> Result<(), OriginError> {
            self.checks.fetch_add(1, Ordering::SeqCst);
            if let Some(d) = self.slow {
                tokio::time::sleep(d).await;
            }
            if self.down.load(Ordering::SeqCst) {
                return Err(OriginError::Unavailable("bucket gone".into()));
            }
            Ok(())
        }
        fn describe(&self) -> String {
            "test:/secret/path".into()
        }
    }

    /// `n` concurrent viewer checks, each of which must report healthy.
    async fn viewers_all_see_healthy(monitor: &Arc<Monitor>, n: usize) {
        let mut flood = tokio::task::JoinSet::new();
        for _ in 0..n {
            let m = monitor.clone();
            flood.spawn(async move { m.latest().await.healthy() });
        }
        while let Some(healthy) = flood.join_next().await {
            assert!(healthy.unwrap());
        }
    }

    /// A check slower than MAX_AGE (an origin timing out) answers every caller that waited for
    /// it: one check, not one per caller in turn.
    #[tokio::test]
    async fn a_slow_check_answers_everyone_waiting_for_it() {
        let origin = Arc::new(Checked {
            slow: Some(MAX_AGE + Duration::from_millis(300)),
            ..Checked::default()
        });
        let monitor = Arc::new(Monitor::new(Some(origin.clone()), None, None, None, None));
        viewers_all_see_healthy(&monitor, 50).await;
        assert_eq!(origin.checks.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_flood_of_viewer_checks_costs_one_check() {
        let origin = Arc::new(Checked::default());
        let monitor = Arc::new(Monitor::new(Some(origin.clone()), None, None, None, None));
        assert_eq!(
            origin.checks.load(Ordering::SeqCst),
            0,
            "none while nobody asks"
        );
        viewers_all_see_healthy(&monitor, 1000).await;
        assert_eq!(origin.checks.load(Ordering::SeqCst), 1);

        origin.down.store(true, Ordering::SeqCst);
        let detailed = monitor.detailed().await.1;
        // The admin's live check is the newest: viewers see it too.
        let viewer = monitor.latest().await.json(false);
        assert_eq!(origin.checks.load(Ordering::SeqCst), 2);
        assert_eq!(
            viewer,
            serde_json::json!({"status": "degraded", "s3": "error", "redis": "disabled", "kafka": "disabled"}),
            "a viewer sees the kinds, not the origin's words or name"
        );
        assert_eq!(detailed["s3"], "error: origin failed: bucket gone");
        assert_eq!(detailed["origin"], "test:/secret/path");
    }
}
