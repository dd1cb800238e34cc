//! The state of what the process depends on (origin, Redis, Kafka, the event spool), checked in
//! the background.
//!
//! The viewer listener's `/health` answers the latest check, never a check of its own: a flood
//! of it costs no origin `list`, Redis `PING` or Kafka metadata request (the Kafka one blocks a
//! thread of the pool that disk and seeder reads share), and it names no bucket, endpoint or
//! path. The admin listener's `/health` checks live and reports the details.

use edge_contract::{Call, EdgeRequest, EdgeResponse, Service};
use edge_events::Spool;
use edge_kafka::KafkaSink;
use edge_kv::RedisStore;
use edge_origin::Origin;
use std::{sync::Arc, time::Duration};
use tokio::{sync::watch, task::JoinHandle};

/// How often the background check runs.
const REFRESH: Duration = Duration::from_secs(2);
/// Bound on the origin's check.
const ORIGIN_CHECK: Duration = Duration::from_secs(3);

/// One check of every dependency: each `Ok(word)` or `Err(why)`.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    /// The origin (`s3` in the replaced service's shape, whatever the origin kind).
    pub(crate) origin: Result<(), String>,
    /// `None`: no Redis configured.
    pub(crate) redis: Option<Result<(), String>>,
    /// `None`: no Kafka configured.
    pub(crate) kafka: Option<Result<(), String>>,
}

impl Report {
    pub(crate) fn healthy(&self) -> bool {
        self.origin.is_ok()
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
        serde_json::json!({
            "status": if self.healthy() { "healthy" } else { "degraded" },
            "s3": word(&self.origin, "ok", "error"),
            "redis": optional(&self.redis, "ok", "error"),
            "kafka": optional(&self.kafka, "enabled", "unavailable"),
        })
    }
}

/// The dependencies and the latest [`Report`].
pub(crate) struct Monitor {
    origin: Arc<dyn Origin>,
    redis: Option<Arc<RedisStore>>,
    kafka: Option<Arc<KafkaSink>>,
    spool: Option<Spool>,
    latest: watch::Sender<Option<Arc<Report>>>,
}

impl Monitor {
    pub(crate) fn new(
        origin: Arc<dyn Origin>,
        redis: Option<Arc<RedisStore>>,
        kafka: Option<Arc<KafkaSink>>,
        spool: Option<Spool>,
    ) -> Self {
        Self {
            origin,
            redis,
            kafka,
            spool,
            latest: watch::channel(None).0,
        }
    }

    /// Checks every dependency now (each bounded by its own timeout) and keeps the result.
    pub(crate) async fn check(&self) -> Arc<Report> {
        let origin = async {
            match tokio::time::timeout(ORIGIN_CHECK, self.origin.check()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("timed out".to_owned()),
            }
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
        let report = Arc::new(Report {
            origin,
            redis,
            kafka,
        });
        self.latest.send_replace(Some(report.clone()));
        report
    }

    /// The latest check; the first one when none has finished yet.
    pub(crate) async fn latest(&self) -> Arc<Report> {
        let mut rx = self.latest.subscribe();
        let first = rx
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|r| r.clone());
        match first {
            Some(r) => r,
            // The sender lives in `self`: unreachable, but a live check is the right answer.
            None => self.check().await,
        }
    }

    /// The detailed report of the admin listener: every dependency checked now, with the
    /// errors' words, the origin's description and the spool's state.
    pub(crate) async fn detailed(&self) -> (Arc<Report>, serde_json::Value) {
        let report = self.check().await;
        let mut v = report.json(true);
        v["origin"] = self.origin.describe().into();
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

    /// Checks every [`REFRESH`] until the task is aborted; one check at a time.
    pub(crate) fn spawn(self: &Arc<Self>) -> JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(REFRESH);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                this.check().await;
            }
        })
    }
}

/// `/health` on the viewer listeners: the latest background check, in the replaced service's
/// shape (no details).
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
            if self.down.load(Ordering::SeqCst) {
                return Err(OriginError::Unavailable("bucket gone".into()));
            }
            Ok(())
        }
        fn describe(&self) -> String {
            "test:/secret/path".into()
        }
    }

    #[tokio::test]
    async fn viewers_read_the_latest_check_and_never_cause_one() {
        let origin = Arc::new(Checked::default());
        let monitor = Arc::new(Monitor::new(origin.clone(), None, None, None));
        let task = monitor.spawn();
        for _ in 0..1000 {
            assert!(monitor.latest().await.healthy());
        }
        // One check at start (the interval's first tick); the next comes 2 s later.
        assert_eq!(origin.checks.load(Ordering::SeqCst), 1);

        origin.down.store(true, Ordering::SeqCst);
        let detailed = monitor.detailed().await.1;
        let viewer = monitor.latest().await.json(false);
        task.abort();
        assert_eq!(
            viewer,
            serde_json::json!({"status": "degraded", "s3": "error", "redis": "disabled", "kafka": "disabled"}),
            "a viewer sees the kinds, not the origin's words or name"
        );
        assert_eq!(detailed["s3"], "error: origin failed: bucket gone");
        assert_eq!(detailed["origin"], "test:/secret/path");
    }
}
