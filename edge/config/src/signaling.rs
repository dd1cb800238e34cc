//! `[signaling]`: the signaling role's WebTorrent tracker.

use crate::{EdgeConfig, Role};
use bytesize::ByteSize;
use serde::Deserialize;
use std::time::Duration;

/// `[signaling]`: the WebTorrent tracker of the signaling role, on the viewer listeners.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SignalingConfig {
    /// Where players open the tracker WebSocket (`ws[s]://<edge><path>`); it goes through the
    /// policy chain of the route matching it (a JWT in `access_token`). Default `/ws/tracker`.
    pub tracker_path: String,
    /// `Origin` values allowed to connect (`https://player.example.com`); `*` allows any. A
    /// request without `Origin` (not a browser) is allowed. Default `["*"]`.
    pub allowed_origins: Vec<String>,
    /// The announce interval told to clients. Default `120s` (the `bittorrent-tracker` server's).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Peers an announce's offers go to at most. Default 82.
    pub max_offers: usize,
    /// Peers per swarm (more are refused with `swarm full`). Default 1000.
    pub max_swarm_peers: usize,
    /// Swarms held. Default 100000.
    pub max_swarms: usize,
    /// Largest message a client may send. Default `64 KiB`.
    pub max_message: ByteSize,
    /// Messages per second per connection. Default 50.
    pub messages_per_second: u32,
    /// A ping after this long without a frame; two unanswered in a row close the connection.
    /// Default `30s`.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
}

impl Default for SignalingConfig {
    fn default() -> Self {
        Self {
            tracker_path: "/ws/tracker".into(),
            allowed_origins: vec!["*".into()],
            interval: Duration::from_secs(120),
            max_offers: 82,
            max_swarm_peers: 1000,
            max_swarms: 100_000,
            max_message: ByteSize::kib(64),
            messages_per_second: 50,
            ping_interval: Duration::from_secs(30),
        }
    }
}

/// Checks `[signaling]` (and that the role has the edge role's listeners).
pub(crate) fn validate(cfg: &EdgeConfig, bad: &mut dyn FnMut(&str, &str)) {
    let s = &cfg.signaling;
    if cfg.roles.has(Role::Signaling) && !cfg.roles.has(Role::Edge) {
        bad(
            "roles",
            "\"signaling\" serves on the edge role's viewer listeners and policy chains: add \"edge\"",
        );
    }
    let path_ok = s.tracker_path.starts_with('/')
        && s.tracker_path.len() > 1
        && !s.tracker_path.ends_with('/')
        && s.tracker_path.split('/').skip(1).all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
        });
    if !path_ok {
        bad(
            "signaling.tracker_path",
            "must be an absolute, normalised path such as `/ws/tracker`",
        );
    }
    if s.allowed_origins.is_empty() {
        bad(
            "signaling.allowed_origins",
            "must list at least one origin (or \"*\")",
        );
    }
    if s.interval < Duration::from_secs(10) || s.interval > Duration::from_secs(3600) {
        bad("signaling.interval", "must be between 10s and 1h");
    }
    if s.max_offers == 0 || s.max_offers > 1000 {
        bad("signaling.max_offers", "must be between 1 and 1000");
    }
    if s.max_swarm_peers == 0 {
        bad("signaling.max_swarm_peers", "must be at least 1");
    }
    if s.max_swarms == 0 {
        bad("signaling.max_swarms", "must be at least 1");
    }
    if s.max_message < ByteSize::kib(1) || s.max_message > ByteSize::mib(16) {
        bad("signaling.max_message", "must be between 1 KiB and 16 MiB");
    }
    if s.messages_per_second == 0 {
        bad("signaling.messages_per_second", "must be at least 1");
    }
    if s.ping_interval < Duration::from_secs(1) || s.ping_interval > Duration::from_secs(600) {
        bad("signaling.ping_interval", "must be between 1s and 10m");
    }
}
