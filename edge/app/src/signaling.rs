//! The signaling role's tracker, mounted on the edge role's viewer listeners.

use edge_config::EdgeConfig;
use edge_pipeline::Mount;
use edge_signaling::{Limits, Metrics, Tracker, TrackerConfig, TrackerService};
use std::sync::Arc;

/// The WebTorrent tracker at `signaling.tracker_path`, behind its route's policy chain.
pub(crate) fn tracker_mount(
    cfg: &EdgeConfig,
    registry: &prometheus::Registry,
) -> anyhow::Result<Mount> {
    let s = &cfg.signaling;
    let tracker = Arc::new(Tracker::new(
        TrackerConfig {
            interval_secs: s.interval.as_secs(),
            max_offers: s.max_offers,
            max_swarm_peers: s.max_swarm_peers,
            max_swarms: s.max_swarms,
            ..TrackerConfig::default()
        },
        Metrics::register(registry)?,
    ));
    let limits = Limits {
        max_message: usize::try_from(s.max_message.as_u64()).unwrap_or(usize::MAX),
        messages_per_second: s.messages_per_second,
        ping_interval: s.ping_interval,
        send_timeout: cfg.server.send_timeout,
        ..Limits::default()
    };
    Ok(Mount {
        path: s.tracker_path.clone(),
        subtree: false,
        open: false,
        service: Arc::new(TrackerService::new(
            tracker,
            limits,
            s.allowed_origins.clone(),
        )),
    })
}
