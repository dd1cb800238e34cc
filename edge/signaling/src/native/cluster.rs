//! Streams across edges, through the Redis every edge shares: who watches a stream on any node,
//! and relays to a peer connected to another node.
//!
//! ```text
//!  stream:<id>:peers   HASH peerId → "<node>\t<rendition>"   PEXPIRE ttl, renewed by every
//!                      node for its own peers every ttl/3 (a crashed node's entries go with
//!                      its liveness, below, at once and with the key's TTL at the latest)
//!  signaling:nodes     ZSET node → last keep-alive (ms), every 5 s; a node silent for
//!                      `node_ttl` is dead: its peers are neither listed nor relayed to
//!  signaling:node:<n>  pub/sub channel of node n: relays to its peers, and n's own keep-alive
//!                      (a subscription silent for 15 s is made again)
//! ```
//!
//! Joining is one script: a peer id held by another live node is refused (`peer_id_taken`),
//! else the peer is written and a random sample of the stream's live peers comes back. When
//! Redis cannot be reached, every call fails fast (the store's own retry back-off) and the node
//! serves its local peers alone ([`Cluster::is_up`] says so in health and metrics); it takes
//! its peers back into Redis with the next renewal once Redis answers again.

use super::{Hub, server_time};
use edge_kv::{KvError, RedisStore};
use serde::{Deserialize, Serialize};
use std::{
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

/// The zset of live nodes.
const NODES: &str = "signaling:nodes";
/// How often a node says it is alive.
const KEEPALIVE: Duration = Duration::from_secs(5);

const JOIN: &str = r"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local owner = string.match(cur, '^([^\t]*)')
  if owner ~= ARGV[3] then
    local seen = redis.call('ZSCORE', KEYS[2], owner)
    if seen and tonumber(seen) >= tonumber(ARGV[5]) then return {'-taken'} end
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
    alive[owner] = (seen ~= false and seen ~= nil and tonumber(seen) >= tonumber(ARGV[5]))
  end
  if not alive[owner] then
    redis.call('HDEL', KEYS[1], id)
  elseif owner ~= ARGV[3] then
    out[#out + 1] = id
    out[#out + 1] = value
  end
end
return out";

const LEAVE: &str = r"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and string.match(cur, '^([^\t]*)') == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0";

/// Rewrites this node's peers (KEYS[i] is the hash of ARGV pair i after the first three) where
/// the entry is absent, already this node's, or its owner is dead; returns the 1-based indexes
/// of the peers another live node holds now (taken while this node could not reach Redis).
const RENEW: &str = r"
local node, ttl, min_alive = ARGV[1], ARGV[2], tonumber(ARGV[3])
local taken = {}
for i = 1, #KEYS - 1 do
  local key, peer, value = KEYS[i + 1], ARGV[2 + 2 * i], ARGV[3 + 2 * i]
  local cur = redis.call('HGET', key, peer)
  local mine = true
  if cur then
    local owner = string.match(cur, '^([^\t]*)')
    if owner ~= node then
      local seen = redis.call('ZSCORE', KEYS[1], owner)
      if seen and tonumber(seen) >= min_alive then mine = false end
    end
  end
  if mine then
    redis.call('HSET', key, peer, value)
    redis.call('PEXPIRE', key, ttl)
  else
    taken[#taken + 1] = i
  end
end
return taken";

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
    store: Arc<RedisStore>,
    node: String,
    /// TTL of a stream's peer hash.
    ttl: Duration,
    /// A node silent for this long is dead.
    node_ttl: Duration,
    join: redis::Script,
    leave: redis::Script,
    renew: redis::Script,
    /// The subscriber is connected.
    subscribed: AtomicBool,
    /// The last call got an answer.
    answering: AtomicBool,
}

/// Why a join through the cluster failed.
pub(crate) enum JoinError {
    /// Another live node holds the peer id.
    Taken,
    /// Redis did not answer.
    Unavailable(KvError),
}

fn millis(d: Duration) -> u64 {
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
            join: redis::Script::new(JOIN),
            leave: redis::Script::new(LEAVE),
            renew: redis::Script::new(RENEW),
            subscribed: AtomicBool::new(false),
            answering: AtomicBool::new(true),
        }
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

    fn answered<T>(&self, r: Result<T, KvError>) -> Result<T, KvError> {
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
        want: usize,
    ) -> Result<Vec<(String, Option<String>)>, JoinError> {
        let value = format!("{}\t{}", self.node, rendition.unwrap_or(""));
        let min_alive = server_time().saturating_sub(millis(self.node_ttl));
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
                    .arg(min_alive)
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
            .map(|pair| {
                let rendition = pair[1].split_once('\t').map(|(_, r)| r).unwrap_or("");
                let rendition = (!rendition.is_empty()).then(|| rendition.to_owned());
                (pair[0].clone(), rendition)
            })
            .collect())
    }

    /// Removes peer `peer` of `stream` if it is still this node's.
    pub(crate) async fn leave(&self, stream: &str, peer: &str) {
        let key = Self::peers_key(stream);
        let r = self
            .store
            .run(async |mut c| {
                self.leave
                    .key(&key)
                    .arg(peer)
                    .arg(&self.node)
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

    /// Says this node is alive, and writes `peers` (stream, peer, rendition) again with a fresh
    /// TTL (so they come back after a Redis restart or outage), unless another live node holds
    /// one now: those are returned (stream, peer), for the hub to evict.
    async fn renew(
        &self,
        peers: &[(String, String, Option<String>)],
    ) -> Result<Vec<(String, String)>, KvError> {
        let now = server_time();
        let r = self
            .store
            .run(async |mut c| {
                let mut pipe = redis::pipe();
                pipe.cmd("ZADD")
                    .arg(NODES)
                    .arg(now)
                    .arg(&self.node)
                    .ignore();
                // Heard by this node's own subscriber: proof that its subscription lives.
                pipe.cmd("PUBLISH")
                    .arg(Self::channel(&self.node))
                    .arg(r#"{"s":"","p":"","m":""}"#)
                    .ignore();
                // Nodes gone for an hour leave the zset.
                pipe.cmd("ZREMRANGEBYSCORE")
                    .arg(NODES)
                    .arg("-inf")
                    .arg(now.saturating_sub(3_600_000))
                    .ignore();
                pipe.query_async::<()>(&mut c).await
            })
            .await;
        self.answered(r)?;
        let min_alive = now.saturating_sub(millis(self.node_ttl));
        let mut taken = Vec::new();
        for chunk in peers.chunks(500) {
            let mut call = self.renew.prepare_invoke();
            call.key(NODES)
                .arg(&self.node)
                .arg(millis(self.ttl))
                .arg(min_alive);
            for (stream, peer, rendition) in chunk {
                let value = format!("{}\t{}", self.node, rendition.as_deref().unwrap_or(""));
                call.key(Self::peers_key(stream)).arg(peer).arg(value);
            }
            let r = self
                .store
                .run(async |mut c| call.invoke_async::<Vec<usize>>(&mut c).await)
                .await;
            for i in self.answered(r)? {
                if let Some((stream, peer, _)) = i.checked_sub(1).and_then(|i| chunk.get(i)) {
                    taken.push((stream.clone(), peer.clone()));
                }
            }
        }
        Ok(taken)
    }

    /// Renews `hub`'s peers; evicts those another node holds now.
    async fn renew_for(&self, hub: &Weak<Hub>) {
        let Some(peers) = hub.upgrade().map(|h| h.local_peers()) else {
            return;
        };
        if let Ok(taken) = self.renew(&peers).await
            && let Some(h) = hub.upgrade()
        {
            for (stream, peer) in taken {
                h.evict(&stream, &peer);
            }
        }
    }

    /// Starts the node's tasks for `hub`: the subscriber of its channel (relays from other
    /// nodes) and the keep-alive that renews its peers. Both end when the hub is dropped.
    pub(crate) fn spawn(self: &Arc<Self>, hub: Weak<Hub>) {
        let (cluster, subscriber_hub) = (self.clone(), hub.clone());
        tokio::spawn(async move { cluster.subscribe(subscriber_hub).await });
        let cluster = self.clone();
        tokio::spawn(async move { cluster.keep_alive(hub).await });
    }

    async fn subscribe(self: Arc<Self>, hub: Weak<Hub>) {
        use futures::StreamExt;
        let mut backoff = Duration::from_millis(250);
        loop {
            if hub.strong_count() == 0 {
                return;
            }
            let subscribed = match self.store.pubsub().await {
                Ok(mut ps) => {
                    let subscribe = ps.subscribe(Self::channel(&self.node));
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
                    // Peers joined while Redis was away are written now.
                    self.renew_for(&hub).await;
                    let mut messages = ps.into_on_message();
                    // The keep-alive publishes to this channel every 5 s: a subscription that
                    // hears nothing for three of them is dead (a half-open connection) and is
                    // made again.
                    while let Ok(Some(msg)) =
                        tokio::time::timeout(KEEPALIVE * 3, messages.next()).await
                    {
                        let Some(h) = hub.upgrade() else { return };
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
            if ticks.is_multiple_of(renew_every) {
                self.renew_for(&hub).await;
            } else {
                let _ = self.renew(&[]).await;
            }
            ticks += 1;
        }
    }
}
