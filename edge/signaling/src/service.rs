//! The tracker endpoint as a [`Service`]: mounted on the viewer listeners behind its route's
//! policy chain, it checks the WebSocket handshake and the `Origin`, answers 101 and hands the
//! connection to a [`session`](crate::session).

use crate::{Limits, session, tracker::Tracker};
use edge_contract::{Call, EdgeRequest, EdgeResponse, Service};
use http::{HeaderValue, StatusCode, header};
use std::sync::Arc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// `GET <tracker path>` with `Upgrade: websocket`.
pub struct TrackerService {
    tracker: Arc<Tracker>,
    limits: Limits,
    /// `Origin` values allowed; `*` allows any. A request without `Origin` (not a browser) is
    /// allowed.
    allowed_origins: Vec<String>,
}

impl TrackerService {
    /// The endpoint of `tracker`.
    pub fn new(tracker: Arc<Tracker>, limits: Limits, allowed_origins: Vec<String>) -> Self {
        Self {
            tracker,
            limits,
            allowed_origins,
        }
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
impl Service for TrackerService {
    async fn call(&self, req: &EdgeRequest, _call: Call<'_>) -> EdgeResponse {
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
            self.tracker.count_drop("origin");
            return EdgeResponse::error(StatusCode::FORBIDDEN, "origin_not_allowed");
        }
        let accept = derive_accept_key(key.as_bytes());
        let (tracker, limits) = (self.tracker.clone(), self.limits.clone());
        let mut r = EdgeResponse::upgrade("websocket", move |io| {
            Box::pin(session::run(tracker, io, limits))
        });
        if let Ok(v) = HeaderValue::from_str(&accept) {
            r.headers.insert(header::SEC_WEBSOCKET_ACCEPT, v);
        }
        r
    }
}
