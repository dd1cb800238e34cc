//! The streaming API of the service the edge replaces, answered by the edge itself behind the
//! policy chain of its route (JWT + subscription in the default policies):
//!
//! | request | answer | event |
//! |---|---|---|
//! | `POST {prefix}/{movie_id}` `{"manifest_type": "hls"\|"dash"}` | `{"manifest_url", "expires_in", "manifest_type"}`; 404 when the manifest does not exist | `stream.start` |
//! | `POST {prefix}/{movie_id}/progress` `{"position_seconds": N}` | `{"success", "position_seconds", "message"}` | `stream.progress` (coalesced) |
//! | `GET {prefix}/{movie_id}/progress` | `{"user_id", "movie_id", "position_seconds", "last_watched_at"}` | — |
//! | `POST {prefix}/{movie_id}/stop` `{"position_seconds": N}` | `{"success", "message"}` | `stream.stop` |
//!
//! The viewer is the `sub` the JWT policy put in the context. Every event is in the spool before
//! the answer is sent; a full spool answers 503 rather than losing it. Bodies are strict (unknown
//! fields, wrong types, negative or absurd positions → 400; oversize → 413); errors are
//! `{"error", "reason", "detail"}`.

mod progress;
mod reply;
mod session;
mod store;

pub use progress::Progress;
pub use session::{Session, Sessions};
pub use store::{
    LocalProgress, Position, ProgressStore, RedisProgress, StoreError, ViewerKey, redis_key,
};

use edge_contract::{Call, EdgeRequest, EdgeResponse, ObjectError, Service};
use edge_events::{NewRecord, Spool, SpoolError, StreamStart, StreamStop};
use edge_origin::OriginError;
use http::{Method, StatusCode, header};
use reply::{ApiError, ManifestType};
use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// Hands out origin URLs instead of edge URLs (an S3 presigned `GET`).
#[async_trait::async_trait]
pub trait Presign: Send + Sync + 'static {
    /// A URL for the public `path`, valid for `ttl`.
    async fn presign(&self, path: &str, ttl: Duration) -> Result<String, OriginError>;
}

#[async_trait::async_trait]
impl Presign for edge_origin::StoreOrigin {
    async fn presign(&self, path: &str, ttl: Duration) -> Result<String, OriginError> {
        self.presign_get(path, ttl).await
    }
}

/// What `manifest_url` points at.
pub enum ManifestUrls {
    /// This edge, with a signed-URL token scoped to the movie's directory.
    Edge {
        /// HMAC key of `edge-urlsig`.
        secret: String,
        /// Query parameter of the token.
        param: String,
        /// Base URL (`https://edge.example.com`); `None`: the request's scheme and `Host`.
        public_url: Option<String>,
    },
    /// The origin, presigned.
    Origin(Arc<dyn Presign>),
}

/// Settings of the API (from `[stream_api]` and `[signed_url]`).
pub struct Settings {
    /// Path prefix (`/api/v1/stream`).
    pub prefix: String,
    /// HLS manifest path with `{movie_id}`.
    pub manifest_hls: String,
    /// DASH manifest path with `{movie_id}`.
    pub manifest_dash: String,
    /// Where `manifest_url` points.
    pub urls: ManifestUrls,
    /// Lifetime of a handed-out URL.
    pub expiration: Duration,
    /// Largest accepted position.
    pub max_position: u64,
    /// Largest request body.
    pub max_body: usize,
}

/// The API as a [`Service`] to mount on the pipeline at `prefix` (subtree, guarded).
pub struct StreamApi {
    settings: Settings,
    spool: Spool,
    sessions: Sessions,
    progress: Arc<Progress>,
}

enum Endpoint {
    Start,
    Progress,
    Stop,
}

impl StreamApi {
    /// The API over `spool` (events), `sessions` and `progress`.
    pub fn new(
        settings: Settings,
        spool: Spool,
        sessions: Sessions,
        progress: Arc<Progress>,
    ) -> Self {
        Self {
            settings,
            spool,
            sessions,
            progress,
        }
    }

    async fn answer(&self, req: &EdgeRequest, call: &Call<'_>) -> Result<EdgeResponse, ApiError> {
        let rest = call
            .path
            .strip_prefix(self.settings.prefix.as_str())
            .unwrap_or_default();
        let mut parts = rest.trim_start_matches('/').splitn(2, '/');
        let movie = reply::movie_id(parts.next().unwrap_or_default())?;
        let endpoint = match parts.next() {
            None => Endpoint::Start,
            Some("progress") => Endpoint::Progress,
            Some("stop") => Endpoint::Stop,
            Some(_) => return Err(ApiError::new(404, "not_found", "no such endpoint")),
        };
        let user = call
            .context
            .iter()
            .rev()
            .find(|(k, _)| k == "sub")
            .map(|(_, v)| v.as_str())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                ApiError::new(
                    401,
                    "missing_subject",
                    "no authenticated user: the route needs the JWT policy",
                )
            })?;
        match (endpoint, &req.method) {
            (Endpoint::Start, &Method::POST) => self.start(req, call, user, movie).await,
            (Endpoint::Progress, &Method::POST) => self.report(req, user, movie).await,
            (Endpoint::Progress, &Method::GET) => self.read(user, movie).await,
            (Endpoint::Stop, &Method::POST) => self.stop(req, user, movie).await,
            (Endpoint::Progress, _) => Err(not_allowed("GET, POST")),
            _ => Err(not_allowed("POST")),
        }
    }

    async fn start(
        &self,
        req: &EdgeRequest,
        call: &Call<'_>,
        user: &str,
        movie: &str,
    ) -> Result<EdgeResponse, ApiError> {
        let body: reply::StartBody = reply::decode(&req.body, self.settings.max_body).await?;
        let template = match body.manifest_type {
            ManifestType::Hls => &self.settings.manifest_hls,
            ManifestType::Dash => &self.settings.manifest_dash,
        };
        let path = template.replace("{movie_id}", movie);
        match call.objects.probe(&path).await {
            Ok(()) => {}
            Err(ObjectError::NotFound) => {
                return Err(ApiError::new(
                    404,
                    "manifest_not_found",
                    "Manifest not found",
                ));
            }
            Err(e) => {
                tracing::warn!(path, error = %e, "cannot check the manifest");
                return Err(ApiError::new(
                    502,
                    "origin_unavailable",
                    "origin unavailable",
                ));
            }
        }
        let url = self.manifest_url(req, &path).await?;
        let ua = req
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let session = self
            .sessions
            .start(user, movie, ua, &req.client_addr.to_string())
            .await;
        let event = StreamStart {
            user_id: user.to_owned(),
            movie_id: movie.to_owned(),
            action: "stream_start".into(),
            timestamp: session.started_at.clone(),
        };
        self.spool
            .append(NewRecord::new(&event, session.id.clone()))
            .await
            .map_err(spool_error)?;
        tracing::info!(
            session = session.id,
            user,
            movie,
            client = session.ip_address,
            "stream started"
        );
        Ok(reply::json(
            StatusCode::OK,
            &reply::StartReply {
                manifest_url: url,
                expires_in: self.settings.expiration.as_secs(),
                manifest_type: body.manifest_type,
            },
        ))
    }

    async fn manifest_url(&self, req: &EdgeRequest, path: &str) -> Result<String, ApiError> {
        match &self.settings.urls {
            ManifestUrls::Origin(p) => {
                p.presign(path, self.settings.expiration)
                    .await
                    .map_err(|e| {
                        tracing::warn!(path, error = %e, "cannot presign");
                        ApiError::new(502, "origin_unavailable", "cannot sign an origin URL")
                    })
            }
            ManifestUrls::Edge {
                secret,
                param,
                public_url,
            } => {
                let base = match public_url {
                    Some(u) => u.trim_end_matches('/').to_owned(),
                    None => {
                        let host = req
                            .headers
                            .get(header::HOST)
                            .and_then(|v| v.to_str().ok())
                            .filter(|h| {
                                !h.is_empty()
                                    && h.bytes()
                                        .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
                            })
                            .ok_or_else(|| {
                                ApiError::new(400, "missing_host", "a Host header is required")
                            })?;
                        format!("{}://{host}", if req.tls { "https" } else { "http" })
                    }
                };
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let grant = edge_urlsig::Grant {
                    expires: now + self.settings.expiration.as_secs(),
                    scope: edge_urlsig::directory_scope(path).to_owned(),
                    client_addr: None,
                };
                let token = edge_urlsig::Key::new(secret.as_bytes()).sign(&grant);
                Ok(format!("{base}{path}?{param}={token}"))
            }
        }
    }

    async fn report(
        &self,
        req: &EdgeRequest,
        user: &str,
        movie: &str,
    ) -> Result<EdgeResponse, ApiError> {
        let body: reply::PositionBody = reply::decode(&req.body, self.settings.max_body).await?;
        let position = reply::position(&body, self.settings.max_position)?;
        let key = self.sessions.key_for(user, movie).await;
        self.progress
            .record(user, movie, position, key)
            .await
            .map_err(spool_error)?;
        Ok(reply::json(
            StatusCode::OK,
            &reply::ProgressReply {
                success: true,
                position_seconds: position,
                message: "Progress updated successfully",
            },
        ))
    }

    async fn read(&self, user: &str, movie: &str) -> Result<EdgeResponse, ApiError> {
        match self.progress.get(user, movie).await {
            Ok(Some(p)) => Ok(reply::json(
                StatusCode::OK,
                &reply::ProgressView {
                    user_id: user,
                    movie_id: movie,
                    position_seconds: p.position_seconds,
                    last_watched_at: &p.last_watched_at,
                },
            )),
            Ok(None) => Err(ApiError::new(
                404,
                "no_progress",
                "No watch progress for this movie",
            )),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read progress");
                Err(ApiError::new(
                    503,
                    "progress_unavailable",
                    "progress store unavailable",
                ))
            }
        }
    }

    async fn stop(
        &self,
        req: &EdgeRequest,
        user: &str,
        movie: &str,
    ) -> Result<EdgeResponse, ApiError> {
        let body: reply::PositionBody = reply::decode(&req.body, self.settings.max_body).await?;
        let position = reply::position(&body, self.settings.max_position)?;
        let session = self.sessions.stop(user, movie).await;
        let event = StreamStop {
            user_id: user.to_owned(),
            movie_id: movie.to_owned(),
            action: "stream_stop".into(),
            position_seconds: position,
            timestamp: edge_events::timestamp(SystemTime::now()),
        };
        let key = session
            .as_ref()
            .map_or_else(|| format!("{user}:{movie}"), |s| s.id.clone());
        self.spool
            .append(NewRecord::new(&event, key))
            .await
            .map_err(spool_error)?;
        self.progress.stopped(user, movie, &event);
        match &session {
            Some(s) => tracing::info!(
                session = s.id,
                user,
                movie,
                duration_seconds = s.duration_seconds,
                "stream stopped"
            ),
            None => tracing::info!(user, movie, "stream stopped (no open session)"),
        }
        Ok(reply::json(
            StatusCode::OK,
            &reply::StopReply {
                success: true,
                message: "Stream stopped successfully",
            },
        ))
    }
}

fn not_allowed(allow: &'static str) -> ApiError {
    ApiError::new(405, "method_not_allowed", format!("allowed: {allow}"))
}

fn spool_error(e: SpoolError) -> ApiError {
    match e {
        SpoolError::Full { .. } => {
            tracing::error!(error = %e, "event spool full: refusing API calls that must record an event");
            ApiError::new(
                503,
                "event_backlog_full",
                "events cannot be recorded right now",
            )
        }
        e => {
            tracing::error!(error = %e, "cannot append to the event spool");
            ApiError::new(
                503,
                "event_log_unavailable",
                "events cannot be recorded right now",
            )
        }
    }
}

#[async_trait::async_trait]
impl Service for StreamApi {
    async fn call(&self, req: &EdgeRequest, call: Call<'_>) -> EdgeResponse {
        match self.answer(req, &call).await {
            Ok(r) => r,
            Err(e) => {
                let mut r = e.response();
                if e.status == StatusCode::METHOD_NOT_ALLOWED
                    && let Ok(v) =
                        http::HeaderValue::from_str(e.detail.trim_start_matches("allowed: "))
                {
                    r.headers.insert(header::ALLOW, v);
                }
                r
            }
        }
    }
}
