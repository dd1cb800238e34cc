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

/// The header carrying the lowercase hex SHA-256 of the body (of the slice, for a 206).
const CHECKSUM: &str = "x-content-sha256";
/// The header carrying the lowercase hex SHA-256 of the whole file, on a 206.
const OBJECT_CHECKSUM: &str = "x-object-sha256";
/// The header carrying this seeder's slice size, on a 416 for a range that is not one slice.
const SLICE: &str = "x-seeder-slice";

/// The answer to a file that could not be read.
fn read_failed(path: &str, e: &ReadError) -> (Option<Outcome>, EdgeResponse) {
    let r = match e {
        ReadError::TooLarge(size) => {
            tracing::warn!(path, size, "file larger than max_object refused");
            EdgeResponse::error(StatusCode::BAD_GATEWAY, "object_too_large")
        }
        ReadError::Io(e) => {
            tracing::warn!(path, error = %e, "cannot read a cached file");
            EdgeResponse::error(StatusCode::INTERNAL_SERVER_ERROR, "read_failed")
        }
        // Answered by the callers that can meet them.
        ReadError::NotASlice(_) | ReadError::NotChecksummed => {
            EdgeResponse::error(StatusCode::INTERNAL_SERVER_ERROR, "read_failed")
        }
    };
    (Some(Outcome::Error), r)
}

/// The health endpoint: `200 {"seederId":..,"ready":true,"segments":n,"bytes":n,"slice":n}`, or 503 with
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
            "slice": self.cfg.slice,
        });
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        EdgeResponse::json(status, body.to_string())
    }

    /// The headers of an answer with a body of checksum `sha` from a file of checksum `object`.
    fn headers(&self, path: &str, object: &str, sha: &str, x_cache: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let content_type = classify(path).map_or("application/octet-stream", |(t, _)| t);
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", &object[..object.len().min(32)])) {
            headers.insert(header::ETAG, v);
        }
        if let Ok(v) = HeaderValue::from_str(sha) {
            headers.insert(CHECKSUM, v);
        }
        headers.insert("x-seeder-id", self.id_header.clone());
        headers.insert("x-cache", HeaderValue::from_static(x_cache));
        headers
    }

    fn object(&self, path: &str, body: &Body, x_cache: &'static str) -> EdgeResponse {
        EdgeResponse {
            status: StatusCode::OK,
            headers: self.headers(path, &body.sha256, &body.sha256, x_cache),
            body: body.bytes.clone().into(),
        }
    }

    /// Answers a `Range` request: one slice of a file, 206 with the slice's checksum and the
    /// file's; 416 for any other range; 404 for a missing file or one changed since it was last
    /// checksummed (never pulled: edges ask for slices of files the directory says are here).
    async fn slice(&self, path: &str, range: &HeaderValue) -> (Option<Outcome>, EdgeResponse) {
        let spec = range
            .to_str()
            .ok()
            .and_then(|r| http_range_header::parse_range_header(r).ok());
        let (catalog, p) = (self.catalog.clone(), path.to_owned());
        let read = tokio::task::spawn_blocking(move || {
            catalog.read_slice(&p, |len| match spec?.validate(len).ok()?.as_slice() {
                [r] => Some(*r.start()..r.end().saturating_add(1)),
                _ => None,
            })
        })
        .await;
        let part = match read {
            Ok(Ok(Some(part))) => part,
            Ok(Ok(None) | Err(ReadError::NotChecksummed)) => {
                return (
                    Some(Outcome::NotFound),
                    EdgeResponse::error(StatusCode::NOT_FOUND, "not_found"),
                );
            }
            Ok(Err(ReadError::NotASlice(len))) => {
                let mut r =
                    EdgeResponse::error(StatusCode::RANGE_NOT_SATISFIABLE, "range_not_a_slice");
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                    r.headers.insert(header::CONTENT_RANGE, v);
                }
                r.headers.insert(SLICE, HeaderValue::from(self.cfg.slice));
                return (Some(Outcome::Error), r);
            }
            Ok(Err(e)) => return read_failed(path, &e),
            Err(e) => {
                tracing::error!(path, error = %e, "read task failed");
                return (
                    Some(Outcome::Error),
                    EdgeResponse::error(StatusCode::INTERNAL_SERVER_ERROR, "read_failed"),
                );
            }
        };
        self.catalog.touch(path);
        let mut headers = self.headers(path, &part.object_sha256, &part.sha256, "HIT seeder");
        if let Ok(v) = HeaderValue::from_str(&part.object_sha256) {
            headers.insert(OBJECT_CHECKSUM, v);
        }
        let last = part.start + part.bytes.len() as u64 - 1;
        let range = format!("bytes {}-{last}/{}", part.start, part.size);
        if let Ok(v) = HeaderValue::from_str(&range) {
            headers.insert(header::CONTENT_RANGE, v);
        }
        let response = EdgeResponse {
            status: StatusCode::PARTIAL_CONTENT,
            headers,
            body: part.bytes.into(),
        };
        (Some(Outcome::Hit), response)
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
        if let Some(range) = req.headers.get(header::RANGE) {
            return self.slice(&path, range).await;
        }
        let (catalog, p, max) = (self.catalog.clone(), path.clone(), self.cfg.max_object);
        let read = tokio::task::spawn_blocking(move || catalog.read(&p, max)).await;
        match read {
            Ok(Ok(Some(body))) => {
                self.catalog.touch(&path);
                return (Some(Outcome::Hit), self.object(&path, &body, "HIT seeder"));
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => return read_failed(&path, &e),
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
/// `etag`, `x-content-sha256` (lowercase hex SHA-256 of the body) and `x-seeder-id`. With `Range`:
/// one slice of the file as a 206 (`content-range`, `x-content-sha256` of the slice as checksummed
/// at scan, `x-object-sha256` of the file), 416 with `x-seeder-slice` for any other range. Hidden paths
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
            let served = matches!(
                response.status,
                StatusCode::OK | StatusCode::PARTIAL_CONTENT
            );
            if req.method == Method::GET && served {
                self.metrics
                    .bytes_served
                    .inc_by(response.body.len().unwrap_or(0));
            }
        }
        tracing::debug!(method = %req.method, path = %req.path, status = response.status.as_u16(), "seeder served");
        response
    }
}
