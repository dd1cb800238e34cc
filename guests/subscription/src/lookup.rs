//! Whether a subject has an active subscription: from a fresh cached answer, else the user
//! service, else (when allowed) the last known answer.

use crate::edge::policy::kv::{Error as KvError, Scope};
use crate::edge::policy::outbound_http::Error as HttpError;
use crate::settings::{OnError, Settings};
use serde::{Deserialize, Serialize};

/// What the lookup needs from the edge (the imports, or a fake in tests).
pub(crate) trait Host {
    fn now_ms(&self) -> u64;
    fn kv_get(&self, scope: Scope, key: &str) -> Result<Option<String>, KvError>;
    fn kv_set(&self, scope: Scope, key: &str, value: &str, ttl_ms: u64) -> Result<(), KvError>;
    /// A GET with `headers`: the status and body.
    fn get(
        &self,
        url: &str,
        headers: Vec<(String, String)>,
        timeout_ms: u32,
    ) -> Result<(u16, Vec<u8>), HttpError>;
    fn count(&self, counter: &str);
    fn warn(&self, message: &str);
}

/// A cached answer, as stored at `sub:<user_id>` in kv.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub(crate) active: bool,
    pub(crate) at_ms: u64,
}

/// How usable a cached answer is at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Age {
    /// Within `cache_ttl` (active) or `inactive_ttl` (inactive): decide without asking.
    Fresh,
    /// Past that but within `stale_max`: usable only when the service cannot answer.
    Stale,
    /// Too old to use at all.
    Expired,
}

pub(crate) fn age(entry: &Entry, now_ms: u64, s: &Settings) -> Age {
    let age = now_ms.saturating_sub(entry.at_ms);
    let ttl = if entry.active {
        s.cache_ttl_ms
    } else {
        s.inactive_ttl_ms
    };
    if age < ttl {
        Age::Fresh
    } else if age < s.stale_max_ms {
        Age::Stale
    } else {
        Age::Expired
    }
}

#[derive(Deserialize)]
struct Answer {
    active: bool,
}

/// The user service's answer: 200 `{"active": bool}`, 404 (inactive), or an error.
pub(crate) fn interpret(response: Result<(u16, Vec<u8>), HttpError>) -> Result<bool, String> {
    match response {
        Ok((200, body)) => serde_json::from_slice::<Answer>(&body)
            .map(|a| a.active)
            .map_err(|e| format!("unreadable answer: {e}")),
        Ok((404, _)) => Ok(false),
        Ok((status, _)) => Err(format!("status {status}")),
        Err(HttpError::Timeout) => Err("timeout".into()),
        Err(HttpError::TooLarge) => Err("answer too large".into()),
        Err(HttpError::Denied(why)) => Err(format!("not on the outbound allow-list: {why}")),
        Err(HttpError::Failed(why)) => Err(format!("failed: {why}")),
    }
}

/// The verdict of a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Active,
    Inactive,
    /// No answer could be had (or used).
    Unavailable,
}

impl From<bool> for Verdict {
    fn from(active: bool) -> Self {
        if active {
            Verdict::Active
        } else {
            Verdict::Inactive
        }
    }
}

/// The `shared` kv scope, switching to `local` for the rest of the request when the shared store
/// is unavailable.
struct Cache<'h, H: Host> {
    host: &'h H,
    scope: Scope,
}

impl<H: Host> Cache<'_, H> {
    fn fall_back(&mut self, why: &str) -> bool {
        if self.scope == Scope::Shared {
            self.host
                .warn(&format!("shared kv unavailable ({why}); using local"));
            self.host.count("kv_fallback");
            self.scope = Scope::Local;
            return true;
        }
        false
    }

    fn get(&mut self, key: &str) -> Option<Entry> {
        let text = match self.host.kv_get(self.scope, key) {
            Ok(text) => text,
            Err(KvError::Unavailable(why)) if self.fall_back(&why) => {
                self.host.kv_get(self.scope, key).ok().flatten()
            }
            Err(e) => {
                self.host.warn(&format!("kv get {key}: {e:?}"));
                None
            }
        };
        serde_json::from_str(&text?).ok()
    }

    fn set(&mut self, key: &str, entry: Entry, ttl_ms: u64) {
        let Ok(value) = serde_json::to_string(&entry) else {
            return;
        };
        let result = match self.host.kv_set(self.scope, key, &value, ttl_ms) {
            Err(KvError::Unavailable(why)) if self.fall_back(&why) => {
                self.host.kv_set(self.scope, key, &value, ttl_ms)
            }
            other => other,
        };
        if let Err(e) = result {
            self.host.warn(&format!("kv set {key}: {e:?}"));
        }
    }
}

/// Looks `user_id` up. `forward` is a request header to pass through to the user service.
pub(crate) fn check(
    host: &impl Host,
    s: &Settings,
    user_id: &str,
    forward: Option<(String, String)>,
) -> Verdict {
    let now = host.now_ms();
    let key = format!("sub:{user_id}");
    let mut cache = Cache {
        host,
        scope: Scope::Shared,
    };
    let cached = cache.get(&key);
    if let Some(entry) = cached.filter(|e| age(e, now, s) == Age::Fresh) {
        host.count("cache_hit");
        return entry.active.into();
    }
    host.count("cache_miss");

    let mut headers = vec![("accept".to_owned(), "application/json".to_owned())];
    headers.extend(forward);
    let url = s.lookup_url(user_id);
    match interpret(host.get(&url, headers, s.timeout_ms)) {
        Ok(active) => {
            cache.set(&key, Entry { active, at_ms: now }, s.kv_ttl_ms());
            active.into()
        }
        Err(why) => {
            host.count("service_error");
            host.warn(&format!("user service {url}: {why}"));
            match cached {
                Some(e) if s.on_error == OnError::Stale && age(&e, now, s) != Age::Expired => {
                    host.count("stale_served");
                    e.active.into()
                }
                _ => Verdict::Unavailable,
            }
        }
    }
}
