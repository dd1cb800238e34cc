//! Where watch positions live: Redis (shared by every edge) or, without Redis, this edge's memory
//! with a snapshot file, so a restart loses nothing either way.

use edge_kv::{KvError, RedisStore};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::{
    collections::HashMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// A viewer's position in a movie.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Seconds into the movie.
    pub position_seconds: u64,
    /// When it was reported (`edge_events::timestamp` form; fixed width, so it sorts in time
    /// order — the newer report wins everywhere).
    pub last_watched_at: String,
    /// The same instant in milliseconds since the Unix epoch (expiry of the local store).
    pub at_ms: u64,
}

/// `(user_id, movie_id)`.
pub type ViewerKey = (String, String);

/// Why the store could not answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("progress store unavailable: {0}")]
pub struct StoreError(pub String);

impl From<KvError> for StoreError {
    fn from(e: KvError) -> Self {
        Self(e.to_string())
    }
}

/// A place positions are kept. Writes are "newer wins" by `last_watched_at`, so replaying the
/// spool after a crash is harmless.
#[async_trait::async_trait]
pub trait ProgressStore: Send + Sync + 'static {
    /// The position of `user` in `movie`.
    async fn get(&self, user: &str, movie: &str) -> Result<Option<Position>, StoreError>;
    /// Writes every entry whose `last_watched_at` is not older than the stored one.
    async fn put(&self, entries: &[(ViewerKey, Position)]) -> Result<(), StoreError>;
    /// Makes every `put` so far durable (the spool cursor is committed after it).
    async fn checkpoint(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// How often [`ProgressStore::checkpoint`] should run (zero: after every batch).
    fn checkpoint_every(&self) -> Duration {
        Duration::ZERO
    }
    /// `redis` or `local`, for logs and `/health`.
    fn kind(&self) -> &'static str;
}

/// Positions in Redis: hash `watch_progress:<user_id>:<movie_id>` with `position_seconds` and
/// `last_watched_at`, expiring `ttl` after the last write.
pub struct RedisProgress {
    redis: Arc<RedisStore>,
    ttl: Duration,
}

impl RedisProgress {
    /// Positions on `redis`, kept for `ttl`.
    pub fn new(redis: Arc<RedisStore>, ttl: Duration) -> Self {
        Self { redis, ttl }
    }
}

/// The Redis key of a viewer's position.
pub fn redis_key(user: &str, movie: &str) -> String {
    format!("watch_progress:{user}:{movie}")
}

const PUT_NEWER: &str = r"
for i = 1, #KEYS do
  local cur = redis.call('HGET', KEYS[i], 'last_watched_at')
  local at = ARGV[2 * i]
  if (not cur) or cur <= at then
    redis.call('HSET', KEYS[i], 'position_seconds', ARGV[2 * i - 1], 'last_watched_at', at)
    redis.call('EXPIRE', KEYS[i], ARGV[#ARGV])
  end
end
return #KEYS
";

#[async_trait::async_trait]
impl ProgressStore for RedisProgress {
    async fn get(&self, user: &str, movie: &str) -> Result<Option<Position>, StoreError> {
        let key = redis_key(user, movie);
        let (pos, at): (Option<u64>, Option<String>) = self
            .redis
            .run(async |mut c| {
                redis::cmd("HMGET")
                    .arg(&key)
                    .arg("position_seconds")
                    .arg("last_watched_at")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(pos
            .zip(at)
            .map(|(position_seconds, last_watched_at)| Position {
                position_seconds,
                last_watched_at,
                at_ms: 0,
            }))
    }

    async fn put(&self, entries: &[(ViewerKey, Position)]) -> Result<(), StoreError> {
        static SCRIPT: std::sync::LazyLock<redis::Script> =
            std::sync::LazyLock::new(|| redis::Script::new(PUT_NEWER));
        for chunk in entries.chunks(256) {
            let mut inv = SCRIPT.prepare_invoke();
            for ((user, movie), p) in chunk {
                inv.key(redis_key(user, movie))
                    .arg(p.position_seconds)
                    .arg(&p.last_watched_at);
            }
            inv.arg(self.ttl.as_secs().max(1));
            self.redis
                .run(async |mut c| inv.invoke_async::<i64>(&mut c).await)
                .await?;
        }
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

/// Positions in this process, snapshotted to `path` (temp file + rename) at most every second;
/// entries older than `ttl` are dropped.
pub struct LocalProgress {
    map: Mutex<HashMap<ViewerKey, Position>>,
    path: PathBuf,
    ttl: Duration,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    user_id: String,
    movie_id: String,
    #[serde(flatten)]
    position: Position,
}

/// `at` in milliseconds since the Unix epoch.
pub(crate) fn epoch_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn now_ms() -> u64 {
    epoch_ms(SystemTime::now())
}

impl LocalProgress {
    /// Loads the snapshot at `path` (absent: empty).
    pub fn open(path: PathBuf, ttl: Duration) -> Result<Self, StoreError> {
        let mut map = HashMap::new();
        match std::fs::read(&path) {
            Ok(bytes) => {
                let entries: Vec<Entry> = serde_json::from_slice(&bytes).map_err(|e| {
                    StoreError(format!("progress snapshot {}: {e}", path.display()))
                })?;
                let oldest = now_ms().saturating_sub(u64::try_from(ttl.as_millis()).unwrap_or(0));
                for e in entries.into_iter().filter(|e| e.position.at_ms >= oldest) {
                    map.insert((e.user_id, e.movie_id), e.position);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError(format!("{}: {e}", path.display()))),
        }
        Ok(Self {
            map: Mutex::new(map),
            path,
            ttl,
        })
    }
}

#[async_trait::async_trait]
impl ProgressStore for LocalProgress {
    async fn get(&self, user: &str, movie: &str) -> Result<Option<Position>, StoreError> {
        let oldest = now_ms().saturating_sub(u64::try_from(self.ttl.as_millis()).unwrap_or(0));
        Ok(self
            .map
            .lock()
            .get(&(user.to_owned(), movie.to_owned()))
            .filter(|p| p.at_ms >= oldest)
            .cloned())
    }

    async fn put(&self, entries: &[(ViewerKey, Position)]) -> Result<(), StoreError> {
        let mut map = self.map.lock();
        for (k, p) in entries {
            match map.get(k) {
                Some(cur) if cur.last_watched_at > p.last_watched_at => {}
                _ => {
                    map.insert(k.clone(), p.clone());
                }
            }
        }
        Ok(())
    }

    async fn checkpoint(&self) -> Result<(), StoreError> {
        let oldest = now_ms().saturating_sub(u64::try_from(self.ttl.as_millis()).unwrap_or(0));
        let entries: Vec<Entry> = {
            let mut map = self.map.lock();
            map.retain(|_, p| p.at_ms >= oldest);
            map.iter()
                .map(|((u, m), p)| Entry {
                    user_id: u.clone(),
                    movie_id: m.clone(),
                    position: p.clone(),
                })
                .collect()
        };
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || write_atomically(&path, &entries))
            .await
            .map_err(|e| StoreError(e.to_string()))?
    }

    fn checkpoint_every(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn kind(&self) -> &'static str {
        "local"
    }
}

fn write_atomically(path: &std::path::Path, entries: &[Entry]) -> Result<(), StoreError> {
    use std::io::Write;
    let err = |e: std::io::Error| StoreError(format!("{}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(&serde_json::to_vec(entries).unwrap_or_default())
        .map_err(err)?;
    f.sync_data().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(p: u64, at: &str) -> Position {
        Position {
            position_seconds: p,
            last_watched_at: at.into(),
            at_ms: now_ms(),
        }
    }

    #[tokio::test]
    async fn local_store_keeps_the_newer_report_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("progress.json");
        let store = LocalProgress::open(path.clone(), Duration::from_secs(60)).unwrap();
        let k = ("u".to_string(), "m".to_string());
        store
            .put(&[(k.clone(), pos(20, "2026-01-01T00:00:02.000000"))])
            .await
            .unwrap();
        store
            .put(&[(k.clone(), pos(10, "2026-01-01T00:00:01.000000"))])
            .await
            .unwrap();
        assert_eq!(
            store.get("u", "m").await.unwrap().unwrap().position_seconds,
            20
        );
        store.checkpoint().await.unwrap();
        let again = LocalProgress::open(path, Duration::from_secs(60)).unwrap();
        assert_eq!(
            again.get("u", "m").await.unwrap().unwrap().position_seconds,
            20
        );
    }
}
