//! The seeder's HTTP face.

use crate::{
    Seeder,
    files::{Body, ReadError},
    metrics::Outcome,
    pull::PullError,
};
use edge_contract::{EdgeRequest, EdgeResponse, Handler, classify, normalize};
use edge_directory::SegmentRef;
use edge_origin::OriginError;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};

/// The health endpoint: `200 {"seederId":..,"ready":true,"segments":n,"bytes":n}`, or 503 with
/// `"ready":false` before the first scan finished and after shutdown.
pub const HEALTH_PATH: &str = "/_seeder/health";

impl Seeder {
    fn health(&self) -> EdgeResponse {
        let ready = self.ready();
        let (segments, bytes) = {
            let state = self.state.lock();
            (state.holdings.len(), state.bytes)
        };
        let body = serde_json::json!({
            "seederId": self.cfg.id,
            "ready": ready,
            "segments": segments,
            "bytes": bytes,
        });
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        EdgeResponse::json(status, body.to_string())
    }

    fn object(&self, path: &str, body: &Body, x_cache: &'static str) -> EdgeResponse {
        let mut headers = HeaderMap::new();
        let content_type = classify(path).map_or("application/octet-stream", |(t, _)| t);
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        let sha = &*body.sha256;
        if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", &sha[..sha.len().min(32)])) {
            headers.insert(header::ETAG, v);
        }
        if let Ok(v) = HeaderValue::from_str(sha) {
            headers.insert("x-content-sha256", v);
        }
        headers.insert("x-seeder-id", self.id_header.clone());
        headers.insert("x-cache", HeaderValue::from_static(x_cache));
        EdgeResponse {
            status: StatusCode::OK,
            headers,
            body: body.bytes.clone().into(),
        }
    }

    /// Answers an object request; `None` outcome for the health endpoint.
    async fn respond(&self, req: &EdgeRequest) -> (Option<Outcome>, EdgeResponse) {
        if req.path == crate::PURGE_PATH && req.method == Method::POST {
            return (None, self.purge_request(req).await);
        }
        if req.method != Method::GET && req.method != Method::HEAD {
            let mut r = EdgeResponse::error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
            r.headers
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return (Some(Outcome::Error), r);
        }
        let path = match normalize(&req.path) {
            Ok(p) => p,
            Err(e) => {
                return (
                    Some(Outcome::Error),
                    EdgeResponse::error(StatusCode::BAD_REQUEST, e.reason()),
                );
            }
        };
        if path == HEALTH_PATH {
            return (None, self.health());
        }
        let not_found = || {
            (
                Some(Outcome::NotFound),
                EdgeResponse::error(StatusCode::NOT_FOUND, "not_found"),
            )
        };
        if path.starts_with("/_seeder/") {
            return not_found();
        }
        let (catalog, p, max) = (self.catalog.clone(), path.clone(), self.cfg.max_object);
        let read = tokio::task::spawn_blocking(move || catalog.read(&p, max)).await;
        match read {
            Ok(Ok(Some(body))) => {
                self.catalog.touch(&path);
                return (Some(Outcome::Hit), self.object(&path, &body, "HIT seeder"));
            }
            Ok(Ok(None)) => {}
            Ok(Err(ReadError::TooLarge(size))) => {
                tracing::warn!(path, size, "file larger than max_object refused");
                return (
                    Some(Outcome::Error),
                    EdgeResponse::error(StatusCode::BAD_GATEWAY, "object_too_large"),
                );
            }
            Ok(Err(ReadError::Io(e))) => {
                tracing::warn!(path, error = %e, "cannot read a cached file");
                return (
                    Some(Outcome::Error),
                    EdgeResponse::error(StatusCode::INTERNAL_SERVER_ERROR, "read_failed"),
                );
            }
            Err(e) => {
                tracing::error!(path, error = %e, "read task failed");
                return (
                    Some(Outcome::Error),
                    EdgeResponse::error(StatusCode::INTERNAL_SERVER_ERROR, "read_failed"),
                );
            }
        }
        // Only segments of streams are pulled (and so published); the file must be storable.
        let pullable = self.cfg.pull_through
            && self.origin.is_some()
            && SegmentRef::from_path(&self.cfg.streams_prefix, &path).is_some()
            && self.catalog.file(&path).is_some();
        if !pullable {
            return not_found();
        }
        match self.pull(&path).await {
            Ok(pulled) => (
                Some(Outcome::Pull),
                self.object(&path, &pulled.body, "MISS seeder-pull"),
            ),
            Err(PullError::Origin(OriginError::NotFound)) => not_found(),
            Err(e) => {
                tracing::warn!(path, error = %e, "pull-through failed");
                let code = match e {
                    PullError::Origin(OriginError::Timeout(_)) => "origin_timeout",
                    PullError::Origin(OriginError::TooLarge(_)) => "object_too_large",
                    PullError::Store(_) => "store_failed",
                    _ => "origin_unavailable",
                };
                (
                    Some(Outcome::Error),
                    EdgeResponse::error(StatusCode::BAD_GATEWAY, code),
                )
            }
        }
    }
}

/// `GET`/`HEAD` of a public path answers the cached file whole (`x-cache: HIT seeder`), or with
/// pull-through the origin's copy (`x-cache: MISS seeder-pull`), with `content-type` by extension,
/// `etag`, `x-content-sha256` (lowercase hex SHA-256 of the body) and `x-seeder-id`. Hidden paths
/// (dotfiles, the pull temp directory) do not exist; `..` is refused by normalisation (400). Errors
/// are JSON: 404 `{"error":"not_found"}`, 405, 400, 502 when the origin fails; every answer carries
/// `x-seeder-id`. Never waits for the directory.
#[async_trait::async_trait]
impl Handler for Seeder {
    async fn handle(&self, req: EdgeRequest) -> EdgeResponse {
        let (outcome, mut response) = self.respond(&req).await;
        // On every answer, errors included: an edge tells "the seeder's origin pull failed"
        // (502 with this header) from "something in between failed".
        response
            .headers
            .insert("x-seeder-id", self.id_header.clone());
        if let Some(outcome) = outcome {
            self.metrics.request(outcome);
            if req.method == Method::GET && response.status == StatusCode::OK {
                self.metrics
                    .bytes_served
                    .inc_by(response.body.len().unwrap_or(0));
            }
        }
        tracing::debug!(method = %req.method, path = %req.path, status = response.status.as_u16(), "seeder served");
        response
    }
}
