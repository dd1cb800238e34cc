//! The edge role: the viewer listeners (`server.listen`, `server.tls_listen`) in front of the
//! pipeline — policy chains, cache tiers, seeders and origin — with the streaming API, the event
//! spool and `/health` mounted on it.

use super::{Role, Shared};
use crate::{health, policies::PolicyControl, streaming::Streaming};
use edge_config::EdgeConfig;
use edge_http::{BoundListener, HttpApp, Listeners};
use edge_pipeline::{Mount, Pipeline, PipelineConfig, PipelineMetrics};
use edge_policy::Router;
use edge_upstream::SeederOrigin;
use std::{net::SocketAddr, sync::Arc, time::Instant};
use tokio::task::JoinHandle;

/// The viewer listeners, bound.
pub(crate) struct Sockets {
    listeners: Vec<BoundListener>,
    pub(crate) http: Vec<SocketAddr>,
    pub(crate) https: Vec<SocketAddr>,
}

/// What the edge role takes from the policies loaded for the process.
pub(crate) struct Policies {
    pub(crate) router: Router,
    pub(crate) control: Arc<PolicyControl>,
    pub(crate) secret: String,
    pub(crate) jwt: (String, bool),
}

pub(crate) struct EdgeRole {
    sockets: Vec<BoundListener>,
    pub(crate) pipeline: Arc<Pipeline>,
    pub(crate) routing: Option<Arc<SeederOrigin>>,
    pub(crate) streaming: Streaming,
    pub(crate) health: Arc<health::Monitor>,
    control: Arc<PolicyControl>,
    cfg: EdgeConfig,
}

impl EdgeRole {
    /// Binds every viewer listener (TLS ones with the configured or development certificate).
    pub(crate) fn bind(cfg: &EdgeConfig) -> anyhow::Result<Sockets> {
        let listeners = super::bind_viewer(cfg, &cfg.server.listen, &cfg.server.tls_listen)?;
        anyhow::ensure!(
            !listeners.is_empty(),
            "{}: the edge role has no listener: set `server.listen` or `server.tls_listen` (or \
             pass --listen), or run without the edge role",
            cfg.source.display()
        );
        Ok(Sockets {
            http: super::addrs_of(&listeners, false),
            https: super::addrs_of(&listeners, true),
            listeners,
        })
    }

    /// Opens the disk tier and the event spool, builds the upstream and the pipeline, mounts the
    /// streaming API, `/health` and the signaling role's endpoints when it runs too (with its
    /// hub for health). Nothing serves yet.
    pub(crate) async fn build(
        shared: &Shared<'_>,
        sockets: Sockets,
        policies: Policies,
        signaling: Option<(Vec<Mount>, Arc<edge_signaling::Hub>)>,
    ) -> anyhow::Result<Self> {
        let cfg = shared.cfg;
        let disk = crate::delivery::disk(cfg, shared.registry).await?;
        let (upstream, routing) = crate::delivery::upstream(
            cfg,
            shared.origin.clone(),
            shared.redis.as_ref(),
            shared.registry,
        )?;
        let streaming = Streaming::start(
            cfg,
            shared.store_origin,
            shared.redis.as_ref(),
            &policies.jwt,
            &policies.secret,
            shared.registry,
        )
        .await?;
        let mut pipeline = Pipeline::new(
            policies.router,
            upstream.clone(),
            disk,
            pipeline_config(cfg),
            PipelineMetrics::new(shared.registry)?,
        );
        if let Some(sink) = streaming.analytics(cfg) {
            pipeline = pipeline.with_events(sink);
        }
        let pipeline = Arc::new(pipeline);
        let (signaling, hub) = signaling.map_or((Vec::new(), None), |(m, h)| (m, Some(h)));
        let health = Arc::new(health::Monitor::new(
            Some(upstream.clone()),
            shared.redis.clone(),
            streaming.kafka.clone(),
            Some(streaming.spool.clone()),
            hub,
        ));
        let mut mounts = streaming.mounts.clone();
        mounts.push(Mount {
            path: "/health".into(),
            subtree: false,
            open: true,
            service: Arc::new(health::ViewerHealth(health.clone())),
        });
        mounts.extend(signaling);
        pipeline.mount(mounts);
        policies.control.attach(pipeline.clone());
        Ok(Self {
            sockets: sockets.listeners,
            pipeline,
            routing,
            streaming,
            health,
            control: policies.control,
            cfg: cfg.clone(),
        })
    }
}

pub(crate) fn pipeline_config(cfg: &EdgeConfig) -> PipelineConfig {
    PipelineConfig {
        cache: edge_cache::CacheConfig {
            capacity: usize::try_from(cfg.cache.memory.as_u64()).unwrap_or(usize::MAX),
            max_object: usize::try_from(cfg.cache.slice.as_u64()).unwrap_or(usize::MAX),
            estimated_entries: 16_384,
            stale_if_error: cfg.cache.stale_if_error,
        },
        slice: cfg.cache.slice.as_u64(),
        manifest_ttl: cfg.cache.manifest_ttl,
        segment_ttl: cfg.cache.segment_ttl,
        stale_if_error: cfg.cache.stale_if_error,
        max_fills: cfg.cache.max_fills,
        fill_timeout: cfg.cache.fill_timeout,
        cors_allow_origin: Some(cfg.server.cors_allow_origin.as_str())
            .filter(|o| !o.is_empty())
            .and_then(|o| http::HeaderValue::from_str(o).ok()),
    }
}

#[async_trait::async_trait]
impl Role for EdgeRole {
    fn start(&mut self, listeners: &mut Listeners) -> Vec<JoinHandle<()>> {
        listeners.serve(
            "edge",
            HttpApp::new(self.pipeline.clone()),
            std::mem::take(&mut self.sockets),
        );
        let mut tasks = Vec::new();
        if let Some(r) = &self.routing {
            tasks.extend(r.spawn());
        }
        if !self.cfg.policies.watch_interval.is_zero() {
            tasks.push(self.control.clone().watch(self.cfg.policies.watch_interval));
        }
        tasks
    }

    /// Writes the memory tier to the disk tier (bounded by `server.drain_timeout`), then
    /// publishes and syncs the events.
    async fn stop(self: Box<Self>) {
        let Self {
            pipeline,
            streaming,
            cfg,
            ..
        } = *self;
        let started = Instant::now();
        let spilled = tokio::time::timeout(cfg.server.drain_timeout, pipeline.spill()).await;
        match spilled {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(slices = n, took = ?started.elapsed(), "memory tier written to the disk tier")
            }
            Err(_) => tracing::warn!("memory tier not fully written to disk within drain_timeout"),
        }
        streaming.shutdown().await;
    }
}
