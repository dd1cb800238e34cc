//! The streaming side of the edge: the event spool, shipping to Kafka, watch progress and the
//! streaming API.

use crate::secrets;
use edge_config::{EdgeConfig, Fsync};
use edge_events::{FsyncPolicy, ShipperConfig, Spool, SpoolConfig};
use edge_kafka::KafkaSink;
use edge_kv::RedisStore;
use edge_origin::StoreOrigin;
use edge_pipeline::{EventSink, Mount};
use edge_stream::{LocalProgress, ManifestUrls, Progress, RedisProgress, Sessions, StreamApi};
use std::{sync::Arc, time::Duration};
use tokio::{sync::watch, task::JoinHandle};

/// Everything streaming, running.
pub(crate) struct Streaming {
    pub(crate) spool: Spool,
    pub(crate) kafka: Option<Arc<KafkaSink>>,
    pub(crate) mounts: Vec<Mount>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Analytics events go to the spool without waiting (dropped and counted when it is full).
struct SpoolSink(Spool);

impl EventSink for SpoolSink {
    fn emit(&self, rec: edge_events::NewRecord) {
        self.0.emit(rec);
    }
}

fn spool_config(cfg: &EdgeConfig) -> SpoolConfig {
    let e = &cfg.events;
    SpoolConfig {
        dir: cfg.spool_dir(),
        max_backlog: e.max_backlog.as_u64(),
        retain: e.retain.as_u64(),
        segment_bytes: e.segment_size.as_u64(),
        fsync: match e.fsync {
            Fsync::Always => FsyncPolicy::Always,
            Fsync::Interval => FsyncPolicy::Interval,
            Fsync::Never => FsyncPolicy::Never,
        },
        fsync_interval: e.fsync_interval,
        warn_ratio: 0.8,
    }
}

/// The Kafka sink of `cfg`, when shipping is on.
fn kafka(cfg: &EdgeConfig) -> anyhow::Result<Option<Arc<KafkaSink>>> {
    let Some(servers) = cfg.kafka.active() else {
        return Ok(None);
    };
    let k = &cfg.kafka;
    let sink = KafkaSink::new(edge_kafka::KafkaConfig {
        bootstrap_servers: servers.to_owned(),
        topics: edge_events::Topics {
            streaming_prefix: k.topic_prefix.clone(),
            analytics_prefix: k.analytics_prefix.clone(),
        },
        client_id: k.client_id.clone(),
        partitions: k.partitions,
        replication_factor: k.replication_factor,
        create_topics: k.create_topics,
        properties: k
            .properties
            .iter()
            .map(|(a, b)| (a.clone(), b.clone()))
            .collect(),
        request_timeout: k.request_timeout,
        stall_timeout: k.stall_timeout,
    })?;
    Ok(Some(Arc::new(sink)))
}

impl Streaming {
    /// Opens the spool and builds everything; starts the background tasks (shipper, progress
    /// applier). Nothing here waits for Kafka or Redis.
    pub(crate) async fn start(
        cfg: &EdgeConfig,
        origin: &StoreOrigin,
        redis: Option<&Arc<RedisStore>>,
        jwt: &(String, bool),
        signing_secret: &str,
        registry: &prometheus::Registry,
    ) -> anyhow::Result<Self> {
        let mut events = Self::events(cfg, registry).await?;
        if cfg.stream_api.enabled {
            let (mount, tasks) = stream_api(cfg, &events, origin, redis, jwt, signing_secret)?;
            events.mounts.push(mount);
            events.tasks.extend(tasks);
        }
        Ok(events)
    }

    /// The spool and its shipping to Kafka alone (no streaming API): the events of a process
    /// that serves no media (the signaling role alone).
    pub(crate) async fn events(
        cfg: &EdgeConfig,
        registry: &prometheus::Registry,
    ) -> anyhow::Result<Self> {
        let spool = Spool::open(spool_config(cfg), Some(registry)).await?;
        let kafka = kafka(cfg)?;
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        if let Some(sink) = &kafka {
            let cursor = spool.cursor("kafka")?;
            tasks.push(edge_events::spawn_shipper(
                cursor,
                sink.clone(),
                ShipperConfig::default(),
                Some(registry),
                stop_rx.clone(),
            ));
            tracing::info!(
                servers = cfg.kafka.active().unwrap_or_default(),
                spool = %cfg.spool_dir().display(),
                "events: spooled, shipped to Kafka"
            );
        } else {
            tracing::info!(spool = %cfg.spool_dir().display(), "events: no Kafka configured; the spool is the event log (`edge events tail`)");
        }
        Ok(Self {
            spool,
            kafka,
            mounts: Vec::new(),
            stop,
            tasks,
        })
    }

    /// The sink for the pipeline's analytics events, when they are on.
    pub(crate) fn analytics(&self, cfg: &EdgeConfig) -> Option<Arc<dyn EventSink>> {
        cfg.events
            .analytics
            .then(|| Arc::new(SpoolSink(self.spool.clone())) as Arc<dyn EventSink>)
    }

    /// Stops the background tasks after publishing what is pending, then syncs the spool.
    pub(crate) async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            if tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .is_err()
            {
                tracing::warn!("an event task did not stop within 10 s");
            }
        }
        if let Err(e) = self.spool.flush().await {
            tracing::error!(error = %e, "cannot sync the event spool");
        }
    }
}

/// The streaming API's mount (`stream_api.prefix`) over `events`' spool, and its background
/// tasks (the progress applier, the trailing writer).
fn stream_api(
    cfg: &EdgeConfig,
    events: &Streaming,
    origin: &StoreOrigin,
    redis: Option<&Arc<RedisStore>>,
    jwt: &(String, bool),
    signing_secret: &str,
) -> anyhow::Result<(Mount, Vec<JoinHandle<()>>)> {
    let api = &cfg.stream_api;
    let spool = &events.spool;
    let stop_rx = events.stop.subscribe();
    let mut tasks = Vec::new();
    let ttl = Duration::from_secs(api.progress_ttl);
    let store: Arc<dyn edge_stream::ProgressStore> = match redis {
        Some(r) => Arc::new(RedisProgress::new(r.clone(), ttl)),
        None => Arc::new(LocalProgress::open(
            cfg.resolve(&cfg.server.data_dir).join("progress.json"),
            ttl,
        )?),
    };
    let p = Arc::new(Progress::new(
        store,
        spool.clone(),
        api.progress_min_interval,
    ));
    tasks.push(
        p.clone()
            .spawn_applier(spool.cursor("progress")?, stop_rx.clone()),
    );
    tasks.push(p.clone().spawn_trailing(stop_rx.clone()));
    let kv = match redis {
        Some(r) => edge_kv::Kv::with_redis_store(cfg.wasm.kv_max_entries, r.clone()),
        None => edge_kv::Kv::memory(cfg.wasm.kv_max_entries),
    };
    let urls = match api.manifest_urls {
        edge_config::ManifestUrls::Edge => ManifestUrls::Edge {
            secret: signing_secret.to_owned(),
            param: cfg.signed_url.param.clone(),
            public_url: cfg.server.public_url.clone(),
        },
        edge_config::ManifestUrls::Origin => ManifestUrls::Origin(Arc::new(origin.clone())),
    };
    let settings = edge_stream::Settings {
        prefix: api.prefix.clone(),
        manifest_hls: api.manifest_hls.clone(),
        manifest_dash: api.manifest_dash.clone(),
        urls,
        expiration: Duration::from_secs(cfg.signed_url.expiration),
        max_position: api.max_position,
        max_body: usize::try_from(api.max_body.as_u64()).unwrap_or(usize::MAX),
    };
    let mount = Mount {
        path: api.prefix.clone(),
        subtree: true,
        open: false,
        service: Arc::new(StreamApi::new(
            settings,
            spool.clone(),
            Sessions::new(kv, ttl),
            p.clone(),
        )),
    };
    if jwt.1 {
        match secrets::dev_token(&jwt.0) {
            Ok(t) => tracing::warn!(
                token = t,
                "JWT_SECRET_KEY unset: the streaming API accepts tokens signed with a generated development secret; this development token (sub = dev-user, 24 h) works: Authorization: Bearer <token>"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot mint a development token"),
        }
    }
    Ok((mount, tasks))
}
