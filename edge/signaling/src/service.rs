//! A signaling endpoint as a [`Service`]: mounted on the viewer listeners behind its route's
//! policy chain, it checks the WebSocket handshake, the `Origin` and the offered subprotocols,
//! answers 101 and hands the connection to a [`session`](crate::session) of its [`Engine`].

use crate::{Engine, Hub, Limits, Viewer, session, tracker::Tracker};
use edge_contract::{Call, EdgeRequest, EdgeResponse, Service};
use http::{HeaderValue, StatusCode, header};
use std::sync::Arc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// `GET <path>` with `Upgrade: websocket`, served by the engine `E`.
pub struct WsService<E> {
    engine: Arc<E>,
    limits: Limits,
    /// `Origin` values allowed; `*` allows any. A request without `Origin` (not a browser) is
    /// allowed.
    allowed_origins: Vec<String>,
    /// Offered subprotocols starting with this carry the viewer's token (browsers cannot set
    /// headers on a WebSocket); they are never echoed.
    token_prefix: String,
}

/// The WebTorrent tracker endpoint.
pub type TrackerService = WsService<Tracker>;
/// The native signaling endpoint.
pub type SignalingService = WsService<Hub>;

impl<E: Engine> WsService<E> {
    /// The endpoint of `engine`.
    pub fn new(engine: Arc<E>, limits: Limits, allowed_origins: Vec<String>) -> Self {
        Self {
            engine,
            limits,
            allowed_origins,
            token_prefix: "access_token.".into(),
        }
    }

    /// Subprotocols starting with `prefix` carry a token (default `access_token.`; must match
    /// the auth policy's `subprotocol_prefix`).
    #[must_use]
    pub fn with_token_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.token_prefix = prefix.into();
        self
    }

    /// The subprotocol to answer with: the first offered one that is not a token. `Err` when
    /// only tokens were offered (a browser fails a handshake whose answer names none, and a
    /// token is not echoed).
    fn subprotocol(&self, req: &EdgeRequest) -> Result<Option<HeaderValue>, ()> {
        let mut offered = req
            .headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .peekable();
        if offered.peek().is_none() {
            return Ok(None);
        }
        offered
            .find(|p| !p.starts_with(&self.token_prefix))
            .map(|p| HeaderValue::from_str(p).ok())
            .ok_or(())
    }

    fn origin_allowed(&self, req: &EdgeRequest) -> bool {
        let Some(origin) = req.headers.get(header::ORIGIN) else {
            return true;
        };
        self.allowed_origins
            .iter()
            .any(|a| a == "*" || origin.as_bytes() == a.as_bytes())
    }
}

#[async_trait::async_trait]
impl<E: Engine> Service for WsService<E> {
    async fn call(&self, req: &EdgeRequest, call: Call<'_>) -> EdgeResponse {
        if req.upgrade_protocol().as_deref() != Some("websocket") {
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
        let Ok(protocol) = self.subprotocol(req) else {
            return EdgeResponse::error(StatusCode::BAD_REQUEST, "websocket_protocol");
        };
        let viewer = Viewer {
            sub: call
                .context
                .iter()
                .find(|(k, _)| k == "sub")
                .map(|(_, v)| v.clone()),
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
