//! The signaling role's WebTorrent tracker: viewers' players (the `bittorrent-tracker` client,
//! `p2p-media-loader`) open a WebSocket to the edge, announce the swarm (info hash) of what they
//! play, and the tracker relays their WebRTC offers and answers to other peers of the swarm.
//!
//! ```text
//!  viewer ──GET /ws/tracker (Upgrade)──► listener ► pipeline: route's policy chain
//!                                                    │ allowed
//!                                                    ▼
//!                                   TrackerService: handshake, Origin → 101
//!                                                    │ upgraded connection
//!                                                    ▼
//!                   session (tungstenite, bounded frames, rate, pings, drain → 1001)
//!                                                    │ text frames
//!                                                    ▼
//!                 Tracker: swarms {info_hash → peers}; replies and relays into each
//!                 connection's bounded outbox (a full one is cut, never waited for)
//! ```
//!
//! The wire format is the npm `bittorrent-tracker` 11.x server's ([`wire`]): the same replies,
//! key for key, so its client and `p2p-media-loader` work unchanged. Where it differs, on
//! purpose:
//! - ids must be 20 latin1 characters (the reference keeps the low byte of anything else);
//!   offers need an `offer_id` and an object; an unknown `event` is refused before it creates a
//!   swarm;
//! - a peer id belongs to the connection that announced it while that connection is open:
//!   another connection announcing it (or answering, or sending `stopped`, as it) is refused
//!   with `peer_id in use by another connection` (the reference accepts it and keeps sending to
//!   the first connection; anyone who saw the id in a relay could stop it). A closed connection
//!   stops every peer id it announced (the reference only its first);
//! - peers live as long as their connection (the reference also forgets them after 20 minutes
//!   without an announce); an empty swarm is dropped (the reference keeps it, listed by a scrape
//!   of every swarm with zero counts);
//! - bounds: swarms, peers per swarm (refused with `swarm full`), swarms per connection,
//!   hashes per scrape (a scrape of every swarm lists the first 1000 created), message size and
//!   rate per connection, and an outbox per connection in messages and bytes (a connection
//!   that does not read is cut, and its peers leave their swarms at once).
//!
//! Both the tracker and the native protocol ([`Hub`], at `/ws/signaling`: streams, relays,
//! watch rooms) span the edges sharing a Redis through one [`Cluster`] per node; both share
//! the endpoint ([`WsService`]), the session and the outbox. Across nodes a swarm's bound
//! (`swarm full`) counts every node's peers; the other bounds are per node.

mod burst;
mod echo;
mod mailbox;
mod native;
mod service;
mod session;
mod tracker;
pub mod wire;

pub use echo::Echo;
pub use mailbox::{Frame, Outbox};
pub use native::{Cluster, Hub, SignalingConfig};
pub use service::{EchoService, SignalingService, TrackerService, WsService, normalise_origin};
pub use tracker::{ConnId, Tracker};

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use std::time::Duration;

/// What the tracker holds and answers.
#[derive(Debug, Clone)]
pub struct TrackerConfig {
    /// The announce `interval` sent to clients, in seconds (the reference: 120); a scrape's
    /// `min_request_interval` is five times it (600).
    pub interval_secs: u64,
    /// Peers an announce's offers go to at most (the reference: 82).
    pub max_offers: usize,
    /// Peers per swarm; a new peer beyond it is refused with `swarm full`.
    pub max_swarm_peers: usize,
    /// Swarms held; an announce creating one more is refused with `too many swarms`.
    pub max_swarms: usize,
    /// Info hashes answered per scrape.
    pub max_scrape: usize,
    /// Messages queued per connection; a connection with a full queue is cut.
    pub outbox: usize,
    /// Bytes queued per connection; beyond them the connection is cut.
    pub max_queued: usize,
    /// (swarm, peer id) pairs one connection may announce at once (`too many swarms on this
    /// connection` beyond): one client cannot fill the swarms or the tracker.
    pub max_per_connection: usize,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            interval_secs: 120,
            max_offers: 82,
            max_swarm_peers: 1000,
            max_swarms: 100_000,
            max_scrape: 1000,
            outbox: 256,
            max_queued: 1 << 20,
            max_per_connection: 64,
        }
    }
}

/// Bounds of one connection.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest message (and frame) accepted; a larger one closes the connection (1009).
    pub max_message: usize,
    /// Messages a second per connection (bursts of as many); beyond it the connection is closed
    /// (1008).
    pub messages_per_second: u32,
    /// A ping is sent after this long without a frame from the client.
    pub ping_interval: Duration,
    /// Pings in a row without any frame back before the connection is closed as idle.
    pub idle_pings: u32,
    /// Longest wait for one message to be taken by the client; a client that stops reading is
    /// cut (the upgraded stream has no timeout of its own).
    pub send_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message: 64 * 1024,
            messages_per_second: 50,
            ping_interval: Duration::from_secs(30),
            idle_pings: 2,
            send_timeout: Duration::from_secs(30),
        }
    }
}

/// Peers that joined and left one stream over a period, and its peers on this node at its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCounts {
    /// The stream id.
    pub stream: String,
    /// Peers that joined.
    pub joined: u64,
    /// Peers that left.
    pub left: u64,
    /// Peers of the stream on this node now.
    pub peers: usize,
}

/// Who is on the other end of a connection, as the upgrade request's policies found.
#[derive(Debug, Clone, Default)]
pub struct Viewer {
    /// The JWT `sub` the route's policies put in the context, when there is one.
    pub sub: Option<String>,
    /// When its credentials expire (`expires_at` in the context, Unix seconds: the JWT's `exp`
    /// plus the policy's leeway): the connection is closed then (1008 `token expired`), as
    /// the policy would refuse the next request. `None`: no expiry known.
    pub expires_at: Option<std::time::SystemTime>,
}

/// A protocol served over WebSocket text messages: what a [`session`] drives.
#[async_trait::async_trait]
pub trait Engine: Send + Sync + 'static {
    /// Registers a connection; its session sends what arrives in the returned outbox.
    fn open(&self, viewer: &Viewer) -> (ConnId, Outbox);
    /// Handles one text message from `conn` (the next one once this returns: a connection's
    /// messages are handled in order).
    async fn handle(&self, conn: ConnId, text: &str);
    /// Handles one binary message. Both signaling protocols read it as text (as the reference
    /// tracker does: every frame is JSON).
    async fn handle_binary(&self, conn: ConnId, bytes: &[u8]) {
        self.handle(conn, &String::from_utf8_lossy(bytes)).await;
    }
    /// Forgets `conn` (closed, cut, or the edge drains).
    async fn close(&self, conn: ConnId);
    /// Counts a message refused or a connection cut by the session, by reason.
    fn count_drop(&self, reason: &str);
}

/// The signaling metrics, labelled by `protocol` (`tracker`, `signaling`).
#[derive(Clone)]
pub struct Metrics {
    connections: IntGaugeVec,
    swarms: IntGaugeVec,
    rooms: IntGauge,
    messages: IntCounterVec,
    relays: IntCounterVec,
    drops: IntCounterVec,
    sent: IntCounterVec,
    cluster_up: IntGauge,
    cluster: IntCounterVec,
}

impl Metrics {
    /// Registers `edge_signaling_*` in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self::unregistered()?;
        registry.register(Box::new(m.connections.clone()))?;
        registry.register(Box::new(m.swarms.clone()))?;
        registry.register(Box::new(m.rooms.clone()))?;
        registry.register(Box::new(m.messages.clone()))?;
        registry.register(Box::new(m.relays.clone()))?;
        registry.register(Box::new(m.drops.clone()))?;
        registry.register(Box::new(m.sent.clone()))?;
        registry.register(Box::new(m.cluster_up.clone()))?;
        registry.register(Box::new(m.cluster.clone()))?;
        Ok(m)
    }

    /// Metrics kept but not exported (tests).
    pub fn unregistered() -> prometheus::Result<Self> {
        let counter = |name: &str, help: &str, label: &str| {
            IntCounterVec::new(Opts::new(name, help), &["protocol", label])
        };
        Ok(Self {
            connections: IntGaugeVec::new(
                Opts::new(
                    "edge_signaling_connections",
                    "Open signaling WebSocket connections",
                ),
                &["protocol"],
            )?,
            swarms: IntGaugeVec::new(
                Opts::new(
                    "edge_signaling_swarms",
                    "Swarms (tracker info hashes, signaling streams) with at least one peer",
                ),
                &["protocol"],
            )?,
            rooms: IntGauge::new(
                "edge_signaling_rooms",
                "Watch rooms with at least one member",
            )?,
            messages: counter(
                "edge_signaling_messages_total",
                "Messages received, by action or type",
                "type",
            )?,
            relays: counter(
                "edge_signaling_relays_total",
                "Offers, answers and ICE candidates relayed to another peer",
                "kind",
            )?,
            drops: counter(
                "edge_signaling_drops_total",
                "Messages refused or connections cut, by reason",
                "reason",
            )?,
            sent: IntCounterVec::new(
                Opts::new("edge_signaling_sent_total", "Messages sent"),
                &["protocol"],
            )?,
            cluster_up: IntGauge::new(
                "edge_signaling_cluster_up",
                "1 while this node reaches the other signaling nodes through Redis (0: local \
                 peers only, or no Redis configured)",
            )?,
            cluster: IntCounterVec::new(
                Opts::new(
                    "edge_signaling_cluster_total",
                    "Cluster events: relays to and from other nodes, Redis failures",
                ),
                &["event"],
            )?,
        })
    }

    /// The metrics of one protocol.
    pub(crate) fn protocol(&self, protocol: &'static str) -> ProtocolMetrics {
        ProtocolMetrics {
            protocol,
            connections: self.connections.with_label_values(&[protocol]),
            swarms: self.swarms.with_label_values(&[protocol]),
            rooms: self.rooms.clone(),
            messages: self.messages.clone(),
            relays: self.relays.clone(),
            drops: self.drops.clone(),
            sent: self.sent.with_label_values(&[protocol]),
            cluster_up: self.cluster_up.clone(),
            cluster: self.cluster.clone(),
        }
    }
}

/// [`Metrics`] with the protocol label set.
#[derive(Clone)]
pub(crate) struct ProtocolMetrics {
    protocol: &'static str,
    connections: IntGauge,
    swarms: IntGauge,
    rooms: IntGauge,
    messages: IntCounterVec,
    relays: IntCounterVec,
    drops: IntCounterVec,
    sent: IntCounter,
    cluster_up: IntGauge,
    cluster: IntCounterVec,
}

impl ProtocolMetrics {
    /// A message of a known `kind` received (the label set stays bounded).
    fn message(&self, kind: &str) {
        self.messages
            .with_label_values(&[self.protocol, kind])
            .inc();
    }

    fn relay(&self, kind: &str) {
        self.relays.with_label_values(&[self.protocol, kind]).inc();
    }

    fn drop(&self, reason: &str) {
        self.drops.with_label_values(&[self.protocol, reason]).inc();
    }

    fn relay_n(&self, kind: &str, n: u64) {
        self.relays
            .with_label_values(&[self.protocol, kind])
            .inc_by(n);
    }

    fn drop_n(&self, reason: &str, n: u64) {
        self.drops
            .with_label_values(&[self.protocol, reason])
            .inc_by(n);
    }

    fn cluster(&self, event: &str) {
        self.cluster.with_label_values(&[event]).inc();
    }

    fn cluster_n(&self, event: &str, n: u64) {
        self.cluster.with_label_values(&[event]).inc_by(n);
    }
}

#[cfg(test)]
mod tests;
