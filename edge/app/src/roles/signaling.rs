//! The signaling role: the WebTorrent tracker and the native protocol (`edge-signaling`), each
//! behind the policy chain of its route.
//!
//! With the edge role, its endpoints are mounts of the edge role's pipeline: the viewer
//! listeners serve them beside the media, on the edge's `/health` and event spool. Alone
//! (`roles = ["signaling"]`), the process's viewer listeners (`server.listen`, `tls_listen`) serve
//! them on a pipeline of the role's own — the routes and policy chains of the policies file, no
//! cache tier, no origin read: any path but the endpoints and `/health` is a 404 — with an event
//! spool of its own (peer counts out, shipped to Kafka when configured). Either way
//! `signaling.listen` / `tls_listen` serve the endpoints and `/health` only, with the WebSocket
//! buffers ([`edge_http::Buffers::WEBSOCKET`]); alone, so do the viewer listeners.

use super::{Role, Shared, edge::Policies};
use crate::{health, streaming::Streaming};
use edge_config::EdgeConfig;
use edge_http::{BoundListener, HttpApp, Listeners};
use edge_pipeline::{EventSink, Mount, Pipeline, PipelineMetrics};
use edge_signaling::Hub;
use std::{net::SocketAddr, sync::Arc};
use tokio::task::JoinHandle;

/// The role's listeners, bound.
pub(crate) struct Sockets {
    listeners: Vec<BoundListener>,
    /// `server.listen` and `server.tls_listen` as bound (plain, TLS) when the role runs alone.
    pub(crate) viewer: (Vec<SocketAddr>, Vec<SocketAddr>),
    /// `signaling.listen` and `signaling.tls_listen` as bound (plain, TLS).
    pub(crate) own: (Vec<SocketAddr>, Vec<SocketAddr>),
}

/// What only a role running alone has: its pipeline's policies (reloaded in place), its events.
struct Alone {
    control: Arc<crate::policies::PolicyControl>,
    events: Streaming,
}

pub(crate) struct SignalingRole {
    listeners: Vec<BoundListener>,
    /// The paths the listeners serve (the endpoints and `/health`).
    paths: Vec<String>,
    /// The endpoints, until a pipeline mounts them.
    mounts: Vec<Mount>,
    pub(crate) hub: Arc<Hub>,
    /// The pipeline serving the endpoints: the edge role's, or the role's own.
    pipeline: Option<Arc<Pipeline>>,
    /// Set when the role runs alone.
    alone: Option<Alone>,
    /// `/health` of a role running alone.
    pub(crate) health: Option<Arc<health::Monitor>>,
    /// The event tasks (Kafka stream events in, peer counts out).
    tasks: Vec<JoinHandle<()>>,
    watch_interval: std::time::Duration,
}

impl SignalingRole {
    /// Binds `signaling.listen` / `tls_listen`, and the viewer listeners when the edge role does
    /// not run (it binds them otherwise).
    pub(crate) fn bind(cfg: &EdgeConfig) -> anyhow::Result<Sockets> {
        let s = &cfg.signaling;
        let mut listeners = if cfg.runs(edge_config::Role::Edge) {
            Vec::new()
        } else {
            super::bind_viewer(cfg, &cfg.server.listen, &cfg.server.tls_listen)?
        };
        let viewer = (
            super::addrs_of(&listeners, false),
            super::addrs_of(&listeners, true),
        );
        let own = super::bind_viewer(cfg, &s.listen, &s.tls_listen)?;
        let own_addrs = (super::addrs_of(&own, false), super::addrs_of(&own, true));
        listeners.extend(own);
        anyhow::ensure!(
            !listeners.is_empty() || cfg.runs(edge_config::Role::Edge),
            "{}: the signaling role has no listener: set `server.listen`, `server.tls_listen`, \
             `signaling.listen` or `signaling.tls_listen`",
            cfg.source.display()
        );
        Ok(Sockets {
            listeners,
            viewer,
            own: own_addrs,
        })
    }

    /// Builds the hub, the tracker and their endpoints. Nothing serves yet: the endpoints are
    /// mounted by the edge role ([`SignalingRole::share`] then [`SignalingRole::attach`]) or by
    /// the role itself ([`SignalingRole::alone`]).
    pub(crate) fn build(shared: &Shared<'_>, sockets: Sockets) -> anyhow::Result<Self> {
        let cfg = shared.cfg;
        let (mounts, hub) = crate::signaling::mounts(cfg, shared.redis.as_ref(), shared.registry)?;
        let s = &cfg.signaling;
        let paths = [Some(&s.tracker_path), Some(&s.path), s.echo_path.as_ref()]
            .into_iter()
            .flatten()
            .cloned()
            .chain(["/health".to_owned()])
            .collect();
        Ok(Self {
            listeners: sockets.listeners,
            paths,
            mounts,
            hub,
            pipeline: None,
            alone: None,
            health: None,
            tasks: Vec::new(),
            watch_interval: cfg.policies.watch_interval,
        })
    }

    /// The endpoints (for the edge role's pipeline to mount) and the hub (for its health).
    pub(crate) fn share(&mut self) -> (Vec<Mount>, Arc<Hub>) {
        (std::mem::take(&mut self.mounts), self.hub.clone())
    }

    /// After the edge role mounted the endpoints on `pipeline`: the role's listeners serve that
    /// pipeline, its peer counts go to the edge's spool (`analytics`).
    pub(crate) fn attach(
        &mut self,
        cfg: &EdgeConfig,
        pipeline: Arc<Pipeline>,
        analytics: Option<Arc<dyn EventSink>>,
    ) -> anyhow::Result<()> {
        self.tasks = crate::signaling::event_tasks(cfg, &self.hub, analytics)?;
        self.pipeline = Some(pipeline);
        Ok(())
    }

    /// Without the edge role: a pipeline of the role's own over the policies (reloaded in place
    /// as the edge role's are), with the endpoints and `/health` mounted, and an event spool.
    pub(crate) async fn alone(
        &mut self,
        shared: &Shared<'_>,
        policies: Policies,
    ) -> anyhow::Result<()> {
        let cfg = shared.cfg;
        let events = Streaming::events(cfg, shared.registry).await?;
        let health = Arc::new(health::Monitor::new(
            None,
            shared.redis.clone(),
            events.kafka.clone(),
            Some(events.spool.clone()),
            Some(self.hub.clone()),
        ));
        // No media goes through it (the listeners pass only the mounted paths): the smallest
        // memory tier, no disk tier; the origin is never read.
        let mut pipeline_cfg = super::edge::pipeline_config(cfg);
        pipeline_cfg.cache.capacity = 0;
        pipeline_cfg.cache.estimated_entries = 16;
        let mut pipeline = Pipeline::new(
            policies.router,
            shared.origin.clone(),
            None,
            pipeline_cfg,
            PipelineMetrics::new(shared.registry)?,
        );
        let analytics = events.analytics(cfg);
        if let Some(sink) = &analytics {
            pipeline = pipeline.with_events(sink.clone());
        }
        let pipeline = Arc::new(pipeline);
        let mut mounts = std::mem::take(&mut self.mounts);
        mounts.push(Mount {
            path: "/health".into(),
            subtree: false,
            open: true,
            service: Arc::new(health::ViewerHealth(health.clone())),
        });
        pipeline.mount(mounts);
        policies.control.attach(pipeline.clone());
        self.tasks = crate::signaling::event_tasks(cfg, &self.hub, analytics)?;
        self.pipeline = Some(pipeline);
        self.health = Some(health);
        self.alone = Some(Alone {
            control: policies.control,
            events,
        });
        Ok(())
    }
}

#[async_trait::async_trait]
impl Role for SignalingRole {
    fn start(&mut self, listeners: &mut Listeners) -> Vec<JoinHandle<()>> {
        let own = std::mem::take(&mut self.listeners);
        if let Some(pipeline) = &self.pipeline
            && !own.is_empty()
        {
            let only =
                crate::signaling::Only::new(pipeline.clone(), std::mem::take(&mut self.paths));
            listeners.serve_with(
                "signaling",
                HttpApp::new(Arc::new(only)),
                own,
                edge_http::Buffers::WEBSOCKET,
            );
        }
        let mut tasks = std::mem::take(&mut self.tasks);
        if let Some(alone) = &self.alone
            && !self.watch_interval.is_zero()
        {
            tasks.push(alone.control.clone().watch(self.watch_interval));
        }
        tasks
    }

    /// Alone: publishes and syncs the role's events.
    async fn stop(self: Box<Self>) {
        if let Some(alone) = self.alone {
            alone.events.shutdown().await;
        }
    }
}
