//! A JWKS fetched from `jwks_url`, kept in the edge's process-local key-value store so that every
//! pooled instance shares one copy and one refresh schedule.
//!
//! kv `local` keys:
//! - `jwks`: `{"fetched_at_ms": .., "doc": "..", "url": ".."}`, kept [`JWKS_KV_TTL_MS`] so that
//!   it outlives a provider outage.
//! - `jwks_refresh` (TTL `jwks_min_refresh`): the refresh turn, taken with compare-and-set on
//!   absent before refreshing a stale copy or looking up an unknown `kid`, and set after a failed
//!   fetch. A provider that is down, or a stream of unknown `kid`s, thus costs at most one fetch
//!   per `jwks_min_refresh` per edge process. Only while there is no copy at all may concurrent
//!   requests fetch together (and none for `jwks_min_refresh` after a failure).

use crate::keys::KeySet;
use crate::reject::Reject;
use crate::settings::Remote;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

/// How long a fetched document stays usable when every refresh fails.
pub(crate) const JWKS_KV_TTL_MS: u64 = 24 * 3600 * 1000;
const DOC_KEY: &str = "jwks";
const REFRESH_KEY: &str = "jwks_refresh";

/// What the JWKS logic needs from the edge (the imports, or a fake in tests).
pub(crate) trait Env {
    fn now_ms(&self) -> u64;
    /// `kv.get` in `local` scope; errors count as absent.
    fn kv_get(&self, key: &str) -> Option<String>;
    fn kv_set(&self, key: &str, value: &str, ttl_ms: u64);
    /// `kv.compare-and-set` from absent; true when this caller took the key (or kv failed).
    fn kv_take(&self, key: &str, value: &str, ttl_ms: u64) -> bool;
    /// A GET: the status and body, or why there is none.
    fn http_get(&self, url: &str) -> Result<(u16, Vec<u8>), String>;
    fn warn(&self, message: &str);
}

#[derive(Serialize, Deserialize)]
struct Cached {
    fetched_at_ms: u64,
    doc: String,
    #[serde(default)]
    url: Option<String>,
}

/// Parsed documents by their exact text: parsing is a pure function of it.
fn parse_memo(doc: &str) -> Result<Arc<KeySet>, String> {
    const SLOTS: usize = 2;
    static MEMO: Mutex<Vec<(String, Arc<KeySet>)>> = Mutex::new(Vec::new());
    let mut memo = MEMO.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, keys)) = memo.iter().find(|(d, _)| d == doc) {
        return Ok(keys.clone());
    }
    let keys = Arc::new(KeySet::from_jwks(doc)?);
    if memo.len() == SLOTS {
        memo.remove(0);
    }
    memo.push((doc.to_owned(), keys.clone()));
    Ok(keys)
}

/// The cached document for `url` and when it was fetched.
fn load(env: &impl Env, url: &str) -> Option<(u64, Arc<KeySet>)> {
    let cached: Cached = serde_json::from_str(&env.kv_get(DOC_KEY)?).ok()?;
    if cached.url.as_deref().is_some_and(|u| u != url) {
        return None;
    }
    let keys = parse_memo(&cached.doc).ok()?;
    Some((cached.fetched_at_ms, keys))
}

/// Takes this edge's refresh turn: true for at most one caller per `min_refresh_ms`.
fn take_turn(env: &impl Env, remote: &Remote, now: u64) -> bool {
    remote.min_refresh_ms == 0 || env.kv_take(REFRESH_KEY, &now.to_string(), remote.min_refresh_ms)
}

/// Fetches, checks and stores the document; `None` (logged) when any step fails.
fn refresh(env: &impl Env, remote: &Remote, now: u64) -> Option<Arc<KeySet>> {
    let fetched = env.http_get(&remote.url).and_then(|(status, body)| {
        if status != 200 {
            return Err(format!("status {status}"));
        }
        let doc = String::from_utf8(body).map_err(|_| "body is not UTF-8".to_owned())?;
        let keys = parse_memo(&doc)?;
        Ok((doc, keys))
    });
    match fetched {
        Ok((doc, keys)) => {
            let cached = Cached {
                fetched_at_ms: now,
                doc,
                url: Some(remote.url.clone()),
            };
            if let Ok(value) = serde_json::to_string(&cached) {
                env.kv_set(DOC_KEY, &value, JWKS_KV_TTL_MS);
            }
            Some(keys)
        }
        Err(e) => {
            env.warn(&format!("JWKS refresh from {} failed: {e}", remote.url));
            if remote.min_refresh_ms > 0 {
                env.kv_set(REFRESH_KEY, &now.to_string(), remote.min_refresh_ms);
            }
            None
        }
    }
}

/// The key for a token signed with `alg` (and `kid`), from the cached document, refreshed when
/// older than `jwks_ttl` or when the `kid` is unknown.
pub(crate) fn resolve(
    env: &impl Env,
    remote: &Remote,
    alg: Algorithm,
    kid: Option<&str>,
) -> Result<DecodingKey, Reject> {
    let now = env.now_ms();
    let (fetched_at, keys) = match load(env, &remote.url) {
        // A stale copy is refreshed by one request; the others (and that one, if the refresh
        // fails) go on with the copy.
        Some((at, keys)) => {
            let refreshed = (now.saturating_sub(at) >= remote.ttl_ms
                && take_turn(env, remote, now))
            .then(|| refresh(env, remote, now))
            .flatten();
            refreshed.map_or((at, keys), |fresh| (now, fresh))
        }
        // No copy at all: any request may fetch, unless a fetch failed within `min_refresh`.
        None => {
            let held_off = remote.min_refresh_ms > 0 && env.kv_get(REFRESH_KEY).is_some();
            let fetched = (!held_off).then(|| refresh(env, remote, now)).flatten();
            (now, fetched.ok_or(Reject::JwksUnavailable)?)
        }
    };
    if let Some(key) = keys.select(alg, kid) {
        return Ok(key.clone());
    }
    // An unknown kid may mean the provider rotated its keys: look again, but not more often
    // than `min_refresh`.
    if kid.is_some()
        && now.saturating_sub(fetched_at) >= remote.min_refresh_ms
        && take_turn(env, remote, now)
        && let Some(key) = refresh(env, remote, now).and_then(|k| k.select(alg, kid).cloned())
    {
        return Ok(key);
    }
    Err(Reject::UnknownKey)
}
