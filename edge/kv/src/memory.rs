use crate::KvError;
use parking_lot::Mutex;
use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    time::{Duration, Instant},
};

const SHARDS: usize = 16;

/// An in-process store: sharded maps with per-key expiry and a bound on the number of keys (when
/// full, expired keys are swept first, then arbitrary keys are evicted: this is a cache of state
/// that can be rebuilt, never a database).
pub struct MemoryStore {
    shards: Vec<Mutex<HashMap<String, Entry>>>,
    per_shard: usize,
    hasher: RandomState,
}

struct Entry {
    value: String,
    expires: Instant,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("per_shard", &self.per_shard)
            .finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// A store holding at most about `max_entries` keys.
    pub fn new(max_entries: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: max_entries.div_ceil(SHARDS).max(1),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &str) -> &Mutex<HashMap<String, Entry>> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    /// The live value of `key`.
    pub fn get(&self, key: &str) -> Option<String> {
        let now = Instant::now();
        let mut map = self.shard(key).lock();
        match map.get(key) {
            Some(e) if e.expires > now => Some(e.value.clone()),
            Some(_) => {
                map.remove(key);
                None
            }
            None => None,
        }
    }

    /// Sets `key` for `ttl`.
    pub fn set(&self, key: &str, value: &str, ttl: Duration) {
        let now = Instant::now();
        let mut map = self.shard(key).lock();
        self.make_room(&mut map, key, now);
        map.insert(
            key.to_owned(),
            Entry {
                value: value.to_owned(),
                expires: now + ttl,
            },
        );
    }

    /// Adds `delta` to the integer at `key`.
    pub fn increment(&self, key: &str, delta: i64, ttl: Duration) -> Result<i64, KvError> {
        let now = Instant::now();
        let mut map = self.shard(key).lock();
        if let Some(e) = map.get_mut(key).filter(|e| e.expires > now) {
            let current: i64 = e
                .value
                .parse()
                .map_err(|_| KvError::Invalid(format!("value at {key:?} is not an integer")))?;
            let next = current
                .checked_add(delta)
                .ok_or_else(|| KvError::Invalid("integer overflow".into()))?;
            e.value = next.to_string();
            return Ok(next);
        }
        self.make_room(&mut map, key, now);
        map.insert(
            key.to_owned(),
            Entry {
                value: delta.to_string(),
                expires: now + ttl,
            },
        );
        Ok(delta)
    }

    /// Sets `key` to `value` if it currently holds `expected` (`None`: absent or expired).
    pub fn compare_and_set(
        &self,
        key: &str,
        expected: Option<&str>,
        value: &str,
        ttl: Duration,
    ) -> bool {
        let now = Instant::now();
        let mut map = self.shard(key).lock();
        let current = map
            .get(key)
            .filter(|e| e.expires > now)
            .map(|e| e.value.as_str());
        if current != expected {
            return false;
        }
        self.make_room(&mut map, key, now);
        map.insert(
            key.to_owned(),
            Entry {
                value: value.to_owned(),
                expires: now + ttl,
            },
        );
        true
    }

    fn make_room(&self, map: &mut HashMap<String, Entry>, key: &str, now: Instant) {
        if map.len() < self.per_shard || map.contains_key(key) {
            return;
        }
        map.retain(|_, e| e.expires > now);
        let excess = (map.len() + 1).saturating_sub(self.per_shard);
        if excess > 0 {
            let victims: Vec<String> = map.keys().take(excess).cloned().collect();
            for v in victims {
                map.remove(&v);
            }
        }
    }
}

#[cfg(test)]
pub(crate) fn tests_shards() -> usize {
    SHARDS
}
