//! A signaling endpoint as a [`Service`]: mounted on the viewer listeners behind its route's
//! policy chain, it checks the WebSocket handshake, the `Origin` and the offered subprotocols,
//! answers 101 and hands the connection to a [`session`](crate::session) of its [`Engine`].

use crate::{Echo, Engine, Hub, Limits, Viewer, session, tracker::Tracker};
use edge_contract::{Call, EdgeRequest, EdgeResponse, Service};
use http::{HeaderValue, StatusCode, header};
use std::sync::Arc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// `GET <path>` with `Upgrade: websocket`, served by the engine `E`.
pub struct WsService<E> {
    engine: Arc<E>,
    limits: Limits,
    /// `Origin` values allowed, normalised ([`normalise_origin`]); `*` allows any. A request
    /// without `Origin` (not a browser) is allowed.
    allowed_origins: Vec<String>,
    /// Offered subprotocols starting with this carry the viewer's token (browsers cannot set
    /// headers on a WebSocket).
    token_prefix: String,
    /// The subprotocols this endpoint speaks; the first offered one of them is answered.
    /// Anything else offered (a token above all) is never echoed.
    subprotocols: Vec<String>,
}

/// The WebTorrent tracker endpoint.
pub type TrackerService = WsService<Tracker>;
/// The native signaling endpoint.
pub type SignalingService = WsService<Hub>;
/// The echo endpoint (conformance tests, load generators).
pub type EchoService = WsService<Echo>;

impl<E: Engine> WsService<E> {
    /// The endpoint of `engine`.
    pub fn new(engine: Arc<E>, limits: Limits, allowed_origins: Vec<String>) -> Self {
        Self {
            engine,
            limits,
            allowed_origins: allowed_origins
                .iter()
                .map(|o| normalise_origin(o).unwrap_or_else(|| o.clone()))
                .collect(),
            token_prefix: "access_token.".into(),
            subprotocols: vec!["signaling".into()],
        }
    }

    /// The subprotocols the endpoint speaks (default `signaling`).
    #[must_use]
    pub fn with_subprotocols(mut self, subprotocols: Vec<String>) -> Self {
        self.subprotocols = subprotocols;
        self
    }

    /// Subprotocols starting with `prefix` carry a token (default `access_token.`, as the auth
    /// policy's `subprotocol_prefix`). Only for the refusal of a handshake that offers nothing
    /// but a token: a token is never echoed whatever its prefix, as it is not a subprotocol of
    /// the endpoint.
    #[must_use]
    pub fn with_token_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.token_prefix = prefix.into();
        self
    }

    /// The subprotocol to answer with: the first offered one the endpoint speaks; none when
    /// none was offered. `Err` when protocols were offered but none it speaks (tokens only, or
    /// unknown names): a browser fails a handshake whose answer names none of its offers, so
    /// it is refused with a reason rather than a 101 the client will drop.
    fn subprotocol(&self, req: &EdgeRequest) -> Result<Option<HeaderValue>, String> {
        let offered: Vec<&str> = req
            .headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        if offered.is_empty() {
            return Ok(None);
        }
        let spoken = self.subprotocols.join(", ");
        offered
            .iter()
            .find(|p| self.subprotocols.iter().any(|s| s == *p))
            .and_then(|p| HeaderValue::from_str(p).ok())
            .map(Some)
            .ok_or_else(|| {
                if offered.iter().all(|p| p.starts_with(&self.token_prefix)) {
                    format!("a token is not a subprotocol: offer one of [{spoken}] beside it")
                } else {
                    format!("none of the offered subprotocols is spoken here: [{spoken}]")
                }
            })
    }

    fn origin_allowed(&self, req: &EdgeRequest) -> bool {
        let Some(origin) = req.headers.get(header::ORIGIN) else {
            return true;
        };
        if self.allowed_origins.iter().any(|a| a == "*") {
            return true;
        }
        let Some(origin) = origin.to_str().ok().and_then(normalise_origin) else {
            return false;
        };
        self.allowed_origins.contains(&origin)
    }
}

#[async_trait::async_trait]
impl<E: Engine> Service for WsService<E> {
    async fn call(&self, req: &EdgeRequest, call: Call<'_>) -> EdgeResponse {
        if !req.upgrades_to("websocket") {
            let mut r = EdgeResponse::error(StatusCode::UPGRADE_REQUIRED, "websocket_only");
            r.headers
                .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            return r;
        }
        let version = req.headers.get(header::SEC_WEBSOCKET_VERSION);
        if version.is_none_or(|v| v.as_bytes() != b"13") {
            let mut r = EdgeResponse::error(StatusCode::UPGRADE_REQUIRED, "websocket_version");
            r.headers.insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
            return r;
        }
        // A base64 nonce of 16 bytes (RFC 6455 4.1): 22 base64 characters and "==".
        let Some(key) = req.headers.get(header::SEC_WEBSOCKET_KEY).filter(|k| {
            let k = k.as_bytes();
            k.len() == 24
                && k.ends_with(b"==")
                && k[..22]
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
        }) else {
            return EdgeResponse::error(StatusCode::BAD_REQUEST, "websocket_key");
        };
        if !self.origin_allowed(req) {
            self.engine.count_drop("origin");
            return EdgeResponse::error(StatusCode::FORBIDDEN, "origin_not_allowed");
        }
        let protocol = match self.subprotocol(req) {
            Ok(p) => p,
            Err(why) => {
                return EdgeResponse::error_detail(
                    StatusCode::BAD_REQUEST,
                    "websocket_protocol",
                    &why,
                );
            }
        };
        let viewer = Viewer {
            sub: call
                .context
                .iter()
                .find(|(k, _)| k == "sub")
                .map(|(_, v)| v.clone()),
            expires_at: expires_at(call.context),
        };
        let accept = derive_accept_key(key.as_bytes());
        let (engine, limits) = (self.engine.clone(), self.limits.clone());
        let mut r = EdgeResponse::upgrade("websocket", move |io| {
            Box::pin(session::run(engine, viewer, io, limits))
        });
        if let Ok(v) = HeaderValue::from_str(&accept) {
            r.headers.insert(header::SEC_WEBSOCKET_ACCEPT, v);
        }
        if let Some(p) = protocol {
            r.headers.insert(header::SEC_WEBSOCKET_PROTOCOL, p);
        }
        r
    }
}

/// The earliest of what the route's policies said the credentials are good until (`expires_at`,
/// Unix seconds); a time too far to hold is no expiry.
fn expires_at(context: &[(String, String)]) -> Option<std::time::SystemTime> {
    let secs = context
        .iter()
        .filter(|(k, _)| k == "expires_at")
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .min()?;
    std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(secs))
}

/// An `Origin` (RFC 6454) as compared: scheme and host lowercased, the scheme's default port
/// and a trailing `/` dropped (`HTTPS://Player.Example.com:443/` is
/// `https://player.example.com`). `None` for anything that is not `scheme://host[:port]`
/// (`null` included: an opaque origin matches no allowed one).
pub fn normalise_origin(origin: &str) -> Option<String> {
    let uri: http::Uri = origin.trim().parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let authority = uri.authority()?;
    if authority.as_str().contains('@') || !matches!(uri.path(), "" | "/") || uri.query().is_some()
    {
        return None;
    }
    let host = authority.host().to_ascii_lowercase();
    let default = match scheme.as_str() {
        "https" | "wss" => Some(443),
        "http" | "ws" => Some(80),
        _ => None,
    };
    Some(match authority.port_u16() {
        Some(port) if Some(port) != default => format!("{scheme}://{host}:{port}"),
        _ => format!("{scheme}://{host}"),
    })
}

#[cfg(test)]
mod tests {
    use super::{expires_at, normalise_origin};

    #[test]
    fn the_earliest_expiry_counts_and_one_too_far_is_none() {
        let ctx = |v: &[&str]| -> Vec<(String, String)> {
            v.iter()
                .map(|v| ("expires_at".to_owned(), (*v).to_owned()))
                .collect()
        };
        let at = |s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s);
        assert_eq!(expires_at(&ctx(&["2000", "1000", "x"])), Some(at(1000)));
        assert_eq!(expires_at(&ctx(&[])), None);
        assert_eq!(expires_at(&ctx(&["18446744073709551615"])), None);
    }

    #[test]
    fn origins_compare_without_case_default_port_or_trailing_slash() {
        let n = |o| normalise_origin(o);
        assert_eq!(
            n("HTTPS://Player.Example.com:443/").as_deref(),
            Some("https://player.example.com")
        );
        assert_eq!(
            n("http://player.example.com:80").as_deref(),
            Some("http://player.example.com")
        );
        assert_eq!(
            n("https://player.example.com:8443").as_deref(),
            Some("https://player.example.com:8443")
        );
        assert_eq!(n("http://[::1]:3000").as_deref(), Some("http://[::1]:3000"));
        for bad in [
            "null",
            "player.example.com",
            "https://player.example.com/app",
            "https://u@player.example.com",
            "https://player.example.com?x=1",
            "",
        ] {
            assert_eq!(n(bad), None, "{bad}");
        }
    }
}
