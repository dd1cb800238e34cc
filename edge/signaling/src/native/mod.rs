//! The native signaling protocol at `/ws/signaling` (the seeds' path): swarms of peers per
//! stream (join, peer lists, `have`, offer/answer/ICE relay by peer id) and watch rooms (a host
//! controls play/pause/seek for every member; the server keeps the room's state).
//!
//! One lock over the state, as the tracker; every send is a `try_send` into the connection's
//! bounded [`Mailbox`], and a connection that does not keep up is cut. The message set is in
//! [`wire`]. Rules:
//! - a peer id belongs to the connection that joined with it while that connection is open
//!   (`peer_id_taken` for anyone else), and relays carry the sender's own peer id in `from`;
//! - a room member's user id is the viewer's JWT `sub` when the route's policies gave one (a
//!   different `userId` is refused); without one, the `userId` of the message, which cannot
//!   take over a member that is still connected;
//! - a member whose connection closes stays in the room, offline, for `room_grace`: joining
//!   again with the same user id (another connection, another node after a drain) restores the
//!   membership, host role included. After the grace the member leaves; a host that leaves
//!   hands the room to the earliest member still online (else the earliest member), and a
//!   room without members is gone;
//! - only the host plays, pauses, seeks and sets the URL; every change is sent to every online
//!   member as a `room-state` with the server's time, so clients correct their drift.

pub(crate) mod cluster;
mod room;
mod rooms;
mod swarms;
pub(crate) mod wire;

pub use cluster::Cluster;

use crate::mailbox::{Mailbox, Outbox};
use crate::tracker::ConnId;
use crate::{Engine, Metrics, ProtocolMetrics, Viewer};
use parking_lot::Mutex;
use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Weak},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// What the native protocol holds and answers.
#[derive(Debug, Clone)]
pub struct SignalingConfig {
    /// Streams (swarms) held; a join creating one more is refused with `too_many_streams`.
    pub max_streams: usize,
    /// Peers per stream; a new peer beyond it is refused with `swarm_full`.
    pub max_swarm_peers: usize,
    /// Peers in one `peer-list` at most.
    pub max_peer_list: usize,
    /// Segment names remembered per peer (`have`), the most recent ones.
    pub max_have: usize,
    /// Rooms held.
    pub max_rooms: usize,
    /// Members per room (online or within their grace).
    pub max_room_members: usize,
    /// How long a member whose connection closed keeps its place (and a host its role).
    pub room_grace: Duration,
    /// Streams plus rooms one connection may be in at once.
    pub max_per_connection: usize,
    /// Messages queued per connection; a connection with a full queue is cut.
    pub outbox: usize,
    /// Bytes queued per connection; beyond them the connection is cut.
    pub max_queued: usize,
    /// This node's id (health; a clustered hub takes its cluster's).
    pub node_id: String,
}

impl Default for SignalingConfig {
    fn default() -> Self {
        Self {
            node_id: "edge".into(),
            max_streams: 100_000,
            max_swarm_peers: 1000,
            max_peer_list: 50,
            max_have: 64,
            max_rooms: 100_000,
            max_room_members: 100,
            room_grace: Duration::from_secs(30),
            max_per_connection: 16,
            outbox: 256,
            max_queued: 1 << 20,
        }
    }
}

/// The native protocol's state in one process.
pub struct Hub {
    cfg: SignalingConfig,
    state: Mutex<State>,
    metrics: ProtocolMetrics,
    /// The other nodes' peers, through Redis; `None`: this node's alone.
    cluster: Option<Arc<Cluster>>,
    /// The wall clock's time and tokio's at the start (the room clock of a lone hub).
    epoch: (u64, tokio::time::Instant),
}

/// What a message still needs from the cluster once its local part is done (no lock held).
pub(crate) enum After {
    Nothing,
    /// A room message, answered where the room lives.
    Room(&'static str),
    /// Write the peer in the cluster and send the peer list with other nodes' peers.
    Join {
        stream: String,
        peer: String,
        rendition: Option<String>,
        token: u64,
    },
    /// The target is not on this node: find its node and publish the relay there.
    Relay {
        kind: String,
        stream: String,
        to: String,
        text: Arc<str>,
    },
}

#[derive(Default)]
struct State {
    next_conn: ConnId,
    /// The last join token given (each join of a peer id gets its own).
    next_token: u64,
    conns: HashMap<ConnId, Conn>,
    swarms: HashMap<String, swarms::Swarm>,
    /// Rooms (a clustered node: the last state of those its members are in).
    rooms: HashMap<String, room::Room>,
    /// Stream → peers joined and left since [`Hub::take_peer_counts`] (only once
    /// [`Hub::count_peers`] was called).
    counts: HashMap<String, (u64, u64)>,
    peer_counts: bool,
    /// Connections cut (outbox full) and not yet forgotten: see [`Locked`].
    cut: Vec<ConnId>,
    /// Room members gone offline, in time order: (since, room, user).
    offline: VecDeque<(tokio::time::Instant, String, String)>,
}

struct Conn {
    mailbox: Mailbox,
    /// The viewer's JWT `sub`, when the route's policies gave one.
    sub: Option<String>,
    /// Stream id → the peer id this connection joined it with.
    joined: HashMap<String, String>,
    /// Room id → the user id this connection is in it as.
    rooms: HashMap<String, String>,
}

impl Conn {
    fn memberships(&self) -> usize {
        self.joined.len() + self.rooms.len()
    }
}

/// The state, locked. Connections cut while it is held (their outbox overflowed) are forgotten
/// when it is released, one after another: forgetting one can broadcast and cut another, and
/// doing that inside `send` would nest without bound.
struct Locked<'a> {
    hub: &'a Hub,
    state: parking_lot::MutexGuard<'a, State>,
}

impl std::ops::Deref for Locked<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.state
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.state
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        while let Some(conn) = self.state.cut.pop() {
            let left = self.hub.forget(&mut self.state, conn);
            self.hub.spawn_room_ops(left);
        }
    }
}

/// Milliseconds since the Unix epoch (the `serverTime` clients correct their drift with).
fn server_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Hub {
    /// An empty hub serving this node's peers alone.
    pub fn new(cfg: SignalingConfig, metrics: &Metrics) -> Self {
        // Join tokens and connection ids grow across restarts of a node too: its peer entries
        // and room members (node, connection) outlive it in Redis, and a restarted node with
        // the same `NODE_ID` must not take an old member's place for a new connection of the
        // same number (it would get that room's state).
        let start = server_time().saturating_mul(1000);
        let state = State {
            next_token: start,
            next_conn: start,
            ..State::default()
        };
        Self {
            cfg,
            state: Mutex::new(state),
            metrics: metrics.protocol("signaling"),
            cluster: None,
            epoch: (server_time(), tokio::time::Instant::now()),
        }
    }

    /// An empty hub whose streams span every node of `cluster`; its cluster tasks (the
    /// subscriber, the keep-alive) run while it lives.
    pub fn clustered(cfg: SignalingConfig, metrics: &Metrics, cluster: Arc<Cluster>) -> Arc<Self> {
        let hub = Arc::new(Self {
            cluster: Some(cluster.clone()),
            ..Self::new(cfg, metrics)
        });
        cluster.spawn(Arc::downgrade(&hub));
        hub
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        self.cluster
            .as_ref()
            .map_or(self.cfg.node_id.as_str(), |c| c.node())
    }

    /// Whether this node reaches the other nodes (`None`: no cluster configured).
    pub fn cluster_up(&self) -> Option<bool> {
        let up = self.cluster.as_ref().map(|c| c.is_up());
        self.metrics.cluster_up.set(i64::from(up == Some(true)));
        up
    }

    /// Registers a connection of `viewer`; its session sends what arrives in the outbox.
    pub fn connect(&self, viewer: &Viewer) -> (ConnId, Outbox) {
        let (mailbox, outbox) = Mailbox::new(self.cfg.outbox);
        let mut state = self.lock();
        state.next_conn += 1;
        let id = state.next_conn;
        state.conns.insert(
            id,
            Conn {
                mailbox,
                sub: viewer.sub.clone(),
                joined: HashMap::new(),
                rooms: HashMap::new(),
            },
        );
        self.metrics.connections.set(state.conns.len() as i64);
        (id, outbox)
    }

    /// Forgets a connection: its peers leave their streams, its room memberships go offline
    /// (for `room_grace`; in the cluster's rooms by a task: [`close`](Self::close) waits for
    /// it).
    pub fn disconnect(&self, conn: ConnId) {
        let left = self.forget(&mut self.lock(), conn);
        self.spawn_room_ops(left);
    }

    /// [`disconnect`](Self::disconnect), done once the cluster's rooms know (a draining node
    /// closes its connections this way before it goes: members reconnecting elsewhere find
    /// themselves offline, not held by a connection that is gone).
    pub async fn close(&self, conn: ConnId) {
        let left = self.forget(&mut self.lock(), conn);
        for (room, op) in left {
            self.room_op(None, &room, op, "close").await;
        }
    }

    /// Forgets `conn` here; what is left for the cluster's rooms.
    fn forget(&self, state: &mut State, conn: ConnId) -> Vec<(String, room::Op)> {
        let Some(c) = state.conns.remove(&conn) else {
            return Vec::new();
        };
        for (stream, peer) in c.joined {
            self.leave_stream(state, &stream, &peer, conn);
        }
        let left = self.rooms_closed(state, conn, c.rooms);
        self.metrics.connections.set(state.conns.len() as i64);
        left
    }

    /// Runs room ops of forgotten connections in the cluster, in a task.
    fn spawn_room_ops(&self, ops: Vec<(String, room::Op)>) {
        let Some(cluster) = self.cluster.clone().filter(|_| !ops.is_empty()) else {
            return;
        };
        let grace = self.cfg.room_grace;
        tokio::spawn(async move {
            for (room, op) in ops {
                let _ = cluster
                    .update_room(&room, &op, grace, None, &server_time)
                    .await;
            }
        });
    }

    /// Handles one text frame from `conn`.
    pub async fn handle(&self, conn: ConnId, text: &str) {
        match self.handle_here(conn, text) {
            After::Room(kind) => self.room_message(conn, kind, text).await,
            after => self.finish(conn, after).await,
        }
    }

    /// The part of a message this node answers by itself.
    fn handle_here(&self, conn: ConnId, text: &str) -> After {
        let kind = match serde_json::from_str::<wire::Typed<'_>>(text) {
            Ok(wire::Typed { kind: Some(kind) }) => kind,
            Ok(wire::Typed { kind: None }) => {
                self.refuse_now(conn, "bad_message", "a message needs a `type`", None);
                return After::Nothing;
            }
            Err(e) => {
                self.refuse_now(conn, "bad_json", &e.to_string(), None);
                return After::Nothing;
            }
        };
        let kind: &str = &kind;
        let after = match kind {
            "join" | "peers" | "have" | "leave" | "offer" | "answer" | "ice" => {
                self.stream_message(conn, kind, text)
            }
            "join-room" => After::Room("join-room"),
            "leave-room" => After::Room("leave-room"),
            "play" => After::Room("play"),
            "pause" => After::Room("pause"),
            "seek" => After::Room("seek"),
            "set-url" => After::Room("set-url"),
            "sync" => After::Room("sync"),
            "heartbeat" => {
                let text = wire::to_text(&wire::Heartbeat {
                    kind: "heartbeat",
                    server_time: server_time(),
                });
                let mut state = self.lock();
                self.send(&mut state, conn, text);
                After::Nothing
            }
            _ => {
                self.refuse_now(conn, "unknown_type", "unknown message type", None);
                return After::Nothing;
            }
        };
        self.metrics.message(kind);
        after
    }

    /// The part of a message the cluster answers.
    async fn finish(&self, conn: ConnId, after: After) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        match after {
            After::Nothing | After::Room(_) => {}
            After::Join {
                stream,
                peer,
                rendition,
                token,
            } => {
                let want = self.cfg.max_peer_list;
                let joined = cluster
                    .join(&stream, &peer, rendition.as_deref(), token, want)
                    .await;
                if !self.joined_from_cluster(conn, &stream, &peer, joined) {
                    // Left (or closed) while the cluster answered: take it out there again.
                    cluster.leave(&stream, &peer, token).await;
                }
            }
            After::Relay {
                kind,
                stream,
                to,
                text,
            } => {
                let about = Some(kind.as_str());
                let node = match cluster.locate(&stream, &to).await {
                    Ok(node) => node,
                    Err(e) => {
                        tracing::debug!(error = %e, "signaling cluster: relay not located");
                        self.metrics.cluster("unavailable");
                        None
                    }
                };
                let envelope = cluster::Envelope {
                    s: stream,
                    p: to,
                    m: text.to_string(),
                };
                let sent = match node {
                    Some(node) => match cluster.publish(&node, &envelope).await {
                        Ok(received) => received,
                        Err(_) => {
                            self.metrics.cluster("unavailable");
                            false
                        }
                    },
                    None => false,
                };
                if sent {
                    self.metrics.relay(&kind);
                    self.metrics.cluster("relay_out");
                } else {
                    let why = "no such peer in the stream";
                    self.refuse_now(conn, "no_peer", why, about);
                }
            }
        }
    }

    /// Ends a join with the cluster's answer: the peer list, or `peer_id_taken`. False when
    /// `conn` no longer holds the peer (left or closed meanwhile).
    fn joined_from_cluster(
        &self,
        conn: ConnId,
        stream: &str,
        peer: &str,
        joined: Result<Vec<(String, Option<String>)>, cluster::JoinError>,
    ) -> bool {
        let mut state = self.lock();
        let still = state
            .conns
            .get(&conn)
            .is_some_and(|c| c.joined.get(stream).map(String::as_str) == Some(peer));
        let remote = match joined {
            Ok(remote) => remote,
            Err(cluster::JoinError::Taken) => {
                if still {
                    self.leave_here(&mut state, stream, peer, conn);
                }
                let why = "peerId in use by another connection";
                self.refuse(&mut state, conn, "peer_id_taken", why, Some("join"));
                return true;
            }
            Err(cluster::JoinError::Unavailable(e)) => {
                tracing::debug!(error = %e, "signaling cluster: join of the local peer only");
                self.metrics.cluster("unavailable");
                Vec::new()
            }
        };
        if still {
            self.peer_list(&mut state, conn, stream, peer, None, &remote);
        }
        still
    }

    /// A relay from another node for a peer of this one.
    pub(crate) fn deliver(&self, envelope: cluster::Envelope) {
        let mut state = self.lock();
        if envelope.p.is_empty() {
            // A stream event: to every peer of the stream here.
            self.metrics.cluster("event_in");
            return self.to_stream(&mut state, &envelope.s, &envelope.m.into());
        }
        let target = state
            .swarms
            .get(&envelope.s)
            .and_then(|s| s.conn_of(&envelope.p));
        match target {
            Some(conn) => {
                self.metrics.cluster("relay_in");
                self.send(&mut state, conn, envelope.m.into());
            }
            None => self.metrics.cluster("relay_in_no_peer"),
        }
    }

    /// Sends `text` to every peer of `stream` on this node.
    fn to_stream(&self, state: &mut State, stream: &str, text: &Arc<str>) {
        let Some(swarm) = state.swarms.get(stream) else {
            return;
        };
        let conns: Vec<ConnId> = swarm.conns().collect();
        for conn in conns {
            self.send(state, conn, text.clone());
        }
    }

    /// An event of `stream` (a JSON value, from Kafka's `stream.<id>.events`) to every peer of
    /// the stream, on every node of the cluster: `{"type":"stream-event","streamId","event"}`.
    /// Whether it was a JSON value for a valid stream id.
    pub async fn stream_event(&self, stream: &str, payload: &str) -> bool {
        let Ok(event) = serde_json::from_str::<&serde_json::value::RawValue>(payload) else {
            self.metrics.drop("bad_event");
            return false;
        };
        if !wire::valid_id(stream) {
            self.metrics.drop("bad_event");
            return false;
        }
        let text = wire::to_text(&wire::StreamEvent {
            kind: "stream-event",
            stream_id: stream,
            event,
        });
        self.metrics.message("stream-event");
        self.to_stream(&mut self.lock(), stream, &text);
        if let Some(cluster) = &self.cluster {
            let envelope = cluster::Envelope {
                s: stream.to_owned(),
                p: String::new(),
                m: text.to_string(),
            };
            if !cluster.is_up() {
                // Not waiting for a Redis that is away: this node's peers have it.
                self.metrics.cluster("unavailable");
                return true;
            }
            match cluster.publish_to_others(&envelope).await {
                Ok(n) => self.metrics.cluster_n("event_out", n),
                Err(e) => {
                    tracing::debug!(error = %e, "signaling cluster: stream event not fanned out");
                    self.metrics.cluster("unavailable");
                }
            }
        }
        true
    }

    /// Counts the peers that join and leave each stream from now on, for
    /// [`take_peer_counts`](Self::take_peer_counts) (off until called: nobody would take them).
    pub fn count_peers(&self) {
        self.lock().peer_counts = true;
    }

    /// Peers joined and left per stream since the last call, with the stream's peers here now
    /// (published as `signaling.peers` events).
    pub fn take_peer_counts(&self) -> Vec<crate::PeerCounts> {
        let mut state = self.lock();
        let counts = std::mem::take(&mut state.counts);
        counts
            .into_iter()
            .map(|(stream, (joined, left))| crate::PeerCounts {
                peers: state.swarms.get(&stream).map_or(0, swarms::Swarm::len),
                stream,
                joined,
                left,
            })
            .collect()
    }

    /// Peer `peer` of `stream` is another live node's now (taken while this one could not
    /// reach Redis): it leaves here, and its connection is told.
    pub(crate) fn evict(&self, stream: &str, peer: &str) {
        let mut state = self.lock();
        let Some(conn) = state.swarms.get(stream).and_then(|s| s.conn_of(peer)) else {
            return;
        };
        self.leave_here(&mut state, stream, peer, conn);
        self.metrics.cluster("evicted");
        let why = "peerId taken on another node while this one could not reach it";
        self.refuse(&mut state, conn, "peer_id_taken", why, Some("join"));
    }

    pub(crate) fn count_drop_cluster(&self, event: &str) {
        self.metrics.cluster(event);
    }

    /// Every peer of this node, for the cluster's renewal.
    pub(crate) fn local_peers(&self) -> Vec<cluster::LocalPeer> {
        let state = self.lock();
        state
            .swarms
            .iter()
            .flat_map(|(stream, swarm)| {
                swarm
                    .peers()
                    .map(move |(peer, rendition, token)| cluster::LocalPeer {
                        stream: stream.clone(),
                        peer: peer.to_owned(),
                        rendition,
                        token,
                    })
            })
            .collect()
    }

    /// Those of `peers` this node no longer holds by the same join (left since).
    pub(crate) fn gone<'a>(&self, peers: &'a [cluster::LocalPeer]) -> Vec<&'a cluster::LocalPeer> {
        let state = self.lock();
        peers
            .iter()
            .filter(|p| {
                !state
                    .swarms
                    .get(&p.stream)
                    .is_some_and(|s| s.holds(&p.peer, p.token))
            })
            .collect()
    }

    /// Parses `text` as `T`, or refuses it (`bad_message`, naming the field serde found wrong).
    fn parse<'a, T: serde::Deserialize<'a>>(
        &self,
        conn: ConnId,
        kind: &str,
        text: &'a str,
    ) -> Option<T> {
        match serde_json::from_str(text) {
            Ok(m) => Some(m),
            Err(e) => {
                self.refuse_now(conn, "bad_message", &e.to_string(), Some(kind));
                None
            }
        }
    }

    /// Refuses a message of `conn`: an `error` to it, counted by `code`.
    fn refuse(
        &self,
        state: &mut State,
        conn: ConnId,
        code: &str,
        message: &str,
        about: Option<&str>,
    ) {
        self.metrics.drop(code);
        let text = wire::to_text(&wire::Error {
            kind: "error",
            code,
            message,
            about,
        });
        self.send(state, conn, text);
    }

    fn refuse_now(&self, conn: ConnId, code: &str, message: &str, about: Option<&str>) {
        let mut state = self.lock();
        self.refuse(&mut state, conn, code, message, about);
    }

    /// Queues `text` for `conn`; a connection that cannot take it is cut and forgotten.
    fn send(&self, state: &mut State, conn: ConnId, text: Arc<str>) {
        let Some(c) = state.conns.get_mut(&conn) else {
            return;
        };
        if c.mailbox.push(text, self.cfg.max_queued) {
            self.metrics.sent.inc();
            return;
        }
        self.metrics.drop("slow");
        c.mailbox.cut();
        // Forgotten when the lock is released (`Locked`), not here.
        if !state.cut.contains(&conn) {
            state.cut.push(conn);
        }
    }

    fn lock(&self) -> Locked<'_> {
        Locked {
            hub: self,
            state: self.state.lock(),
        }
    }

    /// Members offline longer than `room_grace` leave their rooms (hosts hand over, empty rooms
    /// go). Called every second by [`spawn_sweeper`](Self::spawn_sweeper).
    pub fn sweep(&self) {
        let now = tokio::time::Instant::now();
        let mut state = self.lock();
        self.expire_members(&mut state, now);
    }

    /// Sweeps every second while the hub is alive.
    pub fn spawn_sweeper(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let hub: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(hub) = hub.upgrade() else { return };
                hub.sweep();
            }
        })
    }

    /// Streams, peers and rooms held (health and tests).
    pub fn stats(&self) -> (usize, usize, usize) {
        let state = self.lock();
        (
            state.swarms.len(),
            state.swarms.values().map(swarms::Swarm::len).sum(),
            state.rooms.len(),
        )
    }
}

#[async_trait::async_trait]
impl Engine for Hub {
    fn open(&self, viewer: &Viewer) -> (ConnId, Outbox) {
        self.connect(viewer)
    }

    async fn handle(&self, conn: ConnId, text: &str) {
        Hub::handle(self, conn, text).await;
    }

    async fn close(&self, conn: ConnId) {
        Hub::close(self, conn).await;
    }

    fn count_drop(&self, reason: &str) {
        self.metrics.drop(reason);
    }
}

#[cfg(test)]
mod tests;
