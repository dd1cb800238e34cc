//! `POST /_seeder/purge`: edges forward an operator's purge, so a corrected object is not served
//! again from a seeder's old copy.

use crate::{Seeder, files::Found};
use edge_contract::{EdgeRequest, EdgeResponse};
use http::StatusCode;
use std::time::SystemTime;

/// The purge endpoint.
pub const PURGE_PATH: &str = "/_seeder/purge";

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    path: Option<String>,
    prefix: Option<String>,
}

/// Largest purge request body.
const MAX_BODY: u64 = 16 * 1024;

impl Seeder {
    /// Deletes the file of `path`, or every file under `prefix`, and withdraws them from the
    /// directory. Returns how many files were deleted.
    pub async fn purge(&self, target: &str, prefix: bool) -> usize {
        let catalog = self.catalog.clone();
        let target = target.to_owned();
        let deleted = tokio::task::spawn_blocking(move || {
            let found: Vec<Found> = if prefix {
                catalog
                    .walk()
                    .0
                    .into_iter()
                    .filter(|f| f.public.starts_with(&target))
                    .collect()
            } else {
                catalog
                    .file(&target)
                    .filter(|p| p.is_file())
                    .map(|path| Found {
                        public: target.clone(),
                        path,
                        len: 0,
                        mtime: SystemTime::now(),
                    })
                    .into_iter()
                    .collect()
            };
            found.iter().filter(|f| catalog.delete(f).is_ok()).count()
        })
        .await
        .unwrap_or(0);
        if deleted > 0 {
            self.scan_once().await;
        }
        deleted
    }

    pub(crate) async fn purge_request(&self, req: &EdgeRequest) -> EdgeResponse {
        let Some(token) = &self.cfg.purge_token else {
            return EdgeResponse::error(StatusCode::FORBIDDEN, "purge_disabled");
        };
        if !edge_contract::bearer_matches(&req.headers, token) {
            return EdgeResponse::error(StatusCode::UNAUTHORIZED, "unauthorized");
        }
        let body = match req.body.bytes(MAX_BODY).await {
            Ok(b) => b,
            Err(e) => return EdgeResponse::body_error(&e),
        };
        let parsed: PurgeRequest = match serde_json::from_slice(&body) {
            Ok(p) => p,
            Err(e) => {
                return EdgeResponse::error_detail(
                    StatusCode::BAD_REQUEST,
                    "invalid_body",
                    &e.to_string(),
                );
            }
        };
        let deleted = match (parsed.path, parsed.prefix) {
            (Some(path), None) => match edge_contract::normalize(&path) {
                Ok(p) => self.purge(&p, false).await,
                Err(e) => return EdgeResponse::error(StatusCode::BAD_REQUEST, e.reason()),
            },
            (None, Some(prefix)) if prefix.starts_with('/') && prefix.len() > 1 => {
                self.purge(&prefix, true).await
            }
            _ => {
                return EdgeResponse::error_detail(
                    StatusCode::BAD_REQUEST,
                    "invalid_body",
                    "give exactly one of `path` or `prefix`",
                );
            }
        };
        tracing::info!(deleted, "purged on an edge's request");
        EdgeResponse::json(
            StatusCode::OK,
            serde_json::json!({ "deleted": deleted }).to_string(),
        )
    }
}
