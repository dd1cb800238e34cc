//! `POST /_seeder/purge`: edges forward an operator's purge, so a corrected object is not served
//! again from a seeder's old copy.

use crate::{Seeder, files::Found};
use bytes::Bytes;
use edge_pipeline::{EdgeRequest, EdgeResponse};
use http::{HeaderValue, StatusCode, header};
use std::time::SystemTime;

/// The purge endpoint.
pub const PURGE_PATH: &str = "/_seeder/purge";

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    path: Option<String>,
    prefix: Option<String>,
}

fn answer(status: StatusCode, body: serde_json::Value) -> EdgeResponse {
    let mut headers = http::HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    EdgeResponse {
        status,
        headers,
        body: Bytes::from(body.to_string()),
    }
}

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
            return answer(
                StatusCode::FORBIDDEN,
                serde_json::json!({ "error": "purge_disabled" }),
            );
        };
        if !edge_pipeline::bearer_matches(&req.headers, token) {
            return answer(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({ "error": "unauthorized" }),
            );
        }
        let parsed: PurgeRequest = match serde_json::from_slice(&req.body) {
            Ok(p) => p,
            Err(e) => {
                return answer(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({ "error": e.to_string() }),
                );
            }
        };
        let deleted = match (parsed.path, parsed.prefix) {
            (Some(path), None) => match edge_pipeline::normalize(&path) {
                Ok(p) => self.purge(&p, false).await,
                Err(e) => {
                    return answer(
                        StatusCode::BAD_REQUEST,
                        serde_json::json!({ "error": e.reason() }),
                    );
                }
            },
            (None, Some(prefix)) if prefix.starts_with('/') && prefix.len() > 1 => {
                self.purge(&prefix, true).await
            }
            _ => {
                return answer(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({ "error": "give exactly one of `path` or `prefix`" }),
                );
            }
        };
        tracing::info!(deleted, "purged on an edge's request");
        answer(StatusCode::OK, serde_json::json!({ "deleted": deleted }))
    }
}
