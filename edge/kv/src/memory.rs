use crate::KvError;
use parking_lot::Mutex;
use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    time::{Duration, Instant},
};

const SHARDS: usize = 16;

/// Bytes of keys and values allowed per key of `max_entries`: a store of N keys holds at most
/// N KiB, so values of up to [`crate::MAX_VALUE`] cannot multiply into gigabytes.
pub const BYTES_PER_ENTRY: usize = 1024;

/// An in-process store: sharded maps with per-key expiry, bounded both in keys and in bytes of
/// keys and values (when full, expired keys are swept first, then arbitrary keys are evicted: this
/// is a cache of state that can be rebuilt, never a database).
pub struct MemoryStore {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    bytes_per_shard: usize,
    hasher: RandomState,
}

#[derive(Default)]
struct Shard {
    map: HashMap<String, Entry>,
    bytes: usize,
}

impl Shard {
    fn insert(&mut self, key: &str, value: String, expires: Instant) {
        let added = key.len() + value.len();
        if let Some(old) = self.map.insert(key.to_owned(), Entry { value, expires }) {
            self.bytes -= key.len() + old.value.len();
        }
        self.bytes += added;
    }

    fn remove(&mut self, key: &str) {
        if let Some(old) = self.map.remove(key) {
            self.bytes -= key.len() + old.value.len();
        }
    }
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
        let per_shard = max_entries.div_ceil(SHARDS).max(1);
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard,
            bytes_per_shard: per_shard.saturating_mul(BYTES_PER_ENTRY),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &str) -> &Mutex<Shard> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    /// The live value of `key`.
    pub fn get(&self, key: &str) -> Option<String> {
        let now = Instant::now();
        let mut shard = self.shard(key).lock();
        match shard.map.get(key) {
            Some(e) if e.expires > now => Some(e.value.clone()),
            Some(_) => {
                shard.remove(key);
                None
            }
            None => None,
        }
    }

    /// Sets `key` for `ttl`.
    pub fn set(&self, key: &str, value: &str, ttl: Duration) {
        let now = Instant::now();
        let mut shard = self.shard(key).lock();
        self.make_room(&mut shard, key, value.len(), now);
        shard.insert(key, value.to_owned(), now + ttl);
    }

    /// Adds `delta` to the integer at `key`.
    pub fn increment(&self, key: &str, delta: i64, ttl: Duration) -> Result<i64, KvError> {
        let now = Instant::now();
        let mut shard = self.shard(key).lock();
        if let Some(e) = shard.map.get(key).filter(|e| e.expires > now) {
            let current: i64 = e
                .value
                .parse()
                .map_err(|_| KvError::Invalid(format!("value at {key:?} is not an integer")))?;
            let next = current
                .checked_add(delta)
                .ok_or_else(|| KvError::Invalid("integer overflow".into()))?;
            let expires = e.expires;
            shard.insert(key, next.to_string(), expires);
            return Ok(next);
        }
        let value = delta.to_string();
        self.make_room(&mut shard, key, value.len(), now);
        shard.insert(key, value, now + ttl);
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
        let mut shard = self.shard(key).lock();
        let current = shard
            .map
            .get(key)
            .filter(|e| e.expires > now)
            .map(|e| e.value.as_str());
        if current != expected {
            return false;
        }
        self.make_room(&mut shard, key, value.len(), now);
        shard.insert(key, value.to_owned(), now + ttl);
        true
    }

    fn make_room(&self, shard: &mut Shard, key: &str, value_len: usize, now: Instant) {
        let incoming = key.len() + value_len;
        let fits = |s: &Shard| {
            let count_ok = s.map.len() < self.per_shard || s.map.contains_key(key);
            count_ok && s.bytes + incoming <= self.bytes_per_shard
        };
        if fits(shard) {
            return;
        }
        shard.map.retain(|_, e| e.expires > now);
        shard.bytes = shard.map.iter().map(|(k, e)| k.len() + e.value.len()).sum();
        while !fits(shard) {
            let Some(victim) = shard.map.keys().find(|k| *k != key).cloned() else {
                break;
            };
            shard.remove(&victim);
        }
    }
}

#[cfg(test)]
pub(crate) fn tests_shards() -> usize {
    SHARDS
}
