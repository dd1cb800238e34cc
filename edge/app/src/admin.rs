//! The admin listener: health and metrics for operators and orchestrators.

use crate::policies::PolicyControl;
use bytes::Bytes;
use edge_origin::Origin;
use edge_pipeline::{EdgeRequest, EdgeResponse, Handler};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use prometheus::{Encoder as _, Registry, TextEncoder};
use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

/// `GET /health/live` (the process answers), `/health/ready` (serving and not draining),
/// `/health` (JSON with each component's status), `/metrics` (Prometheus text format),
/// `GET /admin/policies` (versions, canaries and their window statistics),
/// `POST /admin/policies/reload` (reload now; 200 with the new deployments, or 422 with every
/// problem while the running policies stay).
pub(crate) struct Admin {
    registry: Registry,
    ready: Arc<AtomicBool>,
    origin: Arc<dyn Origin>,
    policies: Arc<PolicyControl>,
}

impl Admin {
    pub(crate) fn new(
        registry: Registry,
        ready: Arc<AtomicBool>,
        origin: Arc<dyn Origin>,
        policies: Arc<PolicyControl>,
    ) -> Self {
        Self {
            registry,
            ready,
            origin,
            policies,
        }
    }

    async fn health(&self) -> EdgeResponse {
        let ready = self.ready.load(Ordering::SeqCst);
        let origin = self.origin.check().await;
        let healthy = ready && origin.is_ok();
        let mut policies = self.policies.summary();
        policies["status"] = "ok".into();
        let body = serde_json::json!({
            "status": if healthy { "ok" } else { "degraded" },
            "ready": ready,
            "components": {
                "origin": {
                    "status": if origin.is_ok() { "ok" } else { "down" },
                    "kind": self.origin.describe(),
                    "error": origin.err().map(|e| e.to_string()),
                },
                "policies": policies,
                "cache": { "status": "ok", "tiers": ["memory"] },
            },
        });
        let status = if healthy {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        respond(status, "application/json", Bytes::from(body.to_string()))
    }

    fn metrics(&self) -> EdgeResponse {
        let mut buf = Vec::new();
        match TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            Ok(()) => respond(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                Bytes::from(buf),
            ),
            Err(e) => respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                Bytes::from(e.to_string()),
            ),
        }
    }
}

fn json(status: StatusCode, value: &serde_json::Value) -> EdgeResponse {
    respond(status, "application/json", Bytes::from(value.to_string()))
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> EdgeResponse {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    EdgeResponse {
        status,
        headers,
        body,
    }
}

#[async_trait::async_trait]
impl Handler for Admin {
    async fn handle(&self, req: EdgeRequest) -> EdgeResponse {
        if req.path == "/admin/policies/reload" {
            if req.method != http::Method::POST {
                return respond(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "text/plain",
                    Bytes::from_static(b"POST to reload\n"),
                );
            }
            // Browsers send Origin on cross-site POSTs: a page must not be able to trigger this.
            if req.headers.contains_key(http::header::ORIGIN) {
                return respond(
                    StatusCode::FORBIDDEN,
                    "text/plain",
                    Bytes::from_static(b"cross-origin requests are refused\n"),
                );
            }
            return match self.policies.reload("admin endpoint").await {
                Ok(status) => json(
                    StatusCode::OK,
                    &serde_json::json!({ "reloaded": true, "deployments": status }),
                ),
                Err(p) => json(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &serde_json::json!({ "reloaded": false, "problems": p.0 }),
                ),
            };
        }
        if req.method != http::Method::GET && req.method != http::Method::HEAD {
            return respond(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                Bytes::from_static(b"method not allowed\n"),
            );
        }
        match req.path.as_str() {
            "/health/live" => respond(StatusCode::OK, "text/plain", Bytes::from_static(b"ok\n")),
            "/health/ready" if self.ready.load(Ordering::SeqCst) => {
                respond(StatusCode::OK, "text/plain", Bytes::from_static(b"ready\n"))
            }
            "/health/ready" => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                Bytes::from_static(b"not ready\n"),
            ),
            "/health" => self.health().await,
            "/metrics" => self.metrics(),
            "/admin/policies" => json(StatusCode::OK, &self.policies.status()),
            _ => respond(
                StatusCode::NOT_FOUND,
                "text/plain",
                Bytes::from_static(b"not found\n"),
            ),
        }
    }
}
