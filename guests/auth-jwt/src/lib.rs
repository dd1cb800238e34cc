//! JWT policy: admits a request only with a valid bearer token, and hands its subject (and chosen
//! claims) to the policies after it.
//!
//! Config (`[policies.NAME.config]`; empty values count as unset):
//! - `header` (default `authorization`): the request header with `Bearer <token>`; `""` disables.
//! - `query_param` (default `access_token`): where to look when the header has no token; `""`
//!   disables.
//! - `subprotocol_prefix` (default `access_token.`): an offered WebSocket subprotocol starting
//!   with it carries the token when the header has none (browsers cannot set headers on a
//!   WebSocket: `new WebSocket(url, ["signaling", "access_token." + jwt])`); `""` disables.
//!   A token there and a different one in the query are refused as ambiguous.
//! - `algorithms` (comma list; default `HS256` when `secret` is set, plus `RS256,ES256,EdDSA` when
//!   a public key source is set): the algorithms a token may use.
//! - `secret`: the HS* shared secret (`${JWT_SECRET_KEY}`). HS* tokens are verified with it only.
//! - `public_key_pem` | `jwks` (inline document) | `jwks_url` (at most one): the public keys for
//!   RS*/PS*/ES*/EdDSA tokens. `jwks_url` is cached in kv (`jwks_ttl`, default 300 s; unknown
//!   `kid`s refetch at most every `jwks_min_refresh`, default 30 s).
//! - `issuer`, `audience` (comma list, any match): checked when set.
//! - `leeway` (default 30 s), `required_claims` (comma list; `exp` always),
//!   `max_token_bytes` (default 8192), `forward_claims` (comma list, copied to `jwt.<name>`).
//!
//! On success the context gets `sub` (when the token has one), `expires_at` (`exp` + `leeway`,
//! Unix seconds: the signaling endpoints close a WebSocket then) and the forwarded claims. Denials
//! are 401 with a `www-authenticate: Bearer ...` challenge and a reason code from
//! [`reject::Reject::reason`]; 503 `jwks_unavailable` when no key could be obtained, 503
//! `policy_misconfigured` for a config that cannot work (logged once per config text).

wit_bindgen::generate!({ world: "policy", path: "../../wit" });

mod jwks;
mod keys;
mod reject;
mod settings;
mod verify;

#[cfg(test)]
mod tests;

use edge::policy::log::Level;
use edge::policy::outbound_http::{self as http, Method};
use edge::policy::types::{Allow, Decision, Deny, Request};
use edge::policy::{clock, config, kv, log};
use reject::Reject;
use settings::{KEYS, Settings};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, OnceLock};

type Parsed = Result<Arc<Settings>, Arc<str>>;

/// The settings parsed from the config. An instance's config never changes (a reload makes new
/// instances), so it is read and parsed (PEM and JWKS included) once per instance.
fn settings() -> Parsed {
    static SETTINGS: OnceLock<Parsed> = OnceLock::new();
    SETTINGS
        .get_or_init(|| {
            let values: Vec<Option<String>> = KEYS.iter().map(|k| config::get(k)).collect();
            Settings::parse(&values).map(Arc::new).map_err(|e| {
                log::log(Level::Error, &format!("auth-jwt config: {e}"));
                Arc::from(e)
            })
        })
        .clone()
}

/// The edge's imports, as the JWKS logic sees them.
struct Edge;

impl jwks::Env for Edge {
    fn now_ms(&self) -> u64 {
        clock::now_millis()
    }

    fn kv_get(&self, key: &str) -> Option<String> {
        kv::get(kv::Scope::Local, key).ok().flatten()
    }

    fn kv_set(&self, key: &str, value: &str, ttl_ms: u64) {
        if let Err(e) = kv::set(kv::Scope::Local, key, value, ttl_ms) {
            self.warn(&format!("kv set {key}: {e:?}"));
        }
    }

    fn kv_take(&self, key: &str, value: &str, ttl_ms: u64) -> bool {
        kv::compare_and_set(kv::Scope::Local, key, None, value, ttl_ms).unwrap_or(true)
    }

    fn http_get(&self, url: &str) -> Result<(u16, Vec<u8>), String> {
        let request = http::Request {
            method: Method::Get,
            url: url.to_owned(),
            headers: vec![("accept".into(), "application/json".into())],
            body: None,
            timeout_ms: 0,
        };
        http::send(&request)
            .map(|r| (r.status, r.body))
            .map_err(|e| format!("{e:?}"))
    }

    fn warn(&self, message: &str) {
        log::log(Level::Warn, message);
    }
}

fn deny(reject: Reject) -> Decision {
    Decision::Deny(Deny {
        status: reject.status(),
        reason: reject.reason().into(),
        headers: reject
            .challenge()
            .map(|c| ("www-authenticate".to_owned(), c.to_owned()))
            .into_iter()
            .collect(),
    })
}

/// The context an allow adds: `sub`, `expires_at` (the last second this policy admits the
/// token: `exp` plus the leeway, Unix seconds; a WebSocket admitted with it is closed then),
/// then `jwt.<name>` for each forwarded claim present.
fn context(claims: &verify::Claims, s: &Settings) -> Vec<(String, String)> {
    let present = |name: &str| claims.get(name).filter(|v| !v.is_null());
    let sub = present("sub").map(|v| ("sub".to_owned(), verify::claim_text(v)));
    let expires = present("exp")
        .and_then(serde_json::Value::as_f64)
        .filter(|exp| exp.is_finite() && *exp >= 0.0)
        .map(|exp| {
            // Rounded up: this policy admits the token until `exp + leeway` (a fraction
            // included). Saturating: a token valid until the year 300 000 000 is valid
            // "forever" (the signaling endpoints read a time they cannot hold as no expiry).
            let at = (exp.ceil() as u64).saturating_add(s.leeway);
            ("expires_at".to_owned(), at.to_string())
        });
    let forwarded = s.forward_claims.iter().filter_map(|name| {
        let value = present(name)?;
        Some((format!("jwt.{name}"), verify::claim_text(value)))
    });
    sub.into_iter().chain(expires).chain(forwarded).collect()
}

/// Tokens whose signature this instance already verified, with their claims. Verification is a
/// pure function of the token and the keys, and an instance's keys never change (except a
/// `jwks_url` document, whose tokens are therefore never remembered), so a viewer's next segment
/// request skips the signature and JSON work. The claims (expiry, audience, ...) are still judged
/// on every request, at the edge's time.
const MEMO_SLOTS: usize = 64;

fn authenticate(s: &Settings, req: &Request) -> Result<Arc<verify::Claims>, Reject> {
    static MEMO: Mutex<Vec<(u64, String, Arc<verify::Claims>)>> = Mutex::new(Vec::new());
    static KEYS: OnceLock<RandomState> = OnceLock::new();
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let memoizable = !matches!(s.public, settings::PublicKeys::Remote(_));
    let token = verify::find_token(&req.headers, &req.query, s)?;
    // Looked up by a keyed hash (random SipHash keys per instance): comparing stored tokens byte
    // by byte would time-leak other viewers' tokens, and nobody can make a hash match on purpose.
    let digest = KEYS.get_or_init(RandomState::new).hash_one(token.as_ref());
    if memoizable && token.len() <= s.max_token_bytes {
        let hit = MEMO
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(h, t, _)| *h == digest && *t == *token)
            .map(|(_, _, c)| c.clone());
        if let Some(claims) = hit {
            verify::check_claims(&claims, s, clock::now_millis() / 1000)?;
            return Ok(claims);
        }
    }
    let claims = Arc::new(verify::authenticate(&Edge, s, &req.headers, &req.query)?);
    if memoizable {
        let mut memo = MEMO.lock().unwrap_or_else(|e| e.into_inner());
        let entry = (digest, token.into_owned(), claims.clone());
        if memo.len() < MEMO_SLOTS {
            memo.push(entry);
        } else {
            let i = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % MEMO_SLOTS;
            memo[i] = entry;
        }
    }
    Ok(claims)
}

struct AuthJwt;

impl exports::edge::policy::decide::Guest for AuthJwt {
    fn decide(req: Request) -> Decision {
        let Ok(s) = settings() else {
            return deny(Reject::PolicyMisconfigured);
        };
        match authenticate(&s, &req) {
            Ok(claims) => Decision::Allow(Allow {
                response_headers: Vec::new(),
                context: context(&claims, &s),
                propagate_query: Vec::new(),
            }),
            Err(reject) => deny(reject),
        }
    }
}

export!(AuthJwt);
