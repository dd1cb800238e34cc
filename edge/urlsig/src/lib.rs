//! The signed-URL token format, shared by the edge (which signs) and the `signed-url` guest
//! (which verifies), so that both sides cannot drift apart.
//!
//! A token authorises every path under one *scope* (a path prefix, normally a stream's directory)
//! until an expiry time, optionally only for one client address. It travels as one query
//! parameter (default `token`), which the edge copies into the URIs of the manifests it serves.
//!
//! ```text
//! token = EXPIRES "." base64url(SCOPE) "." BIND "." base64url(HMAC-SHA256(secret, MESSAGE))
//! BIND  = "a" (any client) | "i" (bound to the client address)
//! MESSAGE = "edge-urlsig/1\n" EXPIRES "\n" SCOPE "\n" (CLIENT-ADDR if BIND is "i")
//! ```
//!
//! ```
//! use edge_urlsig::{Grant, Key, Rejection};
//! let key = Key::new(b"a secret of at least 16 bytes");
//! let grant = Grant { expires: 2_000, scope: "/vod/movies/demo/".into(), client_addr: None };
//! let token = key.sign(&grant);
//! assert!(key.verify(&token, "/vod/movies/demo/v0/seg_000.ts", "10.0.0.1", 1_000).is_ok());
//! assert_eq!(key.verify(&token, "/vod/movies/other/index.m3u8", "10.0.0.1", 1_000), Err(Rejection::ScopeMismatch));
//! assert_eq!(key.verify(&token, "/vod/movies/demo/index.m3u8", "10.0.0.1", 2_000), Err(Rejection::Expired));
//! ```
#![no_std]

extern crate alloc;

use alloc::{format, string::String, vec::Vec};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Largest token accepted by [`Key::verify`]; longer input is rejected before any work.
pub const MAX_TOKEN_LEN: usize = 1024;

const DOMAIN: &str = "edge-urlsig/1";

/// What a token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Expiry, in seconds since the Unix epoch; the token is invalid from this second on.
    pub expires: u64,
    /// Path prefix the token covers. A scope ending in `/` covers a directory; any other scope
    /// covers exactly one path.
    pub scope: String,
    /// When set, only requests from this client address are accepted.
    pub client_addr: Option<String>,
}

impl Grant {
    /// Whether this grant admits a request of `path` from `client_addr` at `now` (Unix seconds).
    pub fn authorize(&self, path: &str, client_addr: &str, now: u64) -> Result<(), Rejection> {
        if self
            .client_addr
            .as_deref()
            .is_some_and(|bound| bound != client_addr)
        {
            // The address is part of the signature: another client's request does not verify.
            return Err(Rejection::BadSignature);
        }
        if now >= self.expires {
            return Err(Rejection::Expired);
        }
        if !covers(&self.scope, path) {
            return Err(Rejection::ScopeMismatch);
        }
        Ok(())
    }
}

/// Why a token was refused. [`Rejection::reason`] is the short code viewers and logs see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The request carries no token.
    Missing,
    /// The token is not in the format above (or is too long).
    Malformed,
    /// The signature does not match: tampered, or signed with another key.
    BadSignature,
    /// The token has expired.
    Expired,
    /// The token is valid for another path.
    ScopeMismatch,
}

impl Rejection {
    /// A short, stable, machine-readable reason code.
    pub const fn reason(self) -> &'static str {
        match self {
            Self::Missing => "missing_token",
            Self::Malformed => "malformed_token",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired_token",
            Self::ScopeMismatch => "scope_mismatch",
        }
    }
}

impl core::fmt::Display for Rejection {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.reason())
    }
}

/// An HMAC-SHA256 signing key.
#[derive(Clone)]
pub struct Key {
    mac: Hmac<Sha256>,
}

impl core::fmt::Debug for Key {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// A key from secret bytes. Callers should use at least 32 random bytes.
    pub fn new(secret: &[u8]) -> Self {
        Self {
            mac: Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length"),
        }
    }

    /// Signs `grant` and returns the token.
    pub fn sign(&self, grant: &Grant) -> String {
        let tag = self.tag(grant.expires, &grant.scope, grant.client_addr.as_deref());
        let bind = if grant.client_addr.is_some() {
            'i'
        } else {
            'a'
        };
        format!(
            "{}.{}.{bind}.{}",
            grant.expires,
            B64.encode(&grant.scope),
            B64.encode(tag)
        )
    }

    /// Checks `token` for a request of `path` from `client_addr` at `now` (Unix seconds):
    /// [`Key::authenticate`], then [`Grant::authorize`].
    pub fn verify(
        &self,
        token: &str,
        path: &str,
        client_addr: &str,
        now: u64,
    ) -> Result<Grant, Rejection> {
        let grant = self.authenticate(token, client_addr)?;
        grant.authorize(path, client_addr, now)?;
        Ok(grant)
    }

    /// Checks the format and the signature of `token` (in constant time) and returns what it
    /// grants, without looking at the request. A bound token only authenticates for the
    /// `client_addr` it was signed for. The result depends only on the key, the token and (for a
    /// bound token) the client address, so a verifier may memoise it and call
    /// [`Grant::authorize`] per request.
    pub fn authenticate(&self, token: &str, client_addr: &str) -> Result<Grant, Rejection> {
        if token.is_empty() {
            return Err(Rejection::Missing);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(Rejection::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(exp), Some(scope), Some(bind), Some(tag), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(Rejection::Malformed);
        };
        if exp.is_empty() || !exp.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Rejection::Malformed);
        }
        let expires: u64 = exp.parse().map_err(|_| Rejection::Malformed)?;
        let scope = B64.decode(scope).map_err(|_| Rejection::Malformed)?;
        let scope = String::from_utf8(scope).map_err(|_| Rejection::Malformed)?;
        let tag: Vec<u8> = B64.decode(tag).map_err(|_| Rejection::Malformed)?;
        let bound = match bind {
            "a" => None,
            "i" => Some(client_addr),
            _ => return Err(Rejection::Malformed),
        };
        let mut mac = self.mac.clone();
        feed(&mut mac, expires, &scope, bound);
        mac.verify_slice(&tag)
            .map_err(|_| Rejection::BadSignature)?;
        Ok(Grant {
            expires,
            scope,
            client_addr: bound.map(String::from),
        })
    }

    fn tag(&self, expires: u64, scope: &str, client_addr: Option<&str>) -> Vec<u8> {
        let mut mac = self.mac.clone();
        feed(&mut mac, expires, scope, client_addr);
        mac.finalize().into_bytes().to_vec()
    }
}

fn feed(mac: &mut Hmac<Sha256>, expires: u64, scope: &str, client_addr: Option<&str>) {
    mac.update(
        format!(
            "{DOMAIN}\n{expires}\n{scope}\n{}",
            client_addr.unwrap_or("")
        )
        .as_bytes(),
    );
}

/// Whether a token for `scope` covers `path`: a directory scope (ending in `/`) covers everything
/// below it, any other scope only itself.
pub fn covers(scope: &str, path: &str) -> bool {
    if scope.ends_with('/') {
        path.starts_with(scope)
    } else {
        path == scope
    }
}

/// The directory scope for `path`: everything up to and including its last `/`. A token for a
/// stream's master playlist thereby covers its variant playlists and segments.
pub fn directory_scope(path: &str) -> &str {
    path.rfind('/').map_or("/", |i| &path[..=i])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        Key::new(b"0123456789abcdef0123456789abcdef")
    }

    fn grant(client: Option<&str>) -> Grant {
        Grant {
            expires: 100,
            scope: "/vod/movies/m1/".into(),
            client_addr: client.map(String::from),
        }
    }

    #[test]
    fn round_trip_covers_directory() {
        let t = key().sign(&grant(None));
        assert_eq!(
            key().verify(&t, "/vod/movies/m1/v1/seg_001.ts", "1.2.3.4", 99),
            Ok(grant(None))
        );
        assert_eq!(
            key().verify(&t, "/vod/movies/m10/index.m3u8", "1.2.3.4", 99),
            Err(Rejection::ScopeMismatch)
        );
    }

    #[test]
    fn rejects_tampering_and_other_keys() {
        let t = key().sign(&grant(None));
        let longer = t.replacen("100.", "200.", 1);
        assert_eq!(
            key().verify(&longer, "/vod/movies/m1/a.ts", "x", 99),
            Err(Rejection::BadSignature)
        );
        let wider = t.replacen(&B64.encode("/vod/movies/m1/"), &B64.encode("/vod/"), 1);
        assert_eq!(
            key().verify(&wider, "/vod/movies/m1/a.ts", "x", 99),
            Err(Rejection::BadSignature)
        );
        let other = Key::new(b"another key entirely, 32 bytes!!");
        assert_eq!(
            other.verify(&t, "/vod/movies/m1/a.ts", "x", 99),
            Err(Rejection::BadSignature)
        );
    }

    #[test]
    fn expiry_is_exclusive() {
        let t = key().sign(&grant(None));
        assert!(key().verify(&t, "/vod/movies/m1/a.ts", "x", 99).is_ok());
        assert_eq!(
            key().verify(&t, "/vod/movies/m1/a.ts", "x", 100),
            Err(Rejection::Expired)
        );
    }

    #[test]
    fn client_binding() {
        let t = key().sign(&grant(Some("10.1.1.1")));
        assert!(
            key()
                .verify(&t, "/vod/movies/m1/a.ts", "10.1.1.1", 1)
                .is_ok()
        );
        // A bound token presented from elsewhere fails its signature: the address is signed.
        assert_eq!(
            key().verify(&t, "/vod/movies/m1/a.ts", "10.1.1.2", 1),
            Err(Rejection::BadSignature)
        );
    }

    #[test]
    fn malformed_inputs() {
        for bad in [
            "x",
            "1.2.3",
            "1.a.a.a.a",
            "-1.Lw.a.AA",
            "1.!!.a.AA",
            "1.Lw.z.AA",
            "1.Lw.a.@@",
            "99999999999999999999999.Lw.a.AA",
        ] {
            assert_eq!(
                key().verify(bad, "/", "x", 0),
                Err(Rejection::Malformed),
                "{bad}"
            );
        }
        assert_eq!(key().verify("", "/", "x", 0), Err(Rejection::Missing));
        assert_eq!(
            key().verify(&"1".repeat(MAX_TOKEN_LEN + 1), "/", "x", 0),
            Err(Rejection::Malformed)
        );
    }

    #[test]
    fn scopes() {
        assert_eq!(
            directory_scope("/vod/movies/m1/index.m3u8"),
            "/vod/movies/m1/"
        );
        assert!(covers("/a/b.ts", "/a/b.ts"));
        assert!(!covers("/a/b.ts", "/a/b.tsx"));
    }
}
