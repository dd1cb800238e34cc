//! The signaling role's endpoints, mounted on the edge role's viewer listeners: the WebTorrent
//! tracker and the native protocol, each behind its route's policy chain.

use edge_config::EdgeConfig;
use edge_kv::RedisStore;
use edge_pipeline::Mount;
use edge_signaling::{
    Cluster, Hub, Limits, Metrics, SignalingConfig, SignalingService, Tracker, TrackerConfig,
    TrackerService,
};
use std::sync::Arc;

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
    let tracker = Arc::new(Tracker::new(
        TrackerConfig {
            interval_secs: s.interval.as_secs(),
            max_offers: s.max_offers,
            max_swarm_peers: s.max_swarm_peers,
            max_swarms: s.max_swarms,
            ..TrackerConfig::default()
        },
        &metrics,
    ));
    let hub_cfg = SignalingConfig {
        max_streams: s.max_swarms,
        max_swarm_peers: s.max_swarm_peers,
        max_peer_list: s.max_peer_list,
        max_rooms: s.max_rooms,
        max_room_members: s.max_room_members,
        room_grace: s.room_grace,
        node_id: node_id.clone(),
        ..SignalingConfig::default()
    };
    let hub = match redis {
        Some(store) => Hub::clustered(
            hub_cfg,
            &metrics,
            Arc::new(Cluster::new(store.clone(), node_id.clone())),
        ),
        None => Arc::new(Hub::new(hub_cfg, &metrics)),
    };
    tracing::info!(node_id, clustered = redis.is_some(), "signaling node");
    hub.spawn_sweeper();
    let origins = s.allowed_origins.clone();
    let tracker = TrackerService::new(tracker, limits.clone(), origins.clone())
        .with_token_prefix(s.token_protocol_prefix.clone());
    let native = SignalingService::new(hub.clone(), limits, origins)
        .with_token_prefix(s.token_protocol_prefix.clone());
    let mounts = vec![
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
    Ok((mounts, hub))
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
