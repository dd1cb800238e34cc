//! Key-value state for policies and edge services.
//!
//! Two scopes, one API ([`Kv`]):
//! - [`Scope::Local`]: this process's memory ([`MemoryStore`]). Microseconds, never unavailable;
//!   for hot-path counters.
//! - [`Scope::Shared`]: Redis ([`RedisStore`]) when configured, so every edge sees the same value;
//!   otherwise a second in-process store, which keeps the single-machine edge free of external
//!   services. Redis can be down: calls then fail fast with [`KvError::Unavailable`] and the caller
//!   decides (a rate limiter falls back to local counters, a cache treats it as a miss).
//!
//! Every operation carries a TTL and is atomic on its own; [`Kv::compare_and_set`] is the building
//! block for anything read-modify-write (GCRA, leases). Keys are opaque: namespacing (per policy)
//! is the caller's job, see [`Kv::namespaced`].

mod memory;
mod redis_store;

pub use memory::{BYTES_PER_ENTRY, MemoryStore};
pub use redis_store::{RedisSettings, RedisStore};

use std::{sync::Arc, time::Duration};

/// Longest key accepted, in bytes.
pub const MAX_KEY: usize = 512;
/// Longest value accepted, in bytes.
pub const MAX_VALUE: usize = 64 * 1024;
/// Longest TTL; a TTL of zero means this.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Where a key lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// This process only.
    Local,
    /// Every edge sharing the configured Redis (this process only without Redis).
    Shared,
}

/// Why an operation did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// The store is down, refused, or did not answer within its timeout.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The operation is malformed (key or value too large, value not an integer, ...).
    #[error("invalid: {0}")]
    Invalid(String),
}

/// Both scopes. Cheap to clone.
#[derive(Clone)]
pub struct Kv {
    local: Arc<MemoryStore>,
    shared: Shared,
}

#[derive(Clone)]
enum Shared {
    Memory(Arc<MemoryStore>),
    Redis(Arc<RedisStore>),
}

impl std::fmt::Debug for Kv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kv")
            .field("shared", &self.shared_backend())
            .finish_non_exhaustive()
    }
}

impl Kv {
    /// Both scopes in memory, each holding at most `max_entries` keys.
    pub fn memory(max_entries: usize) -> Self {
        Self {
            local: Arc::new(MemoryStore::new(max_entries)),
            shared: Shared::Memory(Arc::new(MemoryStore::new(max_entries))),
        }
    }

    /// Local scope in memory, shared scope in Redis. Does not connect yet: the first operation
    /// does, so an edge starts (and serves) while Redis is down.
    pub fn with_redis(max_entries: usize, redis: RedisSettings) -> Result<Self, KvError> {
        Ok(Self {
            local: Arc::new(MemoryStore::new(max_entries)),
            shared: Shared::Redis(Arc::new(RedisStore::new(redis)?)),
        })
    }

    /// Local scope in memory, shared scope on an existing Redis store (shared with other users of
    /// the same connection).
    pub fn with_redis_store(max_entries: usize, redis: Arc<RedisStore>) -> Self {
        Self {
            local: Arc::new(MemoryStore::new(max_entries)),
            shared: Shared::Redis(redis),
        }
    }

    /// `"redis"` or `"memory"`: what backs the shared scope.
    pub fn shared_backend(&self) -> &'static str {
        match self.shared {
            Shared::Memory(_) => "memory",
            Shared::Redis(_) => "redis",
        }
    }

    /// A view whose keys are all prefixed with `prefix` (e.g. `policy:auth-jwt:`).
    pub fn namespaced(&self, prefix: impl Into<String>) -> Namespaced {
        Namespaced {
            kv: self.clone(),
            prefix: prefix.into(),
        }
    }

    /// The value of `key`.
    pub async fn get(&self, scope: Scope, key: &str) -> Result<Option<String>, KvError> {
        check_key(key)?;
        match self.pick(scope) {
            Backend::Memory(m) => Ok(m.get(key)),
            Backend::Redis(r) => r.get(key).await,
        }
    }

    /// Sets `key` to `value` for `ttl` (zero: [`MAX_TTL`]).
    pub async fn set(
        &self,
        scope: Scope,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<(), KvError> {
        check_key(key)?;
        check_value(value)?;
        let ttl = clamp_ttl(ttl);
        match self.pick(scope) {
            Backend::Memory(m) => {
                m.set(key, value, ttl);
                Ok(())
            }
            Backend::Redis(r) => r.set(key, value, ttl).await,
        }
    }

    /// Adds `delta` to the integer at `key` (absent: 0) and returns the result. `ttl` applies
    /// when the key is created.
    pub async fn increment(
        &self,
        scope: Scope,
        key: &str,
        delta: i64,
        ttl: Duration,
    ) -> Result<i64, KvError> {
        check_key(key)?;
        let ttl = clamp_ttl(ttl);
        match self.pick(scope) {
            Backend::Memory(m) => m.increment(key, delta, ttl),
            Backend::Redis(r) => r.increment(key, delta, ttl).await,
        }
    }

    /// Sets `key` to `value` if its current value is `expected` (`None`: absent). Returns whether
    /// it did.
    pub async fn compare_and_set(
        &self,
        scope: Scope,
        key: &str,
        expected: Option<&str>,
        value: &str,
        ttl: Duration,
    ) -> Result<bool, KvError> {
        check_key(key)?;
        check_value(value)?;
        let ttl = clamp_ttl(ttl);
        match self.pick(scope) {
            Backend::Memory(m) => Ok(m.compare_and_set(key, expected, value, ttl)),
            Backend::Redis(r) => r.compare_and_set(key, expected, value, ttl).await,
        }
    }

    fn pick(&self, scope: Scope) -> Backend<'_> {
        match (scope, &self.shared) {
            (Scope::Local, _) => Backend::Memory(&self.local),
            (Scope::Shared, Shared::Memory(m)) => Backend::Memory(m),
            (Scope::Shared, Shared::Redis(r)) => Backend::Redis(r),
        }
    }
}

enum Backend<'a> {
    Memory(&'a MemoryStore),
    Redis(&'a RedisStore),
}

/// A [`Kv`] whose keys carry a fixed prefix.
#[derive(Debug, Clone)]
pub struct Namespaced {
    kv: Kv,
    prefix: String,
}

impl Namespaced {
    fn key(&self, key: &str) -> Result<String, KvError> {
        check_key(key)?;
        Ok(format!("{}{key}", self.prefix))
    }

    /// See [`Kv::get`].
    pub async fn get(&self, scope: Scope, key: &str) -> Result<Option<String>, KvError> {
        self.kv.get(scope, &self.key(key)?).await
    }

    /// See [`Kv::set`].
    pub async fn set(
        &self,
        scope: Scope,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<(), KvError> {
        self.kv.set(scope, &self.key(key)?, value, ttl).await
    }

    /// See [`Kv::increment`].
    pub async fn increment(
        &self,
        scope: Scope,
        key: &str,
        delta: i64,
        ttl: Duration,
    ) -> Result<i64, KvError> {
        self.kv.increment(scope, &self.key(key)?, delta, ttl).await
    }

    /// See [`Kv::compare_and_set`].
    pub async fn compare_and_set(
        &self,
        scope: Scope,
        key: &str,
        expected: Option<&str>,
        value: &str,
        ttl: Duration,
    ) -> Result<bool, KvError> {
        self.kv
            .compare_and_set(scope, &self.key(key)?, expected, value, ttl)
            .await
    }
}

fn check_key(key: &str) -> Result<(), KvError> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(KvError::Invalid(format!(
            "key must be 1 to {MAX_KEY} bytes, got {}",
            key.len()
        )));
    }
    Ok(())
}

fn check_value(value: &str) -> Result<(), KvError> {
    if value.len() > MAX_VALUE {
        return Err(KvError::Invalid(format!(
            "value of {} bytes (at most {MAX_VALUE})",
            value.len()
        )));
    }
    Ok(())
}

fn clamp_ttl(ttl: Duration) -> Duration {
    if ttl.is_zero() || ttl > MAX_TTL {
        MAX_TTL
    } else {
        ttl
    }
}

#[cfg(test)]
mod tests;
