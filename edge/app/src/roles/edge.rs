//! The edge role: the viewer listeners (`server.listen`, `server.tls_listen`) in front of the
//! pipeline — policy chains, cache tiers, seeders and origin — with the streaming API, the event
//! spool and `/health` mounted on it.

use super::{Role, Shared};
use crate::{health, policies::PolicyControl, streaming::Streaming};
use anyhow::Context as _;
use edge_config::EdgeConfig;
use edge_http::{BoundListener, HttpApp, Listeners};
use edge_origin::Origin;
use edge_pipeline::{Mount, Pipeline, PipelineConfig, PipelineMetrics};
use edge_policy::Router;
use edge_upstream::SeederOrigin;
use std::{net::SocketAddr, sync::Arc, time::Instant};
use tokio::task::JoinHandle;

/// The viewer listeners, bound, and the signaling role's own ones.
pub(crate) struct Sockets {
    listeners: Vec<BoundListener>,
    pub(crate) http: Vec<SocketAddr>,
    pub(crate) https: Vec<SocketAddr>,
    signaling: Vec<BoundListener>,
    /// `signaling.listen` and `signaling.tls_listen` as bound (plain, TLS).
    pub(crate) signaling_addrs: (Vec<SocketAddr>, Vec<SocketAddr>),
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
    /// The signaling role's own listeners, and the paths they serve.
    signaling_sockets: Vec<BoundListener>,
    signaling_paths: Vec<String>,
    pub(crate) pipeline: Arc<Pipeline>,
    /// What the caches fill from (seeders in front of the origin when routing to them).
    pub(crate) upstream: Arc<dyn Origin>,
    pub(crate) routing: Option<Arc<SeederOrigin>>,
    pub(crate) streaming: Streaming,
    pub(crate) health: Arc<health::Monitor>,
    control: Arc<PolicyControl>,
    /// The signaling role's event tasks (Kafka stream events in, peer counts out).
    signaling_tasks: Vec<JoinHandle<()>>,
    cfg: EdgeConfig,
}

impl EdgeRole {
    /// Binds every viewer listener (TLS ones with the configured or development certificate).
    pub(crate) fn bind(cfg: &EdgeConfig) -> anyhow::Result<Sockets> {
        let signaling = cfg.runs(edge_config::Role::Signaling);
        let own_tls = signaling && !cfg.signaling.tls_listen.is_empty();
        let tls_pem = if cfg.server.tls_listen.is_empty() && !own_tls {
            None
        } else {
            Some(crate::secrets::tls_pem(cfg)?)
        };
        let bind = |addr: &SocketAddr, tls: bool| -> anyhow::Result<BoundListener> {
            let settings = match (&tls_pem, tls) {
                (Some((cert, key)), true) => Some(edge_http::tls_settings(cert, key)?),
                _ => None,
            };
            BoundListener::bind(*addr, settings).with_context(|| format!("cannot listen on {addr}"))
        };
        let mut listeners = Vec::new();
        for addr in &cfg.server.listen {
            listeners.push(bind(addr, false)?);
        }
        for addr in &cfg.server.tls_listen {
            listeners.push(bind(addr, true)?);
        }
        anyhow::ensure!(
            !listeners.is_empty(),
            "{}: the edge role has no listener: set `server.listen` or `server.tls_listen` (or \
             pass --listen), or run without the edge role",
            cfg.source.display()
        );
        let addrs = |tls: bool| {
            listeners
                .iter()
                .filter(|l| l.is_tls() == tls)
                .map(BoundListener::local_addr)
                .collect()
        };
        let mut own = Vec::new();
        if signaling {
            for addr in &cfg.signaling.listen {
                own.push(bind(addr, false)?);
            }
            for addr in &cfg.signaling.tls_listen {
                own.push(bind(addr, true)?);
            }
        }
        let own_addrs = |tls: bool| {
            own.iter()
                .filter(|l| l.is_tls() == tls)
                .map(BoundListener::local_addr)
                .collect()
        };
        Ok(Sockets {
            http: addrs(false),
            https: addrs(true),
            signaling_addrs: (own_addrs(false), own_addrs(true)),
            signaling: own,
            listeners,
        })
    }

    /// Opens the disk tier and the event spool, builds the upstream and the pipeline, mounts the
    /// streaming API and `/health`. Nothing serves yet.
    pub(crate) async fn build(
        shared: &Shared<'_>,
        sockets: Sockets,
        policies: Policies,
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
        let (signaling, hub, signaling_tasks) = if cfg.runs(edge_config::Role::Signaling) {
            let (mounts, hub) =
                crate::signaling::mounts(cfg, shared.redis.as_ref(), shared.registry)?;
            let tasks = crate::signaling::event_tasks(cfg, &hub, streaming.analytics(cfg))?;
            (mounts, Some(hub), tasks)
        } else {
            (Vec::new(), None, Vec::new())
        };
        let health = Arc::new(health::Monitor::new(
            upstream.clone(),
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
        let s = &cfg.signaling;
        let signaling_paths = [Some(&s.tracker_path), Some(&s.path), s.echo_path.as_ref()]
            .into_iter()
            .flatten()
            .cloned()
            .chain(["/health".to_owned()])
            .collect();
        Ok(Self {
            sockets: sockets.listeners,
            signaling_sockets: sockets.signaling,
            signaling_paths,
            pipeline,
            upstream,
            routing,
            streaming,
            health,
            control: policies.control,
            signaling_tasks,
            cfg: cfg.clone(),
        })
    }
}

fn pipeline_config(cfg: &EdgeConfig) -> PipelineConfig {
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
        let own = std::mem::take(&mut self.signaling_sockets);
        if !own.is_empty() {
            let only = crate::signaling::Only::new(
                self.pipeline.clone(),
                std::mem::take(&mut self.signaling_paths),
            );
            listeners.serve_with(
                "signaling",
                HttpApp::new(Arc::new(only)),
                own,
                edge_http::Buffers::WEBSOCKET,
            );
        }
        let mut tasks = Vec::new();
        if let Some(r) = &self.routing {
            tasks.extend(r.spawn());
        }
        if !self.cfg.policies.watch_interval.is_zero() {
            tasks.push(self.control.clone().watch(self.cfg.policies.watch_interval));
        }
        tasks.append(&mut self.signaling_tasks);
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
