//! The seeder segment directory, kept in the Redis every edge and seeder shares.
//!
//! Seeders publish what they hold; edges read it to find a seeder for a segment they miss. The
//! keys are those of the seeder deployment this replaces, so its dashboards and checks keep working:
//!
//! | key | type | content | lifetime |
//! |---|---|---|---|
//! | `stream:<id>:segment:<name>` | hash | field = seeder id, value = [`Holding`] as JSON (`seederId`, `address`, `size`, `checksum`, `lastAccess`) | TTL renewed by every seeder publishing it |
//! | `stream:<id>:seeders` | set | ids of the seeders holding any segment of the stream | TTL renewed likewise |
//! | `seeder:<id>` | hash | [`SeederStatus`]: `address`, `lastActive`, `startedAt`, `segments`, `bytes`, `ok`, `failed`, `successRate` | TTL renewed by the heartbeat |
//! | `seeders` | set | every seeder id that has sent a heartbeat | members pruned by readers once `seeder:<id>` expired |
//! | `slices:<checksum>:<slice>` | string | the SHA-256 of each `slice` bytes of the content of SHA-256 `checksum` (a file larger than a slice), 32 raw bytes each, in order | TTL renewed by every seeder holding such a file |
//!
//! A stream is addressed by its public path: with the streams prefix `/vod/movies/`, the path
//! `/vod/movies/m1/720p/seg_001.ts` is segment `720p/seg_001.ts` of stream `m1` ([`SegmentRef`]).
//!
//! Every call goes through [`RedisStore::run`], so it is bounded by the Redis command timeout and
//! fails fast (as [`KvError::Unavailable`]) while Redis is down.

use edge_kv::{KvError, RedisStore};
use serde::{Deserialize, Serialize};
use std::{collections::HashMap, sync::Arc, time::Duration};

/// The set of every seeder id.
pub const SEEDERS_KEY: &str = "seeders";

/// Most commands sent in one pipeline.
const BATCH: usize = 256;

/// A segment of a stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SegmentRef {
    /// Stream (movie) id: the path component after the streams prefix.
    pub stream: String,
    /// The rest of the path below the stream's directory (`720p/seg_001.ts`).
    pub name: String,
}

impl SegmentRef {
    /// The segment at public `path` under `prefix` (`/vod/movies/`); `None` for paths outside it
    /// or without a file below a stream directory.
    pub fn from_path(prefix: &str, path: &str) -> Option<Self> {
        let rest = path.strip_prefix(prefix)?;
        let (stream, name) = rest.split_once('/')?;
        if stream.is_empty() || name.is_empty() || name.ends_with('/') {
            return None;
        }
        Some(Self {
            stream: stream.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The public path of this segment under `prefix`.
    pub fn path(&self, prefix: &str) -> String {
        format!("{prefix}{}/{}", self.stream, self.name)
    }

    /// `stream:<id>:segment:<name>`.
    pub fn key(&self) -> String {
        format!("stream:{}:segment:{}", self.stream, self.name)
    }

    /// `stream:<id>:seeders`.
    pub fn seeders_key(&self) -> String {
        format!("stream:{}:seeders", self.stream)
    }
}

/// One seeder's copy of a segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Holding {
    /// The seeder's id.
    pub seeder_id: String,
    /// Where edges fetch it (`host:port`).
    pub address: String,
    /// Bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of the content.
    pub checksum: String,
    /// Last time the seeder served or stored it, milliseconds since the Unix epoch.
    pub last_access: u64,
}

/// A seeder's heartbeat record (`seeder:<id>`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SeederStatus {
    /// Id.
    pub seeder_id: String,
    /// Where edges fetch from it (`host:port`).
    pub address: String,
    /// Last heartbeat, milliseconds since the Unix epoch.
    pub last_active: u64,
    /// When it started, milliseconds since the Unix epoch.
    pub started_at: u64,
    /// Segments it holds.
    pub segments: u64,
    /// Bytes it holds.
    pub bytes: u64,
    /// Fetches by edges that succeeded, as the edges reported them.
    pub ok: u64,
    /// Fetches by edges that failed.
    pub failed: u64,
    /// `ok / (ok + failed)`, absent before any report.
    pub success_rate: Option<f64>,
}

/// `seeder:<id>`.
pub fn seeder_key(id: &str) -> String {
    format!("seeder:{id}")
}

/// The checksums of the slices of a file larger than one slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceList {
    /// Lowercase hex SHA-256 of the whole content (the [`Holding::checksum`]).
    pub checksum: String,
    /// Bytes per slice (the last slice is shorter).
    pub slice: u64,
    /// SHA-256 of each slice, in order.
    pub digests: Arc<[[u8; 32]]>,
}

/// `slices:<checksum>:<slice>`: content-addressed, so its value never changes.
pub fn slices_key(checksum: &str, slice: u64) -> String {
    format!("slices:{checksum}:{slice}")
}

const RECORD: &str = r"
local ok = redis.call('HINCRBY', KEYS[1], 'ok', ARGV[1])
local failed = redis.call('HINCRBY', KEYS[1], 'failed', ARGV[2])
local rate = ok / math.max(ok + failed, 1)
redis.call('HSET', KEYS[1], 'successRate', string.format('%.4f', rate))
return tostring(rate)";

/// Reads and writes the directory. Cheap to clone.
#[derive(Clone)]
pub struct Directory {
    redis: Arc<RedisStore>,
    record: Arc<redis::Script>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("redis", &self.redis.describe())
            .finish()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl Directory {
    /// A directory on `redis` (shared with the edge's other Redis users).
    pub fn new(redis: Arc<RedisStore>) -> Self {
        Self {
            redis,
            record: Arc::new(redis::Script::new(RECORD)),
        }
    }

    /// Where the directory lives, for logs.
    pub fn describe(&self) -> String {
        self.redis.describe()
    }

    /// Records (or renews) `holdings`, each expiring after `ttl` unless published again; also
    /// renews the streams' seeder sets.
    pub async fn publish(
        &self,
        holdings: &[(SegmentRef, Holding)],
        ttl: Duration,
    ) -> Result<(), KvError> {
        let ms = millis(ttl);
        for batch in holdings.chunks(BATCH) {
            let mut pipe = redis::pipe();
            let mut streams = HashMap::new();
            for (seg, h) in batch {
                let json = serde_json::to_string(h).map_err(|e| KvError::Invalid(e.to_string()))?;
                let key = seg.key();
                pipe.hset(&key, &h.seeder_id, json).ignore();
                pipe.pexpire(&key, ms as i64).ignore();
                streams.insert(seg.seeders_key(), &h.seeder_id);
            }
            for (key, id) in streams {
                pipe.sadd(&key, id).ignore();
                pipe.pexpire(&key, ms as i64).ignore();
            }
            self.redis
                .run(async |mut c| pipe.query_async::<()>(&mut c).await)
                .await?;
        }
        Ok(())
    }

    /// Records (or renews) slice lists, each expiring after `ttl` unless published again. A
    /// list already there only has its TTL renewed: the value of a content-addressed key does
    /// not change, and a large library's lists are not sent again every scan.
    pub async fn publish_slices(&self, lists: &[SliceList], ttl: Duration) -> Result<(), KvError> {
        let ms = millis(ttl);
        for batch in lists.chunks(BATCH) {
            let mut renew = redis::pipe();
            for l in batch {
                renew.pexpire(slices_key(&l.checksum, l.slice), ms as i64);
            }
            let renewed: Vec<bool> = self
                .redis
                .run(async |mut c| renew.query_async(&mut c).await)
                .await?;
            let mut write = redis::pipe();
            let mut missing = false;
            for (l, renewed) in batch.iter().zip(renewed) {
                if !renewed {
                    let value: Vec<u8> = l.digests.iter().flatten().copied().collect();
                    write
                        .cmd("SET")
                        .arg(slices_key(&l.checksum, l.slice))
                        .arg(value)
                        .arg("PX")
                        .arg(ms)
                        .ignore();
                    missing = true;
                }
            }
            if missing {
                self.redis
                    .run(async |mut c| write.query_async::<()>(&mut c).await)
                    .await?;
            }
        }
        Ok(())
    }

    /// The `count` slice checksums of the content `checksum` in slices of `slice` bytes, when a
    /// seeder published them; `None` when none did, or the value is not `count` SHA-256 digests
    /// (at most one byte more than that is read, whatever the value holds).
    pub async fn slices(
        &self,
        checksum: &str,
        slice: u64,
        count: u64,
    ) -> Result<Option<SliceList>, KvError> {
        let key = slices_key(checksum, slice);
        let want = count.saturating_mul(32);
        let value: Vec<u8> = self
            .redis
            .run(async |mut c| {
                redis::cmd("GETRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(want)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        if count == 0 || value.len() as u64 != want {
            return Ok(None);
        }
        let digests: Arc<[[u8; 32]]> = value
            .chunks_exact(32)
            .map(|c| <[u8; 32]>::try_from(c).unwrap_or_default())
            .collect();
        Ok(Some(SliceList {
            checksum: checksum.to_owned(),
            slice,
            digests,
        }))
    }

    /// Removes `seeder_id`'s copies of `segments` (deleted files).
    pub async fn withdraw(&self, seeder_id: &str, segments: &[SegmentRef]) -> Result<(), KvError> {
        for batch in segments.chunks(BATCH) {
            let mut pipe = redis::pipe();
            for seg in batch {
                pipe.hdel(seg.key(), seeder_id).ignore();
            }
            self.redis
                .run(async |mut c| pipe.query_async::<()>(&mut c).await)
                .await?;
        }
        Ok(())
    }

    /// The seeders holding `segment`.
    pub async fn holders(&self, segment: &SegmentRef) -> Result<Vec<Holding>, KvError> {
        let key = segment.key();
        let fields: HashMap<String, String> = self
            .redis
            .run(async |mut c| redis::cmd("HGETALL").arg(&key).query_async(&mut c).await)
            .await?;
        let mut holders: Vec<Holding> = fields
            .into_values()
            .filter_map(|v| serde_json::from_str(&v).ok())
            .collect();
        holders.sort_by(|a, b| a.seeder_id.cmp(&b.seeder_id));
        Ok(holders)
    }

    /// Writes `status` (except the edge-reported counters) and renews it for `ttl`; adds the
    /// seeder to [`SEEDERS_KEY`].
    pub async fn heartbeat(&self, status: &SeederStatus, ttl: Duration) -> Result<(), KvError> {
        let key = seeder_key(&status.seeder_id);
        let mut pipe = redis::pipe();
        pipe.hset_multiple(
            &key,
            &[
                ("seederId", status.seeder_id.clone()),
                ("address", status.address.clone()),
                ("lastActive", status.last_active.to_string()),
                ("startedAt", status.started_at.to_string()),
                ("segments", status.segments.to_string()),
                ("bytes", status.bytes.to_string()),
            ],
        )
        .ignore();
        pipe.pexpire(&key, millis(ttl) as i64).ignore();
        pipe.sadd(SEEDERS_KEY, &status.seeder_id).ignore();
        self.redis
            .run(async |mut c| pipe.query_async::<()>(&mut c).await)
            .await
    }

    /// Removes a seeder that is shutting down: its heartbeat record and its set membership. Its
    /// segment entries expire with their TTL (or are withdrawn by the caller first).
    pub async fn deregister(&self, seeder_id: &str) -> Result<(), KvError> {
        let mut pipe = redis::pipe();
        pipe.del(seeder_key(seeder_id)).ignore();
        pipe.srem(SEEDERS_KEY, seeder_id).ignore();
        self.redis
            .run(async |mut c| pipe.query_async::<()>(&mut c).await)
            .await
    }

    /// Every seeder with a live heartbeat record. Ids whose record expired are pruned from
    /// [`SEEDERS_KEY`].
    pub async fn seeders(&self) -> Result<Vec<SeederStatus>, KvError> {
        let ids: Vec<String> = self
            .redis
            .run(async |mut c| {
                redis::cmd("SMEMBERS")
                    .arg(SEEDERS_KEY)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HGETALL").arg(seeder_key(id));
        }
        let records: Vec<HashMap<String, String>> = self
            .redis
            .run(async |mut c| pipe.query_async(&mut c).await)
            .await?;
        let mut live = Vec::new();
        let mut gone = Vec::new();
        for (id, fields) in ids.into_iter().zip(records) {
            if fields.is_empty() {
                gone.push(id);
                continue;
            }
            let num = |k: &str| fields.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
            live.push(SeederStatus {
                address: fields.get("address").cloned().unwrap_or_default(),
                last_active: num("lastActive"),
                started_at: num("startedAt"),
                segments: num("segments"),
                bytes: num("bytes"),
                ok: num("ok"),
                failed: num("failed"),
                success_rate: fields.get("successRate").and_then(|v| v.parse().ok()),
                seeder_id: id,
            });
        }
        if !gone.is_empty() {
            let _ = self
                .redis
                .run(async |mut c| {
                    redis::cmd("SREM")
                        .arg(SEEDERS_KEY)
                        .arg(&gone)
                        .query_async::<()>(&mut c)
                        .await
                })
                .await;
        }
        live.sort_by(|a, b| a.seeder_id.cmp(&b.seeder_id));
        Ok(live)
    }

    /// Adds an edge's observed fetch outcomes to `seeder:<id>` and recomputes its `successRate`,
    /// which it returns.
    pub async fn record(&self, seeder_id: &str, ok: u64, failed: u64) -> Result<f64, KvError> {
        let script = self.record.clone();
        let key = seeder_key(seeder_id);
        let rate: String = self
            .redis
            .run(async |mut c| {
                script
                    .key(&key)
                    .arg(ok)
                    .arg(failed)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        rate.parse()
            .map_err(|_| KvError::Invalid(format!("successRate {rate:?}")))
    }
}

#[cfg(test)]
mod tests;
