//! Rate-limit policy: a GCRA budget per subject, client or route, kept in the edge's key-value
//! store so that every pooled instance (and, in `global` mode, every edge) spends the same one.
//!
//! Config (`[policies.NAME.config]`; empty values count as unset):
//! - `rate` (required): `N/s`, `N/m` or `N/h`, the long-run average.
//! - `burst` (default N of `rate`): requests a quiet key may make at once.
//! - `key` (`subject` default: context `sub`, else the client address | `client` |
//!   `route_subject`): whose budget a request spends.
//! - `mode` (`local` default | `global`): the budget of this edge process, or of every edge
//!   (kv `shared` scope, falling back to `local` when unavailable).
//! - `rate.<route>` / `burst.<route>`: a route's own limit, with its own budget.
//! - `cas_retries` (default 16): retries of a compare-and-set lost to a concurrent request.
//!
//! Allow adds `ratelimit-limit`, `ratelimit-remaining` and `ratelimit-reset` to the response.
//! Denials: 429 `rate_limited` (with `retry-after` and the same headers), 503
//! `policy_misconfigured`, 503 `rate_limit_unavailable` when the store refuses the key.

wit_bindgen::generate!({ world: "policy", path: "../../wit" });

mod gcra;
mod limiter;
mod settings;

#[cfg(test)]
mod tests;

use edge::policy::log::Level;
use edge::policy::types::{Allow, Decision, Deny, Request};
use edge::policy::{clock, config, kv, log, metrics};
use gcra::{Outcome, ceil_secs};
use limiter::Failure;
use settings::Settings;
use std::sync::{Arc, Mutex};

/// The edge's imports, as the limiter sees them.
struct Edge;

impl limiter::Host for Edge {
    fn now_ms(&self) -> u64 {
        clock::now_millis()
    }

    fn kv_get(&self, scope: kv::Scope, key: &str) -> Result<Option<String>, kv::Error> {
        kv::get(scope, key)
    }

    fn kv_cas(
        &self,
        scope: kv::Scope,
        key: &str,
        expected: Option<&str>,
        value: &str,
        ttl_ms: u64,
    ) -> Result<bool, kv::Error> {
        kv::compare_and_set(scope, key, expected, value, ttl_ms)
    }

    fn count(&self, counter: &str) {
        metrics::counter_add(counter, 1);
    }

    fn warn(&self, message: &str) {
        log::log(Level::Warn, message);
    }
}

/// The settings for `route`, parsed once per route: an instance's config never changes (a reload
/// makes new instances).
type Parsed = Result<Arc<Settings>, String>;

fn settings(route: &str) -> Parsed {
    static BY_ROUTE: Mutex<Vec<(String, Parsed)>> = Mutex::new(Vec::new());
    let mut memo = BY_ROUTE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, s)) = memo.iter().find(|(r, _)| r == route) {
        return s.clone();
    }
    let parsed = Settings::parse(config::get, route).map(Arc::new);
    if memo.len() < 64 {
        memo.push((route.to_owned(), parsed.clone()));
    }
    parsed
}

/// Logs a config error once, not on every request.
fn report(error: &str) {
    static LAST: Mutex<String> = Mutex::new(String::new());
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if *last != error {
        log::log(Level::Error, &format!("rate-limit config: {error}"));
        *last = error.to_owned();
    }
}

fn header(name: &str, value: u64) -> (String, String) {
    (name.to_owned(), value.to_string())
}

fn deny(status: u16, reason: &str, headers: Vec<(String, String)>) -> Decision {
    Decision::Deny(Deny {
        status,
        reason: reason.into(),
        headers,
    })
}

/// The answer to a request, from what the limiter decided.
fn respond(result: Result<Outcome, Failure>, s: &Settings) -> Decision {
    let limit = header("ratelimit-limit", s.limit.burst);
    let refused = |retry_after_us: u64, reset_us: u64| {
        let retry_after = ceil_secs(retry_after_us).max(1);
        let headers = vec![
            header("retry-after", retry_after),
            limit.clone(),
            header("ratelimit-remaining", 0),
            header("ratelimit-reset", ceil_secs(reset_us).max(retry_after)),
        ];
        deny(429, "rate_limited", headers)
    };
    match result {
        Ok(Outcome::Allow {
            remaining,
            reset_us,
            ..
        }) => Decision::Allow(Allow {
            response_headers: vec![
                limit.clone(),
                header("ratelimit-remaining", remaining),
                header("ratelimit-reset", ceil_secs(reset_us)),
            ],
            context: Vec::new(),
            propagate_query: Vec::new(),
        }),
        Ok(Outcome::Deny {
            retry_after_us,
            reset_us,
        }) => refused(retry_after_us, reset_us),
        Err(Failure::Contended) => refused(1, 1),
        Err(Failure::Store(_)) => deny(503, "rate_limit_unavailable", Vec::new()),
    }
}

struct RateLimit;

impl exports::edge::policy::decide::Guest for RateLimit {
    fn decide(req: Request) -> Decision {
        let s = match settings(&req.route) {
            Ok(s) => s,
            Err(e) => {
                report(&e);
                return deny(503, "policy_misconfigured", Vec::new());
            }
        };
        let subject = req.context.iter().rev().find(|(k, _)| k == "sub");
        let key = s.state_key(
            &req.route,
            subject.map(|(_, v)| v.as_str()),
            &req.client_addr,
        );
        let result = limiter::spend(&Edge, &s, &key);
        if let Err(Failure::Store(why)) = &result {
            log::log(Level::Error, &format!("rate-limit state at {key}: {why}"));
        }
        respond(result, &s)
    }
}

export!(RateLimit);
