//! Subscription policy: admits a request only when the user service says the subject (from an
//! earlier policy, usually auth-jwt) has an active subscription.
//!
//! Config (`[policies.NAME.config]`; empty values count as unset):
//! - `url` (required): the user service base URL (`${USER_SERVICE_URL}`).
//! - `path` (default `/api/v1/users/{user_id}/subscription`): appended to `url`, with
//!   `{user_id}` percent-encoded.
//! - `timeout` (default `2s`): `500ms`, `2s` or a bare number of seconds.
//! - `cache_ttl` (default 300 s) / `inactive_ttl` (default 60 s): how long an active / inactive
//!   answer is trusted without asking again.
//! - `on_error` (`stale` default | `closed`), `stale_max` (default 3600 s): when the service
//!   cannot answer, `stale` decides from a last known answer younger than `stale_max`.
//! - `subject_key` (default `sub`): the context key holding the subject.
//! - `forward_header`: a request header (e.g. `authorization`) passed to the user service.
//!
//! Answers are cached in kv (`shared` scope, `local` when shared is unavailable) at
//! `sub:<user_id>`. Allow adds context `subscription = active`. Denials: 401 `missing_subject`, 401 `invalid_subject` (a subject of only dots),
//! 403 `no_active_subscription`, 503 `subscription_unavailable`, 503 `policy_misconfigured`.

wit_bindgen::generate!({ world: "policy", path: "../../wit" });

mod lookup;
mod settings;

#[cfg(test)]
mod tests;

use edge::policy::log::Level;
use edge::policy::outbound_http::{self as http, Method};
use edge::policy::types::{Allow, Decision, Deny, Request};
use edge::policy::{clock, config, kv, log, metrics};
use lookup::Verdict;
use settings::{KEYS, Settings};
use std::sync::{Arc, OnceLock};

type Parsed = Result<Arc<Settings>, Arc<str>>;

/// The settings parsed from the current config values, remembered by that text so that a bad
/// config is logged once, not on every request.
fn settings() -> Parsed {
    static SETTINGS: OnceLock<Parsed> = OnceLock::new();
    SETTINGS
        .get_or_init(|| {
            let values: Vec<Option<String>> = KEYS.iter().map(|k| config::get(k)).collect();
            Settings::parse(&values).map(Arc::new).map_err(|e| {
                log::log(Level::Error, &format!("subscription config: {e}"));
                Arc::from(e)
            })
        })
        .clone()
}

/// The edge's imports, as the lookup sees them.
struct Edge;

impl lookup::Host for Edge {
    fn now_ms(&self) -> u64 {
        clock::now_millis()
    }

    fn kv_get(&self, scope: kv::Scope, key: &str) -> Result<Option<String>, kv::Error> {
        kv::get(scope, key)
    }

    fn kv_set(
        &self,
        scope: kv::Scope,
        key: &str,
        value: &str,
        ttl_ms: u64,
    ) -> Result<(), kv::Error> {
        kv::set(scope, key, value, ttl_ms)
    }

    fn get(
        &self,
        url: &str,
        headers: Vec<(String, String)>,
        timeout_ms: u32,
    ) -> Result<(u16, Vec<u8>), http::Error> {
        let request = http::Request {
            method: Method::Get,
            url: url.to_owned(),
            headers,
            body: None,
            timeout_ms,
        };
        http::send(&request).map(|r| (r.status, r.body))
    }

    fn count(&self, counter: &str) {
        metrics::counter_add(counter, 1);
    }

    fn warn(&self, message: &str) {
        log::log(Level::Warn, message);
    }
}

fn deny(status: u16, reason: &str) -> Decision {
    Decision::Deny(Deny {
        status,
        reason: reason.into(),
        headers: Vec::new(),
    })
}

/// The value of `key` in `pairs`; the last one wins, as in the edge's context.
fn last<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

struct Subscription;

impl exports::edge::policy::decide::Guest for Subscription {
    fn decide(req: Request) -> Decision {
        let Ok(s) = settings() else {
            return deny(503, "policy_misconfigured");
        };
        let Some(user_id) = last(&req.context, &s.subject_key).filter(|u| !u.is_empty()) else {
            return deny(401, "missing_subject");
        };
        // `.` and `..` survive percent-encoding as path segments (URL parsers decode `%2E`):
        // such a subject could make the lookup hit another endpoint of the user service.
        if user_id.bytes().all(|b| b == b'.') {
            return deny(401, "invalid_subject");
        }
        let forward = s.forward_header.as_ref().and_then(|name| {
            let value = req
                .headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))?;
            Some((name.clone(), value.1.clone()))
        });
        match lookup::check(&Edge, &s, user_id, forward) {
            Verdict::Active => Decision::Allow(Allow {
                response_headers: Vec::new(),
                context: vec![("subscription".into(), "active".into())],
                propagate_query: Vec::new(),
            }),
            Verdict::Inactive => deny(403, "no_active_subscription"),
            Verdict::Unavailable => deny(503, "subscription_unavailable"),
        }
    }
}

export!(Subscription);
