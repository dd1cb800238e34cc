//! Streams and watch rooms across edges, through the Redis every edge shares: who watches a
//! stream on any node, relays to a peer connected to another node, and rooms whose members sit
//! on different nodes.
//!
//! ```text
//!  stream:<id>:peers   HASH peerId → "<node>\t<rendition>\t<join token>"   PEXPIRE ttl,
//!                      renewed by every node for its own peers every ttl/3 (a crashed node's
//!                      entries go with its liveness, below, at once and with the key's TTL at
//!                      the latest); a leave deletes only its own join's entry
//!  signaling:nodes     ZSET node → last keep-alive in Redis's clock (ms), every 5 s; a node
//!                      silent for `node_ttl` is dead: its peers are neither listed nor relayed
//!                      to, its room members are offline since its last keep-alive
//!  signaling:node:<n>  pub/sub channel of node n: relays to its peers, and n's own keep-alive
//!                      (a subscription silent for 15 s is made again)
//!  room:<id>           HASH id, host_user_id, current_url, current_time (the position at
//!                      position_at, ms), is_playing, updated_at, members (JSON: user, token or
//!                      not, node and connection or offline since), version
//!  room:<id>:users     ZSET userId → join order
//!  user:<id>           HASH roomId → "online:<node>" | "offline"
//!                      (the three: PEXPIRE room_grace + two keep-alives, renewed by the nodes
//!                      with members in the room: a room nobody is connected to goes)
//!  signaling:rooms     pub/sub channel of every node: each room change, its new state; every
//!                      node sends it to its own members
//! ```
//!
//! Joining a stream is one script: a peer id held by another live node is refused
//! (`peer_id_taken`), else the peer is written and a random sample of the stream's live peers
//! comes back. A room change is read, changed by [`room`]'s rules and written back by a script
//! only if the room's `version` is still the one read (else read again), and the same script
//! publishes it: every node hears every room's changes in the order they were written.
//!
//! When Redis cannot be reached, every call fails fast (the store's own retry back-off) and the
//! node serves its local peers alone ([`Cluster::is_up`] says so in health and metrics); it
//! takes its peers back into Redis with the next renewal once Redis answers again. Rooms live
//! only in Redis: while it is away, room messages are refused with `unavailable` (two halves
//! of a room each with its own host would be worse).

use super::Hub;
use super::room::{self, Change, Live, Op, Refusal, Room};
use crate::Tracker;
use crate::tracker::ConnId;
use edge_kv::{KvError, RedisStore};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::{
    sync::{
        Arc, OnceLock, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

/// The zset of live nodes.
pub(crate) const NODES: &str = "signaling:nodes";
/// How often a node says it is alive.
const KEEPALIVE: Duration = Duration::from_secs(5);

/// Redis's clock in ms: liveness is judged by one clock, not by each node's.
/// (In every script below, a node seen within ARGV `node_ttl` ms of it is alive.)
pub(crate) const NOW: &str = "local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
";

const JOIN: &str = r"
local min_alive = now - tonumber(ARGV[5])
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local owner = string.match(cur, '^([^\t]*)')
  if owner ~= ARGV[3] then
    local seen = redis.call('ZSCORE', KEYS[2], owner)
    if seen and tonumber(seen) >= min_alive then return {'-taken'} end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local picked = redis.call('HRANDFIELD', KEYS[1], ARGV[6], 'WITHVALUES')
local out = {}
local alive = {}
for i = 1, #picked, 2 do
  local id, value = picked[i], picked[i + 1]
  local owner = string.match(value, '^([^\t]*)')
  if owner == ARGV[3] then
    alive[owner] = true
  elseif alive[owner] == nil then
    local seen = redis.call('ZSCORE', KEYS[2], owner)
    alive[owner] = (seen ~= false and seen ~= nil and tonumber(seen) >= min_alive)
  end
  if not alive[owner] then
    redis.call('HDEL', KEYS[1], id)
  elseif owner ~= ARGV[3] then
    out[#out + 1] = id
    out[#out + 1] = value
  end
end
return out";

/// Deletes a peer's entry if it is still this join's: this node's and this join token's (a
/// late leave never deletes a later join of the same peer id).
const LEAVE: &str = r"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local owner, token = string.match(cur, '^([^\t]*)\t[^\t]*\t([^\t]*)$')
  if owner == ARGV[2] and token == ARGV[3] then
    redis.call('HDEL', KEYS[1], ARGV[1])
  end
end
return 0";

/// Rewrites this node's peers (KEYS[i] is the hash of ARGV pair i after the first three) where
/// the entry is absent, this node's from the same join or an older one, or its owner is dead;
/// returns the 1-based indexes of the peers another live node holds now (taken while this node
/// could not reach Redis). A newer join's entry is left alone: the renewal's list was read
/// before it (the peer left and joined again meanwhile).
const RENEW: &str = r"
local node, ttl, min_alive = ARGV[1], ARGV[2], now - tonumber(ARGV[3])
local taken = {}
for i = 1, #KEYS - 1 do
  local key, peer, value = KEYS[i + 1], ARGV[2 + 2 * i], ARGV[3 + 2 * i]
  local cur = redis.call('HGET', key, peer)
  local mine, write = true, true
  if cur then
    local owner = string.match(cur, '^([^\t]*)')
    if owner ~= node then
      local seen = redis.call('ZSCORE', KEYS[1], owner)
      if seen and tonumber(seen) >= min_alive then mine = false end
    else
      local theirs = tonumber(string.match(cur, '\t([^\t]*)$') or '')
      local ours = tonumber(string.match(value, '\t([^\t]*)$'))
      if theirs and theirs > ours then write = false end
    end
  end
  if not write then
  elseif mine then
    redis.call('HSET', key, peer, value)
    redis.call('PEXPIRE', key, ttl)
  else
    taken[#taken + 1] = i
  end
end
return taken";

/// A node's keep-alive: its score is Redis's time; nodes gone for an hour leave the zset; and
/// an empty message on its own channel, which its subscriber hearing proves it alive.
const ALIVE: &str = r#"
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 3600000)
redis.call('PUBLISH', ARGV[2], '{"s":"","p":"","m":""}')
return now"#;

/// A peer of this node, as the renewal writes it.
pub(crate) struct LocalPeer {
    pub stream: String,
    pub peer: String,
    pub rendition: Option<String>,
    pub token: u64,
}

/// A peer's entry in `stream:<id>:peers`: `<node>\t<rendition>\t<join token>`.
fn entry(node: &str, rendition: Option<&str>, token: u64) -> String {
    format!("{node}\t{}\t{token}", rendition.unwrap_or(""))
}

/// The rendition of an entry.
fn entry_rendition(value: &str) -> Option<String> {
    let rendition = value.split('\t').nth(1).unwrap_or("");
    (!rendition.is_empty()).then(|| rendition.to_owned())
}

/// A relay for a peer on another node.
#[derive(Serialize, Deserialize)]
pub(crate) struct Envelope {
    /// Stream id.
    pub s: String,
    /// Peer id on the receiving node.
    pub p: String,
    /// The message as the peer gets it.
    pub m: String,
}

/// This node's view of the cluster.
pub struct Cluster {
    pub(crate) store: Arc<RedisStore>,
    pub(crate) node: String,
    /// TTL of a stream's peer hash (and of a tracker swarm's keys).
    pub(crate) ttl: Duration,
    /// A node silent for this long is dead.
    pub(crate) node_ttl: Duration,
    /// The tracker sharing this cluster, once attached.
    tracker: OnceLock<Weak<Tracker>>,
    pub(crate) tracker_scripts: crate::tracker::cluster::Scripts,
    join: redis::Script,
    leave: redis::Script,
    renew: redis::Script,
    commit_room: redis::Script,
    alive: redis::Script,
    /// The subscriber is connected.
    subscribed: AtomicBool,
    /// The last call got an answer.
    answering: AtomicBool,
    /// A renewal Redis did not answer (it had just come back, say): the keep-alive's next
    /// tick renews, not the next period.
    owed: AtomicBool,
}

/// Why a join through the cluster failed.
pub(crate) enum JoinError {
    /// Another live node holds the peer id.
    Taken,
    /// Redis did not answer.
    Unavailable(KvError),
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Cluster {
    /// Node `node` of the cluster on `store`.
    pub fn new(store: Arc<RedisStore>, node: impl Into<String>) -> Self {
        Self {
            store,
            node: node.into(),
            ttl: Duration::from_secs(60),
            node_ttl: Duration::from_secs(15),
            join: redis::Script::new(&format!("{NOW}{JOIN}")),
            leave: redis::Script::new(LEAVE),
            renew: redis::Script::new(&format!("{NOW}{RENEW}")),
            alive: redis::Script::new(&format!("{NOW}{ALIVE}")),
            commit_room: redis::Script::new(COMMIT_ROOM),
            subscribed: AtomicBool::new(false),
            answering: AtomicBool::new(true),
            owed: AtomicBool::new(false),
            tracker: OnceLock::new(),
            tracker_scripts: crate::tracker::cluster::Scripts::new(),
        }
    }

    /// Shares this cluster with `tracker`: relays for its peers are delivered to it, and its
    /// swarms renewed with the keep-alive. One tracker per cluster; false if one is already.
    pub(crate) fn attach_tracker(&self, tracker: Weak<Tracker>) -> bool {
        self.tracker.set(tracker).is_ok()
    }

    fn tracker(&self) -> Option<Arc<Tracker>> {
        self.tracker.get().and_then(Weak::upgrade)
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Whether this node is connected to the cluster (else it serves its local peers alone).
    pub fn is_up(&self) -> bool {
        self.subscribed.load(Ordering::Relaxed) && self.answering.load(Ordering::Relaxed)
    }

    fn peers_key(stream: &str) -> String {
        format!("stream:{stream}:peers")
    }

    fn channel(node: &str) -> String {
        format!("signaling:node:{node}")
    }

    pub(crate) fn answered<T>(&self, r: Result<T, KvError>) -> Result<T, KvError> {
        match &r {
            Ok(_) => {
                if !self.answering.swap(true, Ordering::Relaxed) {
                    tracing::info!(node = %self.node, "signaling cluster: redis answers again");
                }
            }
            Err(e) => {
                if self.answering.swap(false, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "signaling cluster: redis unreachable; serving local peers only");
                }
            }
        }
        r
    }

    /// Writes peer `peer` of `stream` as this node's, and samples up to `want` live peers of
    /// other nodes: (peer id, rendition).
    pub(crate) async fn join(
        &self,
        stream: &str,
        peer: &str,
        rendition: Option<&str>,
        token: u64,
        want: usize,
    ) -> Result<Vec<(String, Option<String>)>, JoinError> {
        let value = entry(&self.node, rendition, token);
        // Twice as many as wanted: some are this node's own (listed from memory).
        let count = want.saturating_mul(2).saturating_add(1);
        let key = Self::peers_key(stream);
        let r = self
            .store
            .run(async |mut c| {
                self.join
                    .key(&key)
                    .key(NODES)
                    .arg(peer)
                    .arg(&value)
                    .arg(&self.node)
                    .arg(millis(self.ttl))
                    .arg(millis(self.node_ttl))
                    .arg(count)
                    .invoke_async::<Vec<String>>(&mut c)
                    .await
            })
            .await;
        let flat = self.answered(r).map_err(JoinError::Unavailable)?;
        if flat.first().is_some_and(|f| f == "-taken") {
            return Err(JoinError::Taken);
        }
        Ok(flat
            .chunks_exact(2)
            .filter(|pair| pair[0] != peer)
            .map(|pair| (pair[0].clone(), entry_rendition(&pair[1])))
            .collect())
    }

    /// Removes peer `peer` of `stream` if it is still this node's join `token`.
    pub(crate) async fn leave(&self, stream: &str, peer: &str, token: u64) {
        let key = Self::peers_key(stream);
        let r = self
            .store
            .run(async |mut c| {
                self.leave
                    .key(&key)
                    .arg(peer)
                    .arg(&self.node)
                    .arg(token)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await;
        let _ = self.answered(r);
    }

    /// The live node other than this one holding peer `peer` of `stream`.
    pub(crate) async fn locate(&self, stream: &str, peer: &str) -> Result<Option<String>, KvError> {
        let key = Self::peers_key(stream);
        let r = self
            .store
            .run(async |mut c| {
                redis::cmd("HGET")
                    .arg(&key)
                    .arg(peer)
                    .query_async::<Option<String>>(&mut c)
                    .await
            })
            .await;
        let value = self.answered(r)?;
        Ok(value
            .and_then(|v| v.split_once('\t').map(|(node, _)| node.to_owned()))
            .filter(|node| *node != self.node))
    }

    /// Publishes `envelope` to `node`; whether a node received it.
    pub(crate) async fn publish(&self, node: &str, envelope: &Envelope) -> Result<bool, KvError> {
        let payload =
            serde_json::to_string(envelope).map_err(|e| KvError::Invalid(e.to_string()))?;
        let channel = Self::channel(node);
        let r = self
            .store
            .run(async |mut c| {
                redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg(&payload)
                    .query_async::<i64>(&mut c)
                    .await
            })
            .await;
        Ok(self.answered(r)? > 0)
    }

    /// Publishes `envelope` to every other node seen alive in the last two `node_ttl`s; how
    /// many received it.
    pub(crate) async fn publish_to_others(&self, envelope: &Envelope) -> Result<u64, KvError> {
        let payload =
            serde_json::to_string(envelope).map_err(|e| KvError::Invalid(e.to_string()))?;
        let r = self
            .store
            .run(async |mut c| {
                // By this node's clock, with a margin: a filter, not the liveness rule.
                let since = super::server_time().saturating_sub(millis(self.node_ttl * 2));
                redis::cmd("ZRANGEBYSCORE")
                    .arg(NODES)
                    .arg(since)
                    .arg("+inf")
                    .query_async::<Vec<String>>(&mut c)
                    .await
            })
            .await;
        let nodes = self.answered(r)?;
        let mut pipe = redis::pipe();
        for node in nodes.iter().filter(|n| **n != self.node) {
            pipe.cmd("PUBLISH").arg(Self::channel(node)).arg(&payload);
        }
        let r = self
            .store
            .run(async |mut c| pipe.query_async::<Vec<u64>>(&mut c).await)
            .await;
        Ok(self.answered(r)?.iter().sum())
    }

    /// Says this node is alive, and writes `peers` (stream, peer, rendition) again with a fresh
    /// TTL (so they come back after a Redis restart or outage), unless another live node holds
    /// one now: those are returned (stream, peer), for the hub to evict.
    async fn renew(&self, peers: &[LocalPeer]) -> Result<Vec<(String, String)>, KvError> {
        let r = self
            .store
            .run(async |mut c| {
                self.alive
                    .key(NODES)
                    .arg(&self.node)
                    .arg(Self::channel(&self.node))
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await;
        self.answered(r)?;
        let mut taken = Vec::new();
        for chunk in peers.chunks(500) {
            let mut call = self.renew.prepare_invoke();
            call.key(NODES)
                .arg(&self.node)
                .arg(millis(self.ttl))
                .arg(millis(self.node_ttl));
            for p in chunk {
                let value = entry(&self.node, p.rendition.as_deref(), p.token);
                call.key(Self::peers_key(&p.stream)).arg(&p.peer).arg(value);
            }
            let r = self
                .store
                .run(async |mut c| call.invoke_async::<Vec<usize>>(&mut c).await)
                .await;
            for i in self.answered(r)? {
                if let Some(p) = i.checked_sub(1).and_then(|i| chunk.get(i)) {
                    taken.push((p.stream.clone(), p.peer.clone()));
                }
            }
        }
        Ok(taken)
    }

    /// Renews `hub`'s peers (evicting those another node holds now), then the tracker's
    /// swarms: after the keep-alive, which makes this node alive again after a Redis restart
    /// (the other nodes drop the counts of a node they do not see alive).
    /// Whether every write was answered (else the keep-alive tries again at its next tick).
    async fn renew_for(&self, hub: &Weak<Hub>) -> bool {
        let Some(peers) = hub.upgrade().map(|h| h.local_peers()) else {
            return true;
        };
        let renewed = self.renew(&peers).await;
        let mut answered = renewed.is_ok();
        if answered && let Some(tracker) = self.tracker() {
            answered = tracker.renew(self).await;
        }
        if let Ok(taken) = renewed
            && let Some(h) = hub.upgrade()
        {
            for (stream, peer) in taken {
                h.evict(&stream, &peer);
            }
            // Peers that left while the renewal ran may have been written back after their
            // leave deleted them: delete them again (only if still that join's).
            let gone: Vec<(String, String, u64)> = h
                .gone(&peers)
                .into_iter()
                .map(|p| (p.stream.clone(), p.peer.clone(), p.token))
                .collect();
            drop(h);
            for (stream, peer, token) in gone {
                self.leave(&stream, &peer, token).await;
            }
        }
        answered
    }

    /// Starts the node's tasks for `hub`: the subscriber of its channel (relays from other
    /// nodes), the keep-alive that proves the node alive and renews its peers, and the upkeep
    /// of its rooms (and the tracker's sweep of the swarm list). All end when the hub is
    /// dropped. The rooms' upkeep has a task of its own:
    /// sweeping many rooms through a slow Redis must never delay the keep-alive (the other
    /// nodes would take this one for dead).
    pub(crate) fn spawn(self: &Arc<Self>, hub: Weak<Hub>) {
        let (cluster, subscriber_hub) = (self.clone(), hub.clone());
        tokio::spawn(async move { cluster.subscribe(subscriber_hub).await });
        let (cluster, rooms_hub) = (self.clone(), hub.clone());
        tokio::spawn(async move { cluster.keep_alive(hub).await });
        let cluster = self.clone();
        tokio::spawn(async move { cluster.room_upkeep(rooms_hub).await });
    }

    async fn subscribe(self: Arc<Self>, hub: Weak<Hub>) {
        use futures::StreamExt;
        let mut backoff = Duration::from_millis(250);
        let tracker_channel = crate::tracker::cluster::channel(&self.node);
        loop {
            if hub.strong_count() == 0 {
                return;
            }
            let subscribed = match self.store.pubsub().await {
                Ok(mut ps) => {
                    let subscribe = async {
                        ps.subscribe(Self::channel(&self.node)).await?;
                        ps.subscribe(crate::tracker::cluster::channel(&self.node))
                            .await?;
                        ps.subscribe(ROOMS).await
                    };
                    match tokio::time::timeout(Duration::from_secs(5), subscribe).await {
                        Ok(Ok(())) => Ok(ps),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err("subscribe timed out".to_owned()),
                    }
                }
                Err(e) => Err(e.to_string()),
            };
            match subscribed {
                Ok(ps) => {
                    backoff = Duration::from_millis(250);
                    if !self.subscribed.swap(true, Ordering::Relaxed) {
                        tracing::info!(node = %self.node, "signaling cluster: subscribed");
                    }
                    // Peers joined while Redis was away are written now (or at the next
                    // keep-alive, if Redis does not answer yet).
                    if !self.renew_for(&hub).await {
                        self.owed.store(true, Ordering::Relaxed);
                    }
                    let mut messages = ps.into_on_message();
                    // The keep-alive publishes to this channel every 5 s: a subscription that
                    // hears nothing for three of them is dead (a half-open connection) and is
                    // made again.
                    while let Ok(Some(msg)) =
                        tokio::time::timeout(KEEPALIVE * 3, messages.next()).await
                    {
                        let Some(h) = hub.upgrade() else { return };
                        if msg.get_channel_name() == tracker_channel {
                            match (self.tracker(), msg.get_payload::<String>().ok()) {
                                (Some(t), Some(p)) => t.deliver(&p),
                                (None, _) => {}
                                (Some(t), None) => t.count_drop_cluster("bad_envelope"),
                            }
                            continue;
                        }
                        if msg.get_channel_name() == ROOMS {
                            match msg
                                .get_payload::<String>()
                                .ok()
                                .and_then(|p| serde_json::from_str::<RoomBroadcast>(&p).ok())
                            {
                                Some(b) => h.deliver_room(b),
                                None => h.count_drop_cluster("bad_envelope"),
                            }
                            continue;
                        }
                        match msg
                            .get_payload::<String>()
                            .ok()
                            .and_then(|p| serde_json::from_str::<Envelope>(&p).ok())
                        {
                            Some(envelope) if envelope.s.is_empty() => {}
                            Some(envelope) => h.deliver(envelope),
                            None => h.count_drop_cluster("bad_envelope"),
                        }
                    }
                    if self.subscribed.swap(false, Ordering::Relaxed) {
                        tracing::warn!(node = %self.node, "signaling cluster: subscription lost; serving local peers only");
                    }
                }
                Err(error) => {
                    tracing::debug!(%error, "signaling cluster: cannot subscribe");
                    self.subscribed.store(false, Ordering::Relaxed);
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn keep_alive(self: Arc<Self>, hub: Weak<Hub>) {
        let mut every = tokio::time::interval(KEEPALIVE);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let renew_every = (self.ttl.as_secs() / 3 / KEEPALIVE.as_secs()).max(1);
        let mut ticks = 0u64;
        loop {
            every.tick().await;
            let Some(h) = hub.upgrade() else { return };
            h.cluster_up();
            drop(h);
            if self.owed.swap(false, Ordering::Relaxed) || ticks.is_multiple_of(renew_every) {
                if !self.renew_for(&hub).await {
                    self.owed.store(true, Ordering::Relaxed);
                }
            } else if self.renew(&[]).await.is_err() {
                // Redis may come back without what this node wrote (a restart), or without
                // a leave it missed meanwhile: the next tick renews.
                self.owed.store(true, Ordering::Relaxed);
            }
            ticks += 1;
        }
    }

    /// Every keep-alive period, this node's rooms: TTLs renewed, members swept.
    async fn room_upkeep(self: Arc<Self>, hub: Weak<Hub>) {
        let mut every = tokio::time::interval(KEEPALIVE);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let Some(h) = hub.upgrade() else { return };
            h.room_upkeep(&self).await;
            drop(h);
            if let Some(tracker) = self.tracker() {
                tracker.sweep(&self).await;
            }
        }
    }
}

/// Every node's channel for room changes: each delivers a change to its own members.
const ROOMS: &str = "signaling:rooms";

/// Writes a room's new state if its version is still the one read (compare-and-set), with
/// its member set and each member's `user:<id>` entry, and publishes the change on
/// `signaling:rooms`; 0 when somebody wrote in between.
///
/// KEYS: `room:<id>`, `room:<id>:users`, then `user:<u>` of every member before or after.
/// ARGV: expected version, ttl (ms), the change to publish, the room id, n, n field/value
/// pairs (n = 0: the room is gone), then per user key: user, its entry (`-`: gone), its
/// join order.
const COMMIT_ROOM: &str = r"
local version = redis.call('HGET', KEYS[1], 'version') or '0'
if version ~= ARGV[1] then return 0 end
local ttl, room, n = ARGV[2], ARGV[4], tonumber(ARGV[5])
redis.call('DEL', KEYS[2])
if n == 0 then
  -- The room is gone, its version stays (a tombstone for the room's TTL): a writer that read
  -- the room before it went must not pass the check on a room made again since.
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'version', tonumber(ARGV[1]) + 1)
  redis.call('PEXPIRE', KEYS[1], ttl)
else
  local fields = {}
  for i = 1, 2 * n do fields[i] = ARGV[5 + i] end
  redis.call('HSET', KEYS[1], unpack(fields))
  redis.call('PEXPIRE', KEYS[1], ttl)
end
local a = 6 + 2 * n
for k = 3, #KEYS do
  local user, entry, order = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  a = a + 3
  if entry == '-' then
    redis.call('HDEL', KEYS[k], room)
  else
    redis.call('ZADD', KEYS[2], order, user)
    redis.call('HSET', KEYS[k], room, entry)
    redis.call('PEXPIRE', KEYS[k], ttl)
  end
end
if n > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
redis.call('PUBLISH', ARGV[3], ARGV[#ARGV])
return 1";

/// A room's change as every node hears it.
#[derive(Serialize, Deserialize)]
pub(crate) struct RoomBroadcast {
    pub room: String,
    pub event: String,
    pub by: String,
    /// The new state; `None`: the room is gone.
    pub state: Option<Room>,
}

/// Why a room change failed.
pub(crate) enum RoomError {
    Refused(Refusal),
    Unavailable(KvError),
}

/// Rooms outlive a member's grace and two missed keep-alives of the nodes in them.
fn room_ttl(grace: Duration) -> Duration {
    grace + KEEPALIVE * 2
}

fn room_key(room: &str) -> String {
    format!("room:{room}")
}

/// A room's hash: the seeds' fields (`host_user_id`, `current_url`, `current_time` — the
/// position at `position_at` — `is_playing`) and the members with their connections.
fn room_fields(room_id: &str, room: &Room, now: u64) -> Vec<(&'static str, String)> {
    let members = serde_json::to_string(&room.members).expect("members serialise");
    vec![
        ("id", room_id.to_owned()),
        ("host_user_id", room.host.clone()),
        ("current_url", room.url.clone()),
        ("current_time", room.position.to_string()),
        ("position_at", room.at.to_string()),
        ("is_playing", room.playing.to_string()),
        ("updated_at", now.to_string()),
        ("members", members),
        ("version", room.version.to_string()),
    ]
}

/// A room's hash as read: the room (`None`: none, or only the tombstone of one that went) and
/// the version a write must find.
fn room_from_fields(mut f: HashMap<String, String>) -> Result<(Option<Room>, u64), KvError> {
    let bad = |field: &str| KvError::Invalid(format!("room hash: bad or missing `{field}`"));
    if !f.contains_key("members") {
        let version = f
            .get("version")
            .map_or(Ok(0), |v| v.parse().map_err(|_| bad("version")))?;
        return Ok((None, version));
    }
    let mut take = |field: &'static str| f.remove(field).ok_or_else(|| bad(field));
    let members = serde_json::from_str(&take("members")?).map_err(|_| bad("members"))?;
    let room = Room {
        host: take("host_user_id")?,
        url: take("current_url")?,
        position: take("current_time")?
            .parse()
            .map_err(|_| bad("current_time"))?,
        at: take("position_at")?
            .parse()
            .map_err(|_| bad("position_at"))?,
        playing: take("is_playing")? == "true",
        members,
        version: take("version")?.parse().map_err(|_| bad("version"))?,
    };
    let version = room.version;
    Ok((Some(room), version))
}

impl Cluster {
    /// Room `room_id` as stored, and every node's last keep-alive (ms).
    async fn read_room_and_nodes(
        &self,
        room_id: &str,
    ) -> Result<((Option<Room>, u64), HashMap<String, u64>, u64), KvError> {
        let key = room_key(room_id);
        let r = self
            .store
            .run(async |mut c| {
                redis::pipe()
                    .cmd("HGETALL")
                    .arg(&key)
                    .cmd("ZRANGE")
                    .arg(NODES)
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES")
                    .cmd("TIME")
                    .query_async::<(HashMap<String, String>, Vec<(String, f64)>, (u64, u64))>(
                        &mut c,
                    )
                    .await
            })
            .await;
        let (fields, nodes, (secs, micros)) = self.answered(r)?;
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "scores are ms timestamps"
        )]
        let seen = nodes.into_iter().map(|(n, t)| (n, t as u64)).collect();
        let now = secs.saturating_mul(1000).saturating_add(micros / 1000);
        Ok((room_from_fields(fields)?, seen, now))
    }

    /// Room `room_id` as stored.
    pub(crate) async fn read_room(&self, room_id: &str) -> Result<Option<Room>, KvError> {
        Ok(self.read_room_and_nodes(room_id).await?.0.0)
    }

    /// Applies `op` to room `room_id` in Redis: read, changed by the rules, written back if
    /// nobody wrote in between (else again), published to every node. `open` says which of
    /// this node's connections are open; `now` is the room clock.
    pub(crate) async fn update_room(
        &self,
        room_id: &str,
        op: &Op,
        grace: Duration,
        open: Option<&(dyn Fn(ConnId) -> bool + Sync)>,
        now: &(dyn Fn() -> u64 + Sync),
    ) -> Result<Option<Change>, RoomError> {
        for _ in 0..16 {
            let ((mut room, read), seen, redis_now) = self
                .read_room_and_nodes(room_id)
                .await
                .map_err(RoomError::Unavailable)?;
            let before: Vec<String> = room
                .iter()
                .flat_map(|r| r.members.iter().map(|m| m.user.clone()))
                .collect();
            let t = now();
            let live = Live {
                own: self.node.clone(),
                seen,
                // Keep-alives are in Redis's time.
                min_alive: redis_now.saturating_sub(millis(self.node_ttl)),
                open,
            };
            let Some(change) = room::apply(&mut room, op, &live, t).map_err(RoomError::Refused)?
            else {
                return Ok(None);
            };
            if let Some(r) = &mut room {
                r.version = read + 1;
            }
            let written = self
                .commit_room(room_id, read, room, &before, &change, t, grace)
                .await
                .map_err(RoomError::Unavailable)?;
            if written {
                return Ok(Some(change));
            }
        }
        let why = "the room changed under every attempt";
        Err(RoomError::Unavailable(KvError::Unavailable(why.into())))
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "the parts of one compare-and-set"
    )]
    async fn commit_room(
        &self,
        room_id: &str,
        read: u64,
        room: Option<Room>,
        before: &[String],
        change: &Change,
        now: u64,
        grace: Duration,
    ) -> Result<bool, KvError> {
        let ttl = millis(room_ttl(grace));
        let mut call = self.commit_room.prepare_invoke();
        call.key(room_key(room_id))
            .key(format!("room:{room_id}:users"))
            .arg(read)
            .arg(ttl)
            .arg(ROOMS)
            .arg(room_id);
        let fields = room.as_ref().map(|r| room_fields(room_id, r, now));
        call.arg(fields.as_ref().map_or(0, Vec::len));
        for (field, value) in fields.iter().flatten() {
            call.arg(*field).arg(value);
        }
        let mut users: Vec<&str> = before.iter().map(String::as_str).collect();
        for m in room.iter().flat_map(|r| &r.members) {
            if !users.contains(&m.user.as_str()) {
                users.push(&m.user);
            }
        }
        for user in &users {
            call.key(format!("user:{user}")).arg(*user);
            let order = room
                .as_ref()
                .and_then(|r| r.members.iter().position(|m| m.user == *user));
            match order.and_then(|i| Some((i, room.as_ref()?.members.get(i)?))) {
                Some((i, m)) => {
                    let entry = m
                        .at
                        .as_ref()
                        .map_or_else(|| "offline".to_owned(), |at| format!("online:{}", at.node));
                    call.arg(entry).arg(i);
                }
                None => {
                    call.arg("-").arg(0);
                }
            }
        }
        let broadcast = RoomBroadcast {
            room: room_id.to_owned(),
            event: change.event.to_owned(),
            by: change.by.clone(),
            state: room,
        };
        let payload =
            serde_json::to_string(&broadcast).map_err(|e| KvError::Invalid(e.to_string()))?;
        call.arg(payload);
        let r = self
            .store
            .run(async |mut c| call.invoke_async::<i64>(&mut c).await)
            .await;
        Ok(self.answered(r)? == 1)
    }

    /// Renews the TTLs of rooms this node has members in, and of those members' entries.
    pub(crate) async fn touch_rooms(&self, rooms: &[(String, Vec<String>)], grace: Duration) {
        let ttl = millis(room_ttl(grace));
        for chunk in rooms.chunks(200) {
            let mut pipe = redis::pipe();
            for (room, users) in chunk {
                if users.is_empty() {
                    continue;
                }
                pipe.cmd("PEXPIRE").arg(room_key(room)).arg(ttl).ignore();
                pipe.cmd("PEXPIRE")
                    .arg(format!("room:{room}:users"))
                    .arg(ttl)
                    .ignore();
                for user in users {
                    pipe.cmd("PEXPIRE")
                        .arg(format!("user:{user}"))
                        .arg(ttl)
                        .ignore();
                }
            }
            let r = self
                .store
                .run(async |mut c| pipe.query_async::<()>(&mut c).await)
                .await;
            if self.answered(r).is_err() {
                return;
            }
        }
    }
}
