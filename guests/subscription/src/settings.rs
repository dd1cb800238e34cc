//! The policy's config, parsed and checked as a whole.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// Every config key the policy reads, in the order [`Settings::parse`] receives them.
pub(crate) const KEYS: [&str; 9] = [
    "url",
    "path",
    "timeout",
    "cache_ttl",
    "inactive_ttl",
    "on_error",
    "stale_max",
    "subject_key",
    "forward_header",
];

/// Bytes kept as they are in a path segment: the RFC 3986 unreserved set less `.`, so that a
/// subject of `..` cannot climb out of the template's path.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'~');

/// What to do when the user service cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnError {
    /// Decide from the last known answer when it is younger than `stale_max`.
    Stale,
    /// Deny (503).
    Closed,
}

#[derive(Debug)]
pub(crate) struct Settings {
    /// Base URL without a trailing `/`.
    pub(crate) url: String,
    pub(crate) path: String,
    pub(crate) timeout_ms: u32,
    pub(crate) cache_ttl_ms: u64,
    pub(crate) inactive_ttl_ms: u64,
    pub(crate) on_error: OnError,
    pub(crate) stale_max_ms: u64,
    pub(crate) subject_key: String,
    /// Lower-case request header name passed through to the user service.
    pub(crate) forward_header: Option<String>,
}

/// A timeout as `500ms`, `2s`, or a bare number of seconds (`2`, `0.5`), in milliseconds.
pub(crate) fn parse_timeout(text: &str) -> Result<u32, String> {
    let text = text.trim();
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 1.0)
    } else {
        (text.strip_suffix('s').unwrap_or(text), 1000.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`timeout` is not a duration: {text:?}"))?;
    let ms = (value * scale).round();
    if !(0.0..=f64::from(u32::MAX)).contains(&ms) {
        return Err(format!("`timeout` is out of range: {text:?}"));
    }
    Ok(ms as u32)
}

fn seconds(value: Option<&str>, key: &str, default: u64) -> Result<u64, String> {
    match value {
        None => Ok(default.saturating_mul(1000)),
        Some(v) => v
            .trim()
            .parse::<u64>()
            .map(|s| s.saturating_mul(1000))
            .map_err(|_| format!("`{key}` is not a whole number of seconds: {v:?}")),
    }
}

impl Settings {
    /// Parses the config values of [`KEYS`] (`values[i]` is the value of `KEYS[i]`). Empty
    /// strings count as unset, so an unresolved `${VAR}` falls back to the default.
    pub(crate) fn parse(values: &[Option<String>]) -> Result<Settings, String> {
        let get = |key: &str| -> Option<&str> {
            let i = KEYS.iter().position(|k| *k == key)?;
            values.get(i)?.as_deref().filter(|v| !v.trim().is_empty())
        };
        let url = get("url").ok_or("`url` is required")?.trim();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("`url` is not an http(s) URL: {url:?}"));
        }
        let path = get("path").unwrap_or("/api/v1/users/{user_id}/subscription");
        if !path.contains("{user_id}") {
            return Err(format!("`path` has no {{user_id}}: {path:?}"));
        }
        let on_error = match get("on_error").map(str::trim) {
            None | Some("stale") => OnError::Stale,
            Some("closed") => OnError::Closed,
            Some(other) => return Err(format!("`on_error` is `stale` or `closed`, not {other:?}")),
        };
        Ok(Settings {
            url: url.trim_end_matches('/').to_owned(),
            path: path.trim().to_owned(),
            timeout_ms: get("timeout").map_or(Ok(2000), parse_timeout)?,
            cache_ttl_ms: seconds(get("cache_ttl"), "cache_ttl", 300)?,
            inactive_ttl_ms: seconds(get("inactive_ttl"), "inactive_ttl", 60)?,
            on_error,
            stale_max_ms: seconds(get("stale_max"), "stale_max", 3600)?,
            subject_key: get("subject_key").unwrap_or("sub").trim().to_owned(),
            forward_header: get("forward_header").map(|h| h.trim().to_ascii_lowercase()),
        })
    }

    /// The user service URL for `user_id` (percent-encoded into the path template).
    pub(crate) fn lookup_url(&self, user_id: &str) -> String {
        let id = utf8_percent_encode(user_id, SEGMENT).to_string();
        format!("{}{}", self.url, self.path.replace("{user_id}", &id))
    }

    /// How long the store keeps an answer: long enough to be served stale.
    pub(crate) fn kv_ttl_ms(&self) -> u64 {
        self.stale_max_ms
            .max(self.cache_ttl_ms)
            .max(self.inactive_ttl_ms)
            .max(1)
    }
}
