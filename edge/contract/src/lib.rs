//! The listener contract: what every listener (HTTP/1.1 and HTTP/2 on pingora, later HTTP/3 on
//! quinn) hands to a [`Handler`] and what it writes back.
//!
//! - [`EdgeRequest`]: method, raw path and query, headers, client, protocol, and a
//!   [`RequestBody`] that is read from the connection only when the handler asks for it;
//! - [`EdgeResponse`]: status, headers and a [`Body`] that is whole bytes, a stream, or — after a
//!   `101 Switching Protocols` — the upgraded connection itself ([`EdgeResponse::upgrade`]);
//! - [`normalize`]: the only way a viewer's path becomes an object key;
//! - [`EdgeResponse::error`]: the one JSON error shape of everything the edge answers itself.
//!
//! It depends on neither pingora nor wasmtime: the seeder, the streaming API and every
//! listener build on it without pulling in the policy runtime (enforced by `deny.toml`).

mod body;
mod error;
mod media;
mod path;
mod upgrade;

pub use body::{Body, BodyError, BodySender, BodyStream, RequestBody};
pub use error::{ErrorBody, REASON_HEADER};
pub use media::{MediaKind, classify};
pub use path::{MAX_PATH, PathError, normalize};
pub use upgrade::{Io, OnUpgrade, Upgraded};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use std::net::IpAddr;

/// The protocol a request arrived on, for logs, metrics and policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.x
    Http1,
    /// HTTP/2
    Http2,
    /// HTTP/3
    Http3,
}

/// A request as every listener hands it to a [`Handler`].
#[derive(Debug)]
pub struct EdgeRequest {
    /// Method.
    pub method: Method,
    /// Raw path, still percent-encoded.
    pub path: String,
    /// Raw query string without `?` (empty when absent).
    pub query: String,
    /// Request headers.
    pub headers: HeaderMap,
    /// The viewer's address.
    pub client_addr: IpAddr,
    /// Protocol of the connection.
    pub protocol: Protocol,
    /// Whether the connection is TLS (for URLs the edge hands out: `https://`).
    pub tls: bool,
    /// Request body, read on demand.
    pub body: RequestBody,
}

impl EdgeRequest {
    /// Whether this request asks to switch to `protocol` (`websocket`; compared without case),
    /// among the protocols its `Upgrade` lists (`Upgrade: h2c, websocket` asks for either),
    /// and its listener can upgrade it (HTTP/1.1 `GET`; not HTTP/2 or HTTP/3). Answer it with
    /// [`EdgeResponse::upgrade`].
    pub fn upgrades_to(&self, protocol: &str) -> bool {
        self.protocol == Protocol::Http1
            && self.method == Method::GET
            && upgrade::requested(&self.headers, protocol)
    }
}

/// A response. For HEAD the listener sends the headers only, with the `Content-Length` a GET
/// would get.
#[derive(Debug)]
pub struct EdgeResponse {
    /// Status.
    pub status: StatusCode,
    /// Headers, without `Content-Length` (the listener sets it from the body).
    pub headers: HeaderMap,
    /// Body.
    pub body: Body,
}

impl EdgeResponse {
    /// A response with `status`, no headers and `body`.
    pub fn new(status: StatusCode, body: impl Into<Body>) -> Self {
        Self {
            status,
            headers: HeaderMap::new(),
            body: body.into(),
        }
    }

    /// A response the edge makes itself (JSON APIs, health, metrics): `content_type`, never
    /// cached (`Cache-Control: no-store`).
    pub fn uncached(status: StatusCode, content_type: &'static str, body: impl Into<Body>) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Self {
            status,
            headers,
            body: body.into(),
        }
    }

    /// [`EdgeResponse::uncached`] JSON.
    pub fn json(status: StatusCode, body: impl Into<Body>) -> Self {
        Self::uncached(status, "application/json", body)
    }

    /// `101 Switching Protocols` to `protocol` (add the protocol's own headers, such as
    /// `Sec-WebSocket-Accept`): once it is sent, `on_upgrade` owns the connection. Only for a
    /// request for which [`EdgeRequest::upgrades_to`] is true; otherwise the listener answers
    /// 500 `upgrade_unavailable` instead.
    pub fn upgrade(
        protocol: &str,
        on_upgrade: impl FnOnce(Upgraded) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>
        + Send
        + 'static,
    ) -> Self {
        let mut headers = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(protocol) {
            headers.insert(header::UPGRADE, v);
        }
        Self {
            status: StatusCode::SWITCHING_PROTOCOLS,
            headers,
            body: Body::Upgrade(Box::new(on_upgrade)),
        }
    }

    /// The bytes of a whole body (`None` for a stream); for tests and small answers.
    pub fn body_bytes(&self) -> Option<&Bytes> {
        self.body.as_bytes()
    }
}

/// Anything that answers requests: the viewer pipeline, the admin endpoints, the seeder.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Answers one request. Must not panic; every failure is a response.
    async fn handle(&self, req: EdgeRequest) -> EdgeResponse;
}

/// Whether `headers` carry `Authorization: Bearer <token>`. Compares digests, so the time taken
/// says nothing about how much of the token matched. For the admin and seeder endpoints.
pub fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    use sha2::{Digest, Sha256};
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    Sha256::digest(given.as_bytes()) == Sha256::digest(token.as_bytes())
}

/// An endpoint the edge answers itself behind a path (the streaming API, `/health`); the
/// pipeline mounts it. A guarded one runs behind the policy chain of its route and sees what
/// the chain learned (`sub` from the JWT policy) in [`Call::context`].
#[async_trait::async_trait]
pub trait Service: Send + Sync + 'static {
    /// Answers one request. Any method reaches it; it answers 405 itself.
    async fn call(&self, req: &EdgeRequest, call: Call<'_>) -> EdgeResponse;
}

/// What a [`Service`] gets besides the request.
pub struct Call<'a> {
    /// The normalised path.
    pub path: &'a str,
    /// Context pairs added by the route's policies, in chain order (empty for open mounts).
    pub context: &'a [(String, String)],
    /// Objects through the cache tiers, as a viewer would get them (without policies).
    pub objects: &'a dyn Objects,
}

/// Read access to objects through the cache tiers, for services (does a movie's manifest
/// exist?).
#[async_trait::async_trait]
pub trait Objects: Send + Sync {
    /// Whether the object at the normalised `path` exists (fetched and cached as a viewer's
    /// request would be).
    async fn probe(&self, path: &str) -> Result<(), ObjectError>;
}

/// Why [`Objects::probe`] found no object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectError {
    /// It does not exist.
    #[error("not found")]
    NotFound,
    /// It could not be had (origin down); the reason, for logs.
    #[error("unavailable: {0}")]
    Unavailable(String),
}
