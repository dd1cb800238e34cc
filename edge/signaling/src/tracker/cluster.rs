//! The tracker's swarms across the edges sharing a Redis, on the native protocol's
//! [`Cluster`] (its node liveness, its subscriber, its keep-alive):
//!
//! ```text
//!  tracker:<hash>:peers   HASH peer id (hex) → "<node>\t<token>"       PEXPIRE ttl
//!  tracker:<hash>:counts  HASH node → "<seq>\t<complete>\t<incomplete>" PEXPIRE ttl
//!                         each node writes its own field: its peers of the swarm; a swarm's
//!                         counts are the sum over the live nodes (a dead node's field goes)
//!  tracker:swarms         ZSET hash (hex) → first announce (Redis's clock): a scrape of every
//!                         swarm, in creation order; a swarm whose counts reach 0 leaves it;
//!                         every node sweeps SWEEP_BATCH entries of it per keep-alive
//!                         (ZSCAN, its cursor in tracker:swarms:sweep), so the swarms of a
//!                         node that died go too
//!  tracker:node:<n>       pub/sub channel of node n: offers and answers for its peers
//! ```
//!
//! Every node is the authority for its own peers: a change is made in its memory first (under
//! the tracker's lock, which numbers it: `seq`), then written by a script that writes nothing
//! older than what is stored for this node (`seq` below the stored one: a change that
//! overtook it landed first), so concurrent changes of one swarm on one node never leave an
//! older view in Redis. `token` is the `seq` of a peer's announce: a leave deletes only its own
//! join's entry. The node's first `seq` (`boot`, from the wall clock) tells this process's
//! entries from those of an earlier process with the same node id: those are dropped where
//! they are met.
//!
//! An announce is one script: the peer id is refused if another live node holds it
//! (`peer_id in use by another connection`, as on one node) or the swarm is full; else the
//! peer and this node's counts are written, the swarm's counts summed and the offers' targets
//! sampled (`HRANDFIELD`) among the live peers of every node. Offers and answers for a peer of
//! another node are published to that node's channel; it delivers them to its peer.

use crate::native::cluster::{Cluster, NODES, NOW, millis};
use crate::wire::Id;
use edge_kv::KvError;
use serde::{Deserialize, Serialize};

/// Swarms by first announce, for a scrape of every swarm.
const SWARMS: &str = "tracker:swarms";
/// The cursor of the sweep of [`SWARMS`].
const SWEEP_CURSOR: &str = "tracker:swarms:sweep";
/// Entries of [`SWARMS`] a node checks per sweep (one script; a few hundred small reads).
const SWEEP_BATCH: usize = 200;

/// The Lua helpers every script below starts with: `alive(node)` (seen within `node_ttl`,
/// ARGV[3]), `own(value)` (the entry's owner and token), `counts(key)` (the swarm's counts
/// over live nodes, dead fields deleted), `write_counts(key, seq, c, i)` (this node's field,
/// unless a newer one is stored; whether it was written).
const HELPERS: &str = r"
local node, ttl, boot = ARGV[1], ARGV[2], tonumber(ARGV[4])
local min_alive = now - tonumber(ARGV[3])
local seen = {}
local function alive(n)
  if n == node then return true end
  if seen[n] == nil then
    local s = redis.call('ZSCORE', KEYS[1], n)
    seen[n] = (s ~= false and s ~= nil and tonumber(s) >= min_alive)
  end
  return seen[n]
end
local function own(value)
  local owner, token = string.match(value, '^([^\t]*)\t(%d+)$')
  return owner, tonumber(token or '0')
end
local function stale(value)
  local owner, token = own(value)
  return (owner == node and token < boot) or not alive(owner)
end
local function counts(key)
  local f = redis.call('HGETALL', key)
  local c, i = 0, 0
  for k = 1, #f, 2 do
    if alive(f[k]) then
      local _, fc, fi = string.match(f[k + 1], '^(%d+)\t(%d+)\t(%d+)$')
      c = c + tonumber(fc or '0')
      i = i + tonumber(fi or '0')
    else
      redis.call('HDEL', key, f[k])
    end
  end
  return c, i
end
local function write_counts(key, seq, c, i)
  local cur = redis.call('HGET', key, node)
  if cur and (tonumber(string.match(cur, '^(%d+)') or '') or 0) > tonumber(seq) then
    return false
  end
  redis.call('HSET', key, node, seq .. '\t' .. c .. '\t' .. i)
  redis.call('PEXPIRE', key, ttl)
  return true
end
";

/// KEYS: nodes, swarms, the swarm's peers, its counts. ARGV: node, ttl, node ttl, boot, peer,
/// token, seq, complete, incomplete (this node's), max peers, offers wanted, hash.
/// Returns `{'-taken'}`, `{'-full'}` or `{complete, incomplete, peer, node, peer, node…}`.
const ANNOUNCE: &str = r"
local peer, token, seq = ARGV[5], ARGV[6], ARGV[7]
local cur = redis.call('HGET', KEYS[3], peer)
if cur then
  local owner = own(cur)
  if owner ~= node and alive(owner) then return {'-taken'} end
elseif redis.call('HLEN', KEYS[3]) >= tonumber(ARGV[10]) then
  -- Full: unless entries of dead nodes (or of this node's earlier process) made it so.
  local f = redis.call('HGETALL', KEYS[3])
  for k = 1, #f, 2 do
    if stale(f[k + 1]) then redis.call('HDEL', KEYS[3], f[k]) end
  end
  if redis.call('HLEN', KEYS[3]) >= tonumber(ARGV[10]) then return {'-full'} end
end
-- The entry is this join's whatever the order the node's writes land in (a token is one
-- join's); the counts only if no newer view of this node's is stored.
write_counts(KEYS[4], seq, ARGV[8], ARGV[9])
redis.call('HSET', KEYS[3], peer, node .. '\t' .. token)
redis.call('PEXPIRE', KEYS[3], ttl)
redis.call('ZADD', KEYS[2], 'NX', now, ARGV[12])
local c, i = counts(KEYS[4])
local out = {tostring(c), tostring(i)}
local want = tonumber(ARGV[11])
if want > 0 then
  local picked = redis.call('HRANDFIELD', KEYS[3], want + 1 + math.floor(want / 2), 'WITHVALUES')
  for k = 1, #picked, 2 do
    local id, value = picked[k], picked[k + 1]
    if stale(value) then
      redis.call('HDEL', KEYS[3], id)
    elseif id ~= peer then
      out[#out + 1] = id
      out[#out + 1] = (own(value))
    end
  end
end
return out";

/// KEYS: nodes, swarms, then (peers, counts) per swarm. ARGV: node, ttl, node ttl, boot, then
/// per swarm: hash, peer, token, seq, complete, incomplete. A peer's entry goes if it is still
/// this join's (in any order: a token is one join's); returns each swarm's counts after it.
const LEAVE: &str = r"
local out = {}
local a = 5
for k = 3, #KEYS, 2 do
  local hash, peer, token, seq = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  write_counts(KEYS[k + 1], seq, ARGV[a + 4], ARGV[a + 5])
  if redis.call('HGET', KEYS[k], peer) == node .. '\t' .. token then
    redis.call('HDEL', KEYS[k], peer)
  end
  a = a + 6
  local c, i = counts(KEYS[k + 1])
  if c + i == 0 then redis.call('ZREM', KEYS[2], hash) end
  out[#out + 1] = c
  out[#out + 1] = i
end
return out";

/// KEYS: nodes, swarms, then (peers, counts) per swarm. ARGV: node, ttl, node ttl, boot, then
/// per swarm: hash, seq, complete, incomplete, n, then n (peer, token). Writes this node's
/// view of its swarms again (after a Redis restart or outage, and for their TTLs) unless a
/// newer change of the swarm is stored: its peers, and none of this node's entries older than
/// the view that it no longer holds (a leave that never landed). n = 0: a swarm this node
/// left. Returns the peer ids another live node holds now: (1-based swarm index, peer)…
const RENEW: &str = r"
local taken = {}
local a = 5
for k = 3, #KEYS, 2 do
  local hash, seq, n = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 4])
  local write = write_counts(KEYS[k + 1], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3])
  a = a + 5
  local listed = {}
  for j = 1, n do
    local peer, token = ARGV[a], ARGV[a + 1]
    a = a + 2
    listed[peer] = true
    if write then
      local cur = redis.call('HGET', KEYS[k], peer)
      if not cur or own(cur) == node or not alive(own(cur)) then
        redis.call('HSET', KEYS[k], peer, node .. '\t' .. token)
      else
        taken[#taken + 1] = tostring(math.floor((k - 1) / 2))
        taken[#taken + 1] = peer
      end
    end
  end
  if write then
    local f = redis.call('HGETALL', KEYS[k])
    for x = 1, #f, 2 do
      local owner, token = own(f[x + 1])
      if owner == node and not listed[f[x]] and token <= seq then
        redis.call('HDEL', KEYS[k], f[x])
      end
    end
    if n > 0 then
      redis.call('PEXPIRE', KEYS[k], ttl)
      redis.call('ZADD', KEYS[2], 'NX', now, hash)
    else
      local c, i = counts(KEYS[k + 1])
      if c + i == 0 then redis.call('ZREM', KEYS[2], hash) end
    end
  end
end
return taken";

/// KEYS: nodes, swarms, then counts per swarm. ARGV: node, ttl, node ttl, boot, then the
/// hashes. Each swarm's counts; one at 0 leaves the swarms.
const SCRAPE: &str = r"
local out = {}
for k = 3, #KEYS do
  local c, i = counts(KEYS[k])
  if c + i == 0 then redis.call('ZREM', KEYS[2], ARGV[2 + k]) end
  out[#out + 1] = c
  out[#out + 1] = i
end
return out";

/// KEYS: nodes, swarms, the sweep's cursor. ARGV: node, ttl, node ttl, boot, batch. Checks the
/// next `batch` swarms of the ZSCAN (from the stored cursor): one whose counts on the live
/// nodes are 0 leaves the swarms. Returns how many left.
const SWEEP: &str = r"
local cursor = redis.call('GET', KEYS[3]) or '0'
local r = redis.call('ZSCAN', KEYS[2], cursor, 'COUNT', tonumber(ARGV[5]))
local items, gone = r[2], 0
for k = 1, #items, 2 do
  local hash = items[k]
  local c, i = counts('tracker:' .. hash .. ':counts')
  if c + i == 0 then
    redis.call('ZREM', KEYS[2], hash)
    gone = gone + 1
  end
end
redis.call('SET', KEYS[3], r[1])
return gone";

/// The tracker's scripts, built once.
pub(crate) struct Scripts {
    announce: redis::Script,
    leave: redis::Script,
    renew: redis::Script,
    scrape: redis::Script,
    sweep: redis::Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        let script = |body: &str| redis::Script::new(&format!("{NOW}{HELPERS}{body}"));
        Self {
            announce: script(ANNOUNCE),
            leave: script(LEAVE),
            renew: script(RENEW),
            scrape: script(SCRAPE),
            sweep: script(SWEEP),
        }
    }
}

fn peers_key(hash: &str) -> String {
    format!("tracker:{hash}:peers")
}

fn counts_key(hash: &str) -> String {
    format!("tracker:{hash}:counts")
}

/// The channel of node `node`'s tracker.
pub(crate) fn channel(node: &str) -> String {
    format!("tracker:node:{node}")
}

/// An offer or answer for a peer of another node.
#[derive(Serialize, Deserialize)]
pub(crate) struct Envelope {
    /// Info hash (hex).
    pub h: String,
    /// The receiving peer's id (hex).
    pub p: String,
    /// The message as the peer gets it.
    pub m: String,
}

/// This node's view of one swarm: its peers' counts, numbered by the change that made it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct View {
    pub seq: u64,
    pub complete: usize,
    pub incomplete: usize,
}

/// An announce as the cluster sees it.
pub(crate) struct Join {
    pub info_hash: Id,
    pub peer_id: Id,
    pub token: u64,
    pub view: View,
    /// Offers' targets wanted.
    pub want: usize,
}

/// What the cluster answered an announce.
pub(crate) enum Joined {
    /// The swarm's counts on every node, and the offers' targets: (peer, its node).
    Counted {
        complete: usize,
        incomplete: usize,
        targets: Vec<(Id, String)>,
    },
    /// Another live node holds the peer id.
    Taken,
    /// The swarm is full across the nodes.
    Full,
}

/// A peer leaving a swarm (stopped, or its connection closed).
pub(crate) struct Leave {
    pub info_hash: Id,
    pub peer_id: Id,
    pub token: u64,
    pub view: View,
}

/// One of this node's swarms as the renewal writes it.
pub(crate) struct LocalSwarm {
    pub info_hash: Id,
    pub view: View,
    pub peers: Vec<(Id, u64)>,
}

impl Cluster {
    fn tracker_call<'a>(
        &self,
        script: &'a redis::Script,
        boot: u64,
    ) -> redis::ScriptInvocation<'a> {
        let mut call = script.prepare_invoke();
        call.key(NODES)
            .key(SWARMS)
            .arg(&self.node)
            .arg(millis(self.ttl))
            .arg(millis(self.node_ttl))
            .arg(boot);
        call
    }

    /// Writes an announce of this node's and counts its swarm on every node.
    pub(crate) async fn tracker_announce(
        &self,
        j: &Join,
        boot: u64,
        max_peers: usize,
    ) -> Result<Joined, KvError> {
        let hash = j.info_hash.to_hex();
        let mut call = self.tracker_call(&self.tracker_scripts.announce, boot);
        call.key(peers_key(&hash))
            .key(counts_key(&hash))
            .arg(j.peer_id.to_hex())
            .arg(j.token)
            .arg(j.view.seq)
            .arg(j.view.complete)
            .arg(j.view.incomplete)
            .arg(max_peers)
            .arg(j.want)
            .arg(&hash);
        let r = self
            .store
            .run(async |mut c| call.invoke_async::<Vec<String>>(&mut c).await)
            .await;
        let out = self.answered(r)?;
        let bad = || KvError::Invalid("tracker announce: bad reply".into());
        let (complete, incomplete) = match out.as_slice() {
            [taken] if taken == "-taken" => return Ok(Joined::Taken),
            [full] if full == "-full" => return Ok(Joined::Full),
            [c, i, ..] => (c.parse().map_err(|_| bad())?, i.parse().map_err(|_| bad())?),
            _ => return Err(bad()),
        };
        let targets = out[2..]
            .chunks_exact(2)
            .filter_map(|pair| Some((Id::from_hex(&pair[0])?, pair[1].clone())))
            .take(j.want)
            .collect();
        Ok(Joined::Counted {
            complete,
            incomplete,
            targets,
        })
    }

    /// Removes peers of this node from their swarms; each swarm's counts after it.
    pub(crate) async fn tracker_leave(
        &self,
        leaves: &[Leave],
        boot: u64,
    ) -> Result<Vec<(usize, usize)>, KvError> {
        let mut counts = Vec::with_capacity(leaves.len());
        for chunk in leaves.chunks(200) {
            let mut call = self.tracker_call(&self.tracker_scripts.leave, boot);
            for l in chunk {
                let hash = l.info_hash.to_hex();
                call.key(peers_key(&hash))
                    .key(counts_key(&hash))
                    .arg(hash)
                    .arg(l.peer_id.to_hex())
                    .arg(l.token)
                    .arg(l.view.seq)
                    .arg(l.view.complete)
                    .arg(l.view.incomplete);
            }
            let r = self
                .store
                .run(async |mut c| call.invoke_async::<Vec<usize>>(&mut c).await)
                .await;
            let out = self.answered(r)?;
            counts.extend(out.chunks_exact(2).map(|p| (p[0], p[1])));
        }
        Ok(counts)
    }

    /// Writes this node's swarms again; the (info hash, peer id) pairs another live node
    /// holds now.
    pub(crate) async fn tracker_renew(
        &self,
        swarms: &[LocalSwarm],
        boot: u64,
    ) -> Result<Vec<(Id, Id)>, KvError> {
        let mut taken = Vec::new();
        let mut rest = swarms;
        while !rest.is_empty() {
            // About 500 peers per call: a script holds Redis while it runs.
            let mut take = 0;
            let mut peers = 0;
            while take < rest.len() && (take == 0 || peers + rest[take].peers.len() <= 500) {
                peers += rest[take].peers.len();
                take += 1;
            }
            let (chunk, tail) = rest.split_at(take);
            rest = tail;
            let mut call = self.tracker_call(&self.tracker_scripts.renew, boot);
            for s in chunk {
                let hash = s.info_hash.to_hex();
                call.key(peers_key(&hash))
                    .key(counts_key(&hash))
                    .arg(hash)
                    .arg(s.view.seq)
                    .arg(s.view.complete)
                    .arg(s.view.incomplete)
                    .arg(s.peers.len());
                for (peer, token) in &s.peers {
                    call.arg(peer.to_hex()).arg(*token);
                }
            }
            let r = self
                .store
                .run(async |mut c| call.invoke_async::<Vec<String>>(&mut c).await)
                .await;
            for pair in self.answered(r)?.chunks_exact(2) {
                let swarm = pair[0].parse::<usize>().ok().and_then(|i| i.checked_sub(1));
                if let (Some(s), Some(peer)) =
                    (swarm.and_then(|i| chunk.get(i)), Id::from_hex(&pair[1]))
                {
                    taken.push((s.info_hash, peer));
                }
            }
        }
        Ok(taken)
    }

    /// The counts of `hashes` on every node; `None`: every swarm, the first `max` created.
    pub(crate) async fn tracker_scrape(
        &self,
        hashes: Option<&[Id]>,
        max: usize,
        boot: u64,
    ) -> Result<Vec<(Id, usize, usize)>, KvError> {
        let all = hashes.is_none();
        let hashes: Vec<String> = match hashes {
            Some(ids) => ids.iter().map(|id| id.to_hex()).collect(),
            None => {
                // Some may have emptied since: read more than asked.
                let end = max.saturating_mul(2).saturating_sub(1);
                let r = self
                    .store
                    .run(async |mut c| {
                        redis::cmd("ZRANGE")
                            .arg(SWARMS)
                            .arg(0)
                            .arg(end)
                            .query_async::<Vec<String>>(&mut c)
                            .await
                    })
                    .await;
                self.answered(r)?
            }
        };
        let mut out = Vec::with_capacity(hashes.len());
        for chunk in hashes.chunks(500) {
            let mut call = self.tracker_call(&self.tracker_scripts.scrape, boot);
            for hash in chunk {
                call.key(counts_key(hash)).arg(hash);
            }
            let r = self
                .store
                .run(async |mut c| call.invoke_async::<Vec<usize>>(&mut c).await)
                .await;
            let counts = self.answered(r)?;
            for (hash, c) in chunk.iter().zip(counts.chunks_exact(2)) {
                let Some(id) = Id::from_hex(hash) else {
                    continue;
                };
                if all && c[0] + c[1] == 0 {
                    continue;
                }
                out.push((id, c[0], c[1]));
            }
        }
        out.truncate(max);
        Ok(out)
    }

    /// Checks the next [`SWEEP_BATCH`] entries of the swarms (all nodes share one cursor):
    /// those with no peer on a live node leave. How many left.
    pub(crate) async fn tracker_sweep(&self, boot: u64) -> Result<u64, KvError> {
        let mut call = self.tracker_call(&self.tracker_scripts.sweep, boot);
        call.key(SWEEP_CURSOR).arg(SWEEP_BATCH);
        let r = self
            .store
            .run(async |mut c| call.invoke_async::<u64>(&mut c).await)
            .await;
        self.answered(r)
    }

    /// The node holding peer `peer` of swarm `info_hash`, if another one.
    pub(crate) async fn tracker_locate(
        &self,
        info_hash: Id,
        peer: Id,
    ) -> Result<Option<String>, KvError> {
        let key = peers_key(&info_hash.to_hex());
        let field = peer.to_hex();
        let r = self
            .store
            .run(async |mut c| {
                redis::cmd("HGET")
                    .arg(&key)
                    .arg(&field)
                    .query_async::<Option<String>>(&mut c)
                    .await
            })
            .await;
        Ok(self
            .answered(r)?
            .and_then(|v| v.split_once('\t').map(|(node, _)| node.to_owned()))
            .filter(|node| *node != self.node))
    }

    /// Publishes each envelope to its node's tracker channel; how many were received.
    pub(crate) async fn tracker_publish(
        &self,
        relays: &[(String, Envelope)],
    ) -> Result<u64, KvError> {
        let mut pipe = redis::pipe();
        for (node, envelope) in relays {
            let payload =
                serde_json::to_string(envelope).map_err(|e| KvError::Invalid(e.to_string()))?;
            pipe.cmd("PUBLISH").arg(channel(node)).arg(payload);
        }
        let r = self
            .store
            .run(async |mut c| pipe.query_async::<Vec<u64>>(&mut c).await)
            .await;
        Ok(self.answered(r)?.iter().sum())
    }
}
