//! The signaling role's endpoints, mounted on the edge role's viewer listeners: the WebTorrent
//! tracker and the native protocol, each behind its route's policy chain.

use edge_config::EdgeConfig;
use edge_pipeline::Mount;
use edge_signaling::{
    Hub, Limits, Metrics, SignalingConfig, SignalingService, Tracker, TrackerConfig, TrackerService,
};
use std::sync::Arc;

/// The mounts at `signaling.tracker_path` and `signaling.path`. The hub's sweeper (room members
/// past their grace) runs while the hub lives.
pub(crate) fn mounts(
    cfg: &EdgeConfig,
    registry: &prometheus::Registry,
) -> anyhow::Result<Vec<Mount>> {
    let s = &cfg.signaling;
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
    let hub = Arc::new(Hub::new(
        SignalingConfig {
            max_streams: s.max_swarms,
            max_swarm_peers: s.max_swarm_peers,
            max_peer_list: s.max_peer_list,
            max_rooms: s.max_rooms,
            max_room_members: s.max_room_members,
            room_grace: s.room_grace,
            ..SignalingConfig::default()
        },
        &metrics,
    ));
    hub.spawn_sweeper();
    let origins = s.allowed_origins.clone();
    let tracker = TrackerService::new(tracker, limits.clone(), origins.clone())
        .with_token_prefix(s.token_protocol_prefix.clone());
    let native = SignalingService::new(hub, limits, origins)
        .with_token_prefix(s.token_protocol_prefix.clone());
    Ok(vec![
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
    ])
}
