//! The policy's config, parsed and checked as a whole.

use crate::keys::KeySet;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use std::str::FromStr;
use std::sync::Arc;

/// Every config key the policy reads, in the order [`Settings::parse`] receives them.
pub(crate) const KEYS: [&str; 16] = [
    "header",
    "query_param",
    "subprotocol_prefix",
    "algorithms",
    "secret",
    "public_key_pem",
    "jwks",
    "jwks_url",
    "jwks_ttl",
    "jwks_min_refresh",
    "issuer",
    "audience",
    "leeway",
    "required_claims",
    "max_token_bytes",
    "forward_claims",
];

/// Where asymmetric keys come from.
pub(crate) enum PublicKeys {
    /// None configured: only HS* tokens can be verified.
    None,
    /// `public_key_pem` or an inline `jwks`, parsed once.
    Static(Arc<KeySet>),
    /// `jwks_url`, fetched and cached through the edge's key-value store.
    Remote(Remote),
}

/// A JWKS fetched from `url`.
pub(crate) struct Remote {
    pub(crate) url: String,
    pub(crate) ttl_ms: u64,
    pub(crate) min_refresh_ms: u64,
}

pub(crate) struct Settings {
    /// Lower-case header name; empty: tokens are not read from headers.
    pub(crate) header: String,
    pub(crate) query_param: Option<String>,
    /// Offered WebSocket subprotocols starting with this carry the token (browsers cannot set
    /// headers on a WebSocket); `None`: not read from there.
    pub(crate) subprotocol_prefix: Option<String>,
    pub(crate) algorithms: Vec<Algorithm>,
    pub(crate) secret: Option<DecodingKey>,
    pub(crate) public: PublicKeys,
    pub(crate) issuer: Option<String>,
    pub(crate) audience: Vec<String>,
    pub(crate) leeway: u64,
    /// Claims that must be present; always includes `exp`.
    pub(crate) required_claims: Vec<String>,
    pub(crate) max_token_bytes: usize,
    pub(crate) forward_claims: Vec<String>,
}

/// The family an algorithm belongs to.
pub(crate) fn family(alg: Algorithm) -> AlgorithmFamily {
    [
        AlgorithmFamily::Rsa,
        AlgorithmFamily::Ec,
        AlgorithmFamily::Ed,
    ]
    .into_iter()
    .find(|f| f.algorithms().contains(&alg))
    .unwrap_or(AlgorithmFamily::Hmac)
}

fn list(value: Option<&str>) -> Vec<String> {
    value
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn number<T: FromStr>(value: Option<&str>, key: &str, default: T) -> Result<T, String> {
    match value {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| format!("`{key}` is not a non-negative integer: {v:?}")),
    }
}

impl Settings {
    /// Parses the config values of [`KEYS`] (`values[i]` is the value of `KEYS[i]`). Empty
    /// strings count as unset, so an unresolved `${VAR}` does not become an empty secret.
    pub(crate) fn parse(values: &[Option<String>]) -> Result<Settings, String> {
        let raw = |key: &str| -> Option<&str> {
            let i = KEYS.iter().position(|k| *k == key)?;
            values.get(i)?.as_deref()
        };
        let get = |key: &str| raw(key).filter(|v| !v.trim().is_empty());
        let secret = get("secret").map(|s| DecodingKey::from_secret(s.as_bytes()));

        let sources = ["public_key_pem", "jwks", "jwks_url"]
            .into_iter()
            .filter(|k| get(k).is_some())
            .count();
        if sources > 1 {
            return Err("set only one of `public_key_pem`, `jwks` and `jwks_url`".into());
        }
        let public = if let Some(pem) = get("public_key_pem") {
            let keys = KeySet::from_pem(pem).map_err(|e| format!("`public_key_pem`: {e}"))?;
            PublicKeys::Static(Arc::new(keys))
        } else if let Some(doc) = get("jwks") {
            let keys = KeySet::from_jwks(doc).map_err(|e| format!("`jwks`: {e}"))?;
            PublicKeys::Static(Arc::new(keys))
        } else if let Some(url) = get("jwks_url") {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(format!("`jwks_url` is not an http(s) URL: {url:?}"));
            }
            PublicKeys::Remote(Remote {
                url: url.to_owned(),
                ttl_ms: number(get("jwks_ttl"), "jwks_ttl", 300u64)?.saturating_mul(1000),
                min_refresh_ms: number(get("jwks_min_refresh"), "jwks_min_refresh", 30u64)?
                    .saturating_mul(1000),
            })
        } else {
            PublicKeys::None
        };

        let algorithms = match get("algorithms") {
            Some(names) => list(Some(names))
                .iter()
                .map(|n| Algorithm::from_str(n).map_err(|_| format!("unknown algorithm {n:?}")))
                .collect::<Result<Vec<_>, _>>()?,
            None => {
                let mut algs = Vec::new();
                if secret.is_some() {
                    algs.push(Algorithm::HS256);
                }
                if !matches!(public, PublicKeys::None) {
                    algs.extend([Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA]);
                }
                algs
            }
        };
        if algorithms.is_empty() {
            return Err(
                "no key source: set `secret`, `public_key_pem`, `jwks` or `jwks_url`".into(),
            );
        }
        for alg in &algorithms {
            let hmac = family(*alg) == AlgorithmFamily::Hmac;
            if hmac && secret.is_none() {
                return Err(format!("algorithm {alg:?} needs `secret`"));
            }
            if !hmac && matches!(public, PublicKeys::None) {
                return Err(format!(
                    "algorithm {alg:?} needs `public_key_pem`, `jwks` or `jwks_url`"
                ));
            }
        }

        let mut required_claims = list(get("required_claims"));
        if !required_claims.iter().any(|c| c == "exp") {
            required_claims.insert(0, "exp".into());
        }
        let max_token_bytes = number(get("max_token_bytes"), "max_token_bytes", 8192usize)?;
        if max_token_bytes == 0 {
            return Err("`max_token_bytes` must be positive".into());
        }
        // `header` / `query_param` set to "" disable that place (not both).
        let header =
            raw("header").map_or("authorization".into(), |h| h.trim().to_ascii_lowercase());
        let query_param = match raw("query_param") {
            Some(p) if p.trim().is_empty() => None,
            Some(p) => Some(p.trim().to_owned()),
            None => Some("access_token".into()),
        };
        let subprotocol_prefix = match raw("subprotocol_prefix") {
            Some(p) if p.trim().is_empty() => None,
            Some(p) => Some(p.trim().to_owned()),
            None => Some("access_token.".into()),
        };
        if header.is_empty() && query_param.is_none() && subprotocol_prefix.is_none() {
            return Err("`header`, `query_param` and `subprotocol_prefix` are all disabled".into());
        }
        Ok(Settings {
            header,
            query_param,
            subprotocol_prefix,
            algorithms,
            secret,
            public,
            issuer: get("issuer").map(str::to_owned),
            audience: list(get("audience")),
            leeway: number(get("leeway"), "leeway", 30u64)?,
            required_claims,
            max_token_bytes,
            forward_claims: list(get("forward_claims")),
        })
    }
}
