//! The admin listener: health and metrics for operators and orchestrators, cache purges.

use crate::policies::PolicyControl;
use bytes::Bytes;
use edge_contract::{EdgeRequest, EdgeResponse, Handler};
use edge_pipeline::Pipeline;
use http::{HeaderValue, StatusCode, header};
use prometheus::{Encoder as _, Registry, TextEncoder};
use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

/// `GET /health/live` (the process answers), `/health/ready` (serving and not draining),
/// `/health` (JSON with each component's status), `/metrics` (Prometheus text format),
/// `GET /admin/policies` (versions, canaries and their window statistics),
/// `POST /admin/policies/reload` (reload now; 200 with the new deployments, or 422 with every
/// problem while the running policies stay), `POST /admin/purge` with `{"path": "/vod/..."}` or
/// `{"prefix": "/vod/movies/m1/"}` (removes from memory and disk; answers the counts).
///
/// `POST`s need `Authorization: Bearer <server.admin_token>` when a token is configured; purging
/// always does. Requests carrying `Origin` (cross-site browser requests) are refused.
pub(crate) struct Admin {
    pub(crate) registry: Registry,
    pub(crate) ready: Arc<AtomicBool>,
    pub(crate) policies: Arc<PolicyControl>,
    pub(crate) pipeline: Option<Arc<Pipeline>>,
    pub(crate) seeder: Option<Arc<edge_seeder::Seeder>>,
    pub(crate) routing: Option<Arc<edge_upstream::SeederOrigin>>,
    pub(crate) token: Option<String>,
    /// The roles this process runs.
    pub(crate) roles: Vec<&'static str>,
    pub(crate) health: Arc<crate::health::Monitor>,
    /// When the process started (`/status` uptime).
    pub(crate) started: std::time::Instant,
}

/// Most bytes of a purge request body.
const MAX_PURGE_BODY: u64 = 4096;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    path: Option<String>,
    prefix: Option<String>,
}

impl Admin {
    /// `None` when `req` may change state; the refusal otherwise.
    fn refuse(&self, req: &EdgeRequest, token_required: bool) -> Option<EdgeResponse> {
        if req.headers.contains_key(header::ORIGIN) {
            return Some(EdgeResponse::error_detail(
                StatusCode::FORBIDDEN,
                "cross_origin",
                "cross-origin requests are refused",
            ));
        }
        let Some(token) = &self.token else {
            return token_required.then(|| {
                EdgeResponse::error_detail(
                    StatusCode::FORBIDDEN,
                    "admin_token_unset",
                    "set server.admin_token (EDGE_ADMIN_TOKEN) to enable this endpoint",
                )
            });
        };
        if edge_contract::bearer_matches(&req.headers, token) {
            return None;
        }
        let mut r = EdgeResponse::error_detail(
            StatusCode::UNAUTHORIZED,
            "admin_token_required",
            "admin token required",
        );
        r.headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"edge-admin\""),
        );
        Some(r)
    }

    async fn purge(&self, req: &EdgeRequest) -> EdgeResponse {
        let Some(pipeline) = &self.pipeline else {
            return EdgeResponse::error_detail(
                StatusCode::NOT_FOUND,
                "no_cache",
                "no edge cache in this process",
            );
        };
        let body = match req.body.bytes(MAX_PURGE_BODY).await {
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
        let (what, prefix) = match (parsed.path, parsed.prefix) {
            (Some(path), None) => match edge_contract::normalize(&path) {
                Ok(p) => (p, false),
                Err(e) => return EdgeResponse::error(StatusCode::BAD_REQUEST, e.reason()),
            },
            (None, Some(prefix)) if prefix.starts_with('/') && prefix.len() > 1 => (prefix, true),
            _ => {
                return EdgeResponse::error_detail(
                    StatusCode::BAD_REQUEST,
                    "invalid_body",
                    "give exactly one of `path` or `prefix` (an absolute path other than /)",
                );
            }
        };
        // Seeders first: an edge refilling in between must not get the old copy back from them.
        let mut seeders = serde_json::Map::new();
        if let (Some(routing), Some(token)) = (&self.routing, &self.token) {
            let body = if prefix {
                serde_json::json!({ "prefix": what })
            } else {
                serde_json::json!({ "path": what })
            };
            for (id, outcome) in routing.purge(&body.to_string(), token).await {
                let v = match outcome {
                    Ok(n) => serde_json::json!({ "deleted": n }),
                    Err(e) => {
                        tracing::warn!(seeder = id, error = %e, "purge not applied on a seeder");
                        serde_json::json!({ "error": e })
                    }
                };
                seeders.insert(id, v);
            }
        }
        let purged = if prefix {
            pipeline.purge_prefix(&what).await
        } else {
            pipeline.purge(&what).await
        };
        tracing::info!(
            what,
            memory = purged.memory,
            disk = purged.disk,
            seeders = seeders.len(),
            "purged"
        );
        json(
            StatusCode::OK,
            &serde_json::json!({
                "purged": what,
                "memory": purged.memory,
                "disk": purged.disk,
                "seeders": seeders,
            }),
        )
    }

    async fn health(&self) -> EdgeResponse {
        let ready = self.ready.load(Ordering::SeqCst);
        let (report, deps) = self.health.detailed().await;
        let origin = report.origin.as_ref();
        let healthy = ready && origin.is_none_or(Result::is_ok);
        let mut policies = self.policies.summary();
        policies["status"] = "ok".into();
        let body = serde_json::json!({
            "status": if healthy { "ok" } else { "degraded" },
            "ready": ready,
            "roles": self.roles,
            "s3": deps["s3"],
            "redis": deps["redis"],
            "kafka": deps["kafka"],
            "events": deps["events"],
            "components": {
                "origin": origin.map(|o| serde_json::json!({
                    "status": if o.is_ok() { "ok" } else { "down" },
                    "kind": deps["origin"],
                    "error": o.as_ref().err(),
                })),
                "policies": policies,
                "cache": { "status": "ok", "edge": self.pipeline.is_some() },
                "seeders": self.routing.as_ref().map(|r| r.seeders()).map(|s| serde_json::json!(s)),
                "seeder": self.seeder.as_ref().map(|s| serde_json::json!({
                    "status": if s.ready() { "ok" } else { "starting" },
                })),
            },
        });
        let status = if healthy {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        EdgeResponse::uncached(status, "application/json", Bytes::from(body.to_string()))
    }

    /// `/status` in the signaling seed's shape: `{nodeId, timestamp, localConnections,
    /// localRooms, localSwarms, memory, uptime}` (the counts are this process's signaling
    /// gauges, WebSocket connections of every protocol; `nodeId` is null without the
    /// signaling role), plus whether the cluster is reachable.
    fn status(&self) -> EdgeResponse {
        let families = self.registry.gather();
        let gauge = |name: &str| -> u64 {
            let sum: f64 = families
                .iter()
                .filter(|f| f.name() == name)
                .flat_map(|f| f.get_metric())
                .map(|m| m.get_gauge().get_value())
                .sum();
            sum.max(0.0) as u64
        };
        let hub = self.health.signaling();
        let body = serde_json::json!({
            "nodeId": hub.map(|h| h.node_id()),
            "timestamp": edge_events::timestamp(std::time::SystemTime::now()),
            "localConnections": gauge("edge_signaling_connections"),
            "localRooms": gauge("edge_signaling_rooms"),
            "localSwarms": gauge("edge_signaling_swarms"),
            "cluster": hub.and_then(|h| h.cluster_up()),
            "memory": { "rss": resident_bytes() },
            "uptime": self.started.elapsed().as_secs_f64(),
            "roles": self.roles,
        });
        json(StatusCode::OK, &body)
    }

    fn metrics(&self) -> EdgeResponse {
        let mut buf = Vec::new();
        match TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            Ok(()) => EdgeResponse::uncached(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                Bytes::from(buf),
            ),
            Err(e) => EdgeResponse::uncached(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                Bytes::from(e.to_string()),
            ),
        }
    }
}

fn not_allowed(allow: &'static str) -> EdgeResponse {
    let mut r = EdgeResponse::error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    r.headers
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> EdgeResponse {
    EdgeResponse::json(status, value.to_string())
}

#[async_trait::async_trait]
impl Handler for Admin {
    async fn handle(&self, req: EdgeRequest) -> EdgeResponse {
        if req.path == "/admin/purge" {
            if req.method != http::Method::POST {
                return not_allowed("POST");
            }
            if let Some(refused) = self.refuse(&req, true) {
                return refused;
            }
            return self.purge(&req).await;
        }
        if req.path == "/admin/policies/reload" {
            if req.method != http::Method::POST {
                return not_allowed("POST");
            }
            if let Some(refused) = self.refuse(&req, false) {
                return refused;
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
            return not_allowed("GET, HEAD");
        }
        match req.path.as_str() {
            "/health/live" => {
                EdgeResponse::uncached(StatusCode::OK, "text/plain", Bytes::from_static(b"ok\n"))
            }
            "/health/ready" if self.ready.load(Ordering::SeqCst) => {
                EdgeResponse::uncached(StatusCode::OK, "text/plain", Bytes::from_static(b"ready\n"))
            }
            "/health/ready" => EdgeResponse::uncached(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                Bytes::from_static(b"not ready\n"),
            ),
            "/health" => self.health().await,
            "/metrics" => self.metrics(),
            "/status" => self.status(),
            "/admin/policies" => json(StatusCode::OK, &self.policies.status()),
            _ => EdgeResponse::error(StatusCode::NOT_FOUND, "not_found"),
        }
    }
}

/// This process's resident memory in bytes (`VmRSS` of /proc/self/status; `None` elsewhere).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kib * 1024)
}
