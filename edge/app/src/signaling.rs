//! The signaling role's endpoints, mounted on the edge role's viewer listeners: the WebTorrent
//! tracker and the native protocol, each behind its route's policy chain.

use edge_config::EdgeConfig;
use edge_events::{NewRecord, SignalingPeers};
use edge_kv::RedisStore;
use edge_pipeline::{EventSink, Mount};
use edge_signaling::{
    Cluster, Echo, EchoService, Engine, Hub, Limits, Metrics, SignalingConfig, SignalingService,
    Tracker, TrackerConfig, TrackerService,
};
use std::{sync::Arc, time::SystemTime};
use tokio::{sync::mpsc, task::JoinHandle};

/// The mounts at `signaling.tracker_path` and `signaling.path`, and the native protocol's hub
/// (for health). With Redis, the hub's streams span every node sharing it. The hub's sweeper
/// (room members past their grace) runs while the hub lives.
pub(crate) fn mounts(
    cfg: &EdgeConfig,
    redis: Option<&Arc<RedisStore>>,
    registry: &prometheus::Registry,
) -> anyhow::Result<(Vec<Mount>, Arc<Hub>)> {
    let s = &cfg.signaling;
    let node_id = s.node_id.clone().unwrap_or_else(default_node_id);
    let metrics = Metrics::register(registry)?;
    let limits = Limits {
        max_message: usize::try_from(s.max_message.as_u64()).unwrap_or(usize::MAX),
        messages_per_second: s.messages_per_second,
        ping_interval: s.ping_interval,
        send_timeout: cfg.server.send_timeout,
        ..Limits::default()
    };
    // A connection's outbox holds two of the largest messages at least (1 MiB by default): a
    // relay or an echo of a message the limits admit never cuts its receiver by itself.
    let max_queued = limits.max_message.saturating_mul(2).max(1 << 20);
    let tracker_cfg = TrackerConfig {
        max_queued,
        interval_secs: s.interval.as_secs(),
        max_offers: s.max_offers,
        max_swarm_peers: s.max_swarm_peers,
        max_swarms: s.max_swarms,
        ..TrackerConfig::default()
    };
    let hub_cfg = SignalingConfig {
        max_queued,
        max_streams: s.max_swarms,
        max_swarm_peers: s.max_swarm_peers,
        max_peer_list: s.max_peer_list,
        max_rooms: s.max_rooms,
        max_room_members: s.max_room_members,
        room_grace: s.room_grace,
        node_id: node_id.clone(),
        ..SignalingConfig::default()
    };
    // One cluster for both protocols: one subscription and one keep-alive per node.
    let (hub, tracker) = match redis {
        Some(store) => {
            let cluster = Arc::new(Cluster::new(store.clone(), node_id.clone()));
            let tracker = Tracker::clustered(tracker_cfg.clone(), &metrics, cluster.clone());
            (Hub::clustered(hub_cfg, &metrics, cluster), tracker)
        }
        None => (
            Arc::new(Hub::new(hub_cfg, &metrics)),
            Arc::new(Tracker::new(tracker_cfg.clone(), &metrics)),
        ),
    };
    tracing::info!(node_id, clustered = redis.is_some(), "signaling node");
    hub.spawn_sweeper();
    let origins = s.allowed_origins.clone();
    let (limits_echo, origins_echo) = (limits.clone(), origins.clone());
    let tracker = TrackerService::new(tracker, limits.clone(), origins.clone())
        .with_token_prefix(s.token_protocol_prefix.clone())
        .with_subprotocols(s.subprotocols.clone());
    let native = SignalingService::new(hub.clone(), limits, origins)
        .with_token_prefix(s.token_protocol_prefix.clone())
        .with_subprotocols(s.subprotocols.clone());
    let mut mounts = vec![
        Mount {
            path: s.tracker_path.clone(),
            subtree: false,
            open: false,
            service: Arc::new(tracker),
        },
        Mount {
            path: s.path.clone(),
            subtree: false,
            open: false,
            service: Arc::new(native),
        },
    ];
    if let Some(path) = &s.echo_path {
        let echo = Arc::new(Echo::new(&tracker_cfg, &metrics));
        let service = EchoService::new(echo, limits_echo, origins_echo)
            .with_token_prefix(s.token_protocol_prefix.clone())
            .with_subprotocols(s.subprotocols.clone());
        mounts.push(Mount {
            path: path.clone(),
            subtree: false,
            open: false,
            service: Arc::new(service),
        });
    }
    Ok((mounts, hub))
}

/// The hub's event tasks: with `[kafka]` (and `signaling.kafka_consumer_group`), the consumer of
/// the streams' event topics, whose events go to the stream's peers on every node; with
/// analytics events on, a `signaling.peers` record per stream whose peers changed, every
/// `signaling.peer_counts_interval`.
pub(crate) fn event_tasks(
    cfg: &EdgeConfig,
    hub: &Arc<Hub>,
    analytics: Option<Arc<dyn EventSink>>,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let s = &cfg.signaling;
    let mut tasks = Vec::new();
    if let Some(sink) = analytics {
        hub.count_peers();
        let (hub, every) = (Arc::downgrade(hub), s.peer_counts_interval);
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(hub) = hub.upgrade() else { return };
                let timestamp = edge_events::timestamp(SystemTime::now());
                for c in hub.take_peer_counts() {
                    let event = SignalingPeers {
                        stream_id: c.stream,
                        node_id: hub.node_id().to_owned(),
                        joined: c.joined,
                        left: c.left,
                        peers: c.peers as u64,
                        timestamp: timestamp.clone(),
                    };
                    let key = event.stream_id.clone();
                    sink.emit(NewRecord::new(&event, key));
                }
            }
        }));
    }
    let group = &s.kafka_consumer_group;
    if let Some(servers) = cfg.kafka.active()
        && !group.is_empty()
    {
        // One group per cluster: each event is read by one node and fanned out through Redis.
        // A node without Redis cannot fan out: it reads every event itself, in a group of its
        // own.
        let group = if hub.cluster_up().is_some() {
            group.clone()
        } else {
            format!("{group}-{}", hub.node_id())
        };
        let (tx, mut rx) = mpsc::channel::<edge_kafka::StreamEvent>(1024);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let counting = Arc::downgrade(hub);
        tasks.push(edge_kafka::spawn_stream_events(
            edge_kafka::StreamEventsConfig {
                bootstrap_servers: servers.to_owned(),
                streaming_prefix: cfg.kafka.topic_prefix.clone(),
                group: group.clone(),
                max_event: 64 * 1024,
                properties: cfg
                    .kafka
                    .properties
                    .iter()
                    .map(|(a, b)| (a.clone(), b.clone()))
                    .collect(),
            },
            tx,
            move |why| {
                if let Some(hub) = counting.upgrade() {
                    hub.count_drop(why.as_str());
                }
            },
            stop_rx,
        )?);
        let hub = Arc::downgrade(hub);
        tasks.push(tokio::spawn(async move {
            // The consumer stops when this task ends (aborted with the role's tasks).
            let _stop = stop_tx;
            while let Some(event) = rx.recv().await {
                let Some(hub) = hub.upgrade() else { return };
                hub.stream_event(&event.stream, &event.payload).await;
            }
        }));
        tracing::info!(servers, group, "signaling: stream events from Kafka");
    }
    Ok(tasks)
}

/// `<host name>-<6 hex digits>`: unique per start, recognisable per machine or pod.
fn default_node_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && h.len() <= 48 && h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(|| "edge".into());
    format!("{host}-{:06x}", rand::random::<u32>() & 0x00ff_ffff)
}

/// The handler of the signaling role's own listeners: the pipeline (routes, policies, the
/// endpoints as mounted), for the signaling endpoints and `/health` only; anything else is a
/// 404 there (viewers fetch media from the viewer listeners).
pub(crate) struct Only {
    pipeline: Arc<edge_pipeline::Pipeline>,
    paths: Vec<String>,
}

impl Only {
    pub(crate) fn new(pipeline: Arc<edge_pipeline::Pipeline>, paths: Vec<String>) -> Self {
        Self { pipeline, paths }
    }
}

#[async_trait::async_trait]
impl edge_contract::Handler for Only {
    async fn handle(&self, req: edge_contract::EdgeRequest) -> edge_contract::EdgeResponse {
        if self.paths.contains(&req.path) {
            return self.pipeline.handle(req).await;
        }
        edge_contract::EdgeResponse::error(http::StatusCode::NOT_FOUND, "not_found")
    }
}
