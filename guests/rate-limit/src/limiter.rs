//! The GCRA state in the edge's key-value store: read, decide, compare-and-set, retry on a lost
//! race. A request is admitted only when its own write of the new TAT succeeded, so concurrent
//! requests (in this process or, in `global` mode, on every edge) never exceed the budget.

use crate::edge::policy::kv::{Error as KvError, Scope};
use crate::gcra::{Outcome, admit, ttl_ms};
use crate::settings::{Mode, Settings};

/// What the limiter needs from the edge (the imports, or a fake in tests).
pub(crate) trait Host {
    fn now_ms(&self) -> u64;
    fn kv_get(&self, scope: Scope, key: &str) -> Result<Option<String>, KvError>;
    fn kv_cas(
        &self,
        scope: Scope,
        key: &str,
        expected: Option<&str>,
        value: &str,
        ttl_ms: u64,
    ) -> Result<bool, KvError>;
    fn count(&self, counter: &str);
    fn warn(&self, message: &str);
}

/// Why no outcome could be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Every attempt lost its compare-and-set to a concurrent request.
    Contended,
    /// The store refused the call (`local` failing, or an invalid key such as an oversized one).
    Store(String),
}

/// Read-compute-CAS in `scope`, up to `1 + cas_retries` times.
fn attempt(
    host: &impl Host,
    scope: Scope,
    key: &str,
    now_us: u64,
    s: &Settings,
) -> Result<Result<Outcome, Failure>, KvError> {
    for _ in 0..=s.cas_retries {
        let stored = host.kv_get(scope, key)?;
        let tat = stored.as_deref().and_then(|v| v.trim().parse().ok());
        let outcome = admit(tat, now_us, &s.limit);
        let Outcome::Allow { new_tat, .. } = outcome else {
            return Ok(Ok(outcome));
        };
        let ttl = ttl_ms(new_tat - now_us);
        if host.kv_cas(scope, key, stored.as_deref(), &new_tat.to_string(), ttl)? {
            return Ok(Ok(outcome));
        }
    }
    Ok(Err(Failure::Contended))
}

/// Spends one request of the budget at `key`, or says why not.
pub(crate) fn spend(host: &impl Host, s: &Settings, key: &str) -> Result<Outcome, Failure> {
    let now_us = host.now_ms().saturating_mul(1000);
    let scope = match s.mode {
        Mode::Local => Scope::Local,
        Mode::Global => Scope::Shared,
    };
    match attempt(host, scope, key, now_us, s) {
        Ok(result) => result,
        Err(KvError::Unavailable(why)) if scope == Scope::Shared => {
            host.warn(&format!("shared kv unavailable ({why}); limiting locally"));
            host.count("global_fallback");
            attempt(host, Scope::Local, key, now_us, s)
                .unwrap_or_else(|e| Err(Failure::Store(format!("{e:?}"))))
        }
        Err(e) => Err(Failure::Store(format!("{e:?}"))),
    }
}
