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

mod rooms;
mod swarms;
pub(crate) mod wire;

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
}

impl Default for SignalingConfig {
    fn default() -> Self {
        Self {
            max_streams: 100_000,
            max_swarm_peers: 1000,
            max_peer_list: 50,
            max_have: 256,
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
}

#[derive(Default)]
struct State {
    next_conn: ConnId,
    conns: HashMap<ConnId, Conn>,
    swarms: HashMap<String, swarms::Swarm>,
    rooms: HashMap<String, rooms::Room>,
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

/// Milliseconds since the Unix epoch (the `serverTime` clients correct their drift with).
fn server_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Hub {
    /// An empty hub.
    pub fn new(cfg: SignalingConfig, metrics: &Metrics) -> Self {
        Self {
            cfg,
            state: Mutex::new(State::default()),
            metrics: metrics.protocol("signaling"),
        }
    }

    /// Registers a connection of `viewer`; its session sends what arrives in the outbox.
    pub fn connect(&self, viewer: &Viewer) -> (ConnId, Outbox) {
        let (mailbox, outbox) = Mailbox::new(self.cfg.outbox);
        let mut state = self.state.lock();
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
    /// (for `room_grace`).
    pub fn disconnect(&self, conn: ConnId) {
        let mut state = self.state.lock();
        self.forget(&mut state, conn);
    }

    fn forget(&self, state: &mut State, conn: ConnId) {
        let Some(c) = state.conns.remove(&conn) else {
            return;
        };
        for (stream, peer) in c.joined {
            self.leave_stream(state, &stream, &peer, conn);
        }
        let now = tokio::time::Instant::now();
        for (room, user) in c.rooms {
            self.go_offline(state, &room, &user, conn, now);
        }
        self.metrics.connections.set(state.conns.len() as i64);
    }

    /// Handles one text frame from `conn`.
    pub fn handle(&self, conn: ConnId, text: &str) {
        let kind = match serde_json::from_str::<wire::Typed<'_>>(text) {
            Ok(wire::Typed { kind: Some(kind) }) => kind,
            Ok(wire::Typed { kind: None }) => {
                return self.refuse_now(conn, "bad_message", "a message needs a `type`", None);
            }
            Err(e) => return self.refuse_now(conn, "bad_json", &e.to_string(), None),
        };
        let kind: &str = &kind;
        let known = match kind {
            "join" | "peers" | "have" | "leave" | "offer" | "answer" | "ice" => {
                self.stream_message(conn, kind, text)
            }
            "join-room" | "leave-room" | "play" | "pause" | "seek" | "set-url" | "sync" => {
                self.room_message(conn, kind, text)
            }
            "heartbeat" => {
                let text = wire::to_text(&wire::Heartbeat {
                    kind: "heartbeat",
                    server_time: server_time(),
                });
                let mut state = self.state.lock();
                self.send(&mut state, conn, text);
                true
            }
            _ => false,
        };
        if known {
            self.metrics.message(kind);
        } else {
            self.refuse_now(conn, "unknown_type", "unknown message type", None);
        }
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
        let mut state = self.state.lock();
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
        self.forget(state, conn);
    }

    /// Members offline longer than `room_grace` leave their rooms (hosts hand over, empty rooms
    /// go). Called every second by [`spawn_sweeper`](Self::spawn_sweeper).
    pub fn sweep(&self) {
        let now = tokio::time::Instant::now();
        let mut state = self.state.lock();
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
        let state = self.state.lock();
        (
            state.swarms.len(),
            state.swarms.values().map(swarms::Swarm::len).sum(),
            state.rooms.len(),
        )
    }
}

impl Engine for Hub {
    fn open(&self, viewer: &Viewer) -> (ConnId, Outbox) {
        self.connect(viewer)
    }

    fn handle(&self, conn: ConnId, text: &str) {
        Hub::handle(self, conn, text);
    }

    fn close(&self, conn: ConnId) {
        self.disconnect(conn);
    }

    fn count_drop(&self, reason: &str) {
        self.metrics.drop(reason);
    }
}

#[cfg(test)]
mod tests;
