//! The protocol-neutral request pipeline of the edge:
//!
//! ```text
//! EdgeRequest ─► method ─► path normalisation ─► route ─► policy chain ─► cache ─► origin
//!                                                             │             │
//!                                          deny / redirect ◄──┘   HIT ◄─────┘ (coalesced MISS)
//!                                 ─► representation (token propagation) ─► conditional / range ─► EdgeResponse
//! ```
//!
//! Listeners (pingora for HTTP/1.1 and HTTP/2, later quinn for HTTP/3) only translate their
//! session into an [`EdgeRequest`] and write the [`EdgeResponse`] back; everything a viewer can
//! observe is decided here, once, for every protocol. See `ARCHITECTURE.md` for each phase.

mod metrics;
mod respond;
mod tiers;

pub use metrics::PipelineMetrics;
pub use tiers::Source;

use arc_swap::ArcSwap;
use bytes::Bytes;
use edge_cache::{Cache, CacheConfig, FetchFailure, TaskFailed, Weighted};
use edge_contract::{
    Body, Call, EdgeRequest, EdgeResponse, Handler, MediaKind, ObjectError, Objects, Service,
    classify, normalize,
};
use edge_disk_cache::DiskCache;
use edge_origin::{Origin, OriginError};
use edge_policy::{Outcome, RequestInfo, Router};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

/// Where the pipeline records analytics events (`policy.denied`, `cache.fill`). Called on the
/// request path: must not block or wait (the edge's spool queues the record).
pub trait EventSink: Send + Sync + 'static {
    /// Records `rec`, or drops it (and counts that) when it cannot be queued.
    fn emit(&self, rec: edge_events::NewRecord);
}

/// Where a [`Service`] is mounted.
#[derive(Clone)]
pub struct Mount {
    /// A path (`/health`) or, with `subtree`, a prefix (`/api/v1/stream`: itself and every
    /// path below it).
    pub path: String,
    /// Also every path below `path`.
    pub subtree: bool,
    /// Served without a route or policies (health checks).
    pub open: bool,
    /// The endpoint.
    pub service: Arc<dyn Service>,
}

impl Mount {
    fn matches(&self, path: &str) -> bool {
        match path.strip_prefix(self.path.as_str()) {
            Some("") => true,
            Some(rest) => self.subtree && rest.starts_with('/'),
            None => false,
        }
    }
}

/// An object as cached: body and validators.
#[derive(Debug, Clone)]
pub struct Object {
    /// Whole body.
    pub body: Bytes,
    /// Strong entity tag, quoted (`"abc"`).
    pub etag: Option<String>,
    /// Last modification time.
    pub last_modified: Option<SystemTime>,
    /// For manifests: where tokens go, found once when the object was fetched (`None` for
    /// segments, or a manifest that does not parse).
    pub manifest: Option<Arc<edge_manifest::Prepared>>,
    /// Which tier filled the memory tier with it.
    pub source: Source,
    /// When it was fetched from a seeder or the origin (for `Age`).
    pub fetched_at: SystemTime,
    /// An expired copy answering because the upstream failed.
    pub stale: bool,
    /// Freshness lifetime from `fetched_at` (the origin's `Cache-Control` or the configured TTL).
    pub max_age: Duration,
}

impl Object {
    /// An object read from `source` at `fetched_at`; manifests are prepared for token
    /// propagation here, once. `etag` may be quoted or not.
    pub fn new(
        key: &str,
        body: Bytes,
        etag: Option<String>,
        last_modified: Option<SystemTime>,
        source: Source,
        fetched_at: SystemTime,
        stale: bool,
    ) -> Self {
        let manifest = edge_manifest::Kind::of(key).and_then(|kind| {
            match edge_manifest::Prepared::new(kind, &body) {
                Ok(p) => Some(Arc::new(p)),
                Err(e) => {
                    tracing::warn!(path = key, error = %e, "origin manifest does not parse; served without token propagation");
                    None
                }
            }
        });
        Self {
            body,
            etag: etag.map(|e| format!("\"{}\"", e.trim_matches('"'))),
            last_modified,
            manifest,
            source,
            fetched_at,
            stale,
            max_age: Duration::ZERO,
        }
    }

    /// `x-cache` for this object reached through the memory tier with `status`.
    fn x_cache(&self, status: edge_cache::Status) -> &'static str {
        use edge_cache::Status;
        match (status, self.source, self.stale) {
            (Status::Hit, ..) => "HIT memory",
            (Status::Stale, ..) => "STALE memory",
            (_, Source::Disk, true) => "STALE disk",
            (_, Source::Disk, false) => "HIT disk",
            (Status::Coalesced, Source::Seeder, _) => "MISS seeder coalesced",
            (Status::Coalesced, Source::Origin, _) => "MISS origin coalesced",
            (_, Source::Seeder, _) => "MISS seeder",
            (_, Source::Origin, _) => "MISS origin",
        }
    }
}

impl Weighted for Object {
    fn weight(&self) -> usize {
        self.body.len()
    }
}

impl FetchFailure for FetchError {
    fn serve_stale(&self) -> bool {
        match self {
            Self::Origin(e) => e.is_outage(),
            Self::Task(_) => true,
        }
    }
}

/// What a purge removed, per tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Entries removed from memory.
    pub memory: usize,
    /// Entries removed from disk.
    pub disk: usize,
}

/// Why an object could not be had; cloneable so one failure answers every coalesced waiter.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// From the origin.
    #[error(transparent)]
    Origin(#[from] OriginError),
    /// The fetch task died.
    #[error(transparent)]
    Task(#[from] TaskFailed),
}

/// Freshness and size settings of the pipeline.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Cache limits.
    pub cache: CacheConfig,
    /// Freshness of cached manifests.
    pub manifest_ttl: Duration,
    /// Freshness of cached segments.
    pub segment_ttl: Duration,
    /// How long past freshness a copy may answer when the upstream fails (memory and disk).
    pub stale_if_error: Duration,
    /// `Access-Control-Allow-Origin` for every response; `None` disables CORS.
    pub cors_allow_origin: Option<HeaderValue>,
}

/// The viewer-facing pipeline. Routes can be swapped at run time ([`Pipeline::set_router`]):
/// requests in flight finish on the router they started with.
pub struct Pipeline {
    router: ArcSwap<Router>,
    cache: Cache<Object, FetchError>,
    tiers: Arc<tiers::Tiers>,
    cfg: PipelineConfig,
    metrics: PipelineMetrics,
    mounts: std::sync::OnceLock<Vec<Mount>>,
    events: Option<Arc<dyn EventSink>>,
}

impl Pipeline {
    /// A pipeline over `upstream` (the origin, or seeders in front of it), running the chains of
    /// `router`, with a disk tier between memory and upstream when `disk` is set.
    pub fn new(
        router: Router,
        upstream: Arc<dyn Origin>,
        disk: Option<DiskCache>,
        mut cfg: PipelineConfig,
        metrics: PipelineMetrics,
    ) -> Self {
        cfg.cache.stale_if_error = cfg.stale_if_error;
        let cache = Cache::new(cfg.cache.clone(), Some(metrics.cache.clone()));
        let tiers = tiers::Tiers {
            upstream,
            disk,
            freshness: tiers::Freshness {
                manifest_ttl: cfg.manifest_ttl,
                segment_ttl: cfg.segment_ttl,
                stale_if_error: cfg.stale_if_error,
            },
            metrics: metrics.tiers.clone(),
            events: None,
        };
        Self {
            router: ArcSwap::from_pointee(router),
            cache,
            tiers: Arc::new(tiers),
            cfg,
            metrics,
            mounts: std::sync::OnceLock::new(),
            events: None,
        }
    }

    /// Records a `policy.denied` event per denial and a `cache.fill` event per fill into
    /// `events`.
    pub fn with_events(mut self, events: Arc<dyn EventSink>) -> Self {
        if let Some(tiers) = Arc::get_mut(&mut self.tiers) {
            tiers.events = Some(events.clone());
        }
        self.events = Some(events);
        self
    }

    /// Mounts the endpoints the edge answers itself; the first match wins. Set once, before
    /// serving (later calls are ignored and return false).
    pub fn mount(&self, mounts: Vec<Mount>) -> bool {
        self.mounts.set(mounts).is_ok()
    }

    /// The object at the normalised `path` through the cache tiers, as a viewer's request would
    /// get it (coalesced, cached), without policies. For services (does a movie's manifest
    /// exist?).
    pub async fn lookup(&self, path: &str) -> Result<Object, FetchError> {
        let kind = classify(path).map_or(MediaKind::Segment, |(_, k)| k);
        let tiers = self.tiers.clone();
        let key = path.to_owned();
        self.cache
            .get_or_fetch(path, move || async move { tiers.fill(&key, kind).await })
            .await
            .map(|(o, _)| o)
    }

    /// Removes `path` from every cache tier. Disk first: memory fills meanwhile may still read
    /// the disk copy, and the memory purge then drops them (fills in flight are not kept).
    pub async fn purge(&self, path: &str) -> Purged {
        let disk = match &self.tiers.disk {
            Some(d) => usize::from(d.remove(path).await),
            None => 0,
        };
        Purged {
            memory: usize::from(self.cache.purge(path)),
            disk,
        }
    }

    /// Removes every path starting with `prefix` from every cache tier (disk first, as
    /// [`Pipeline::purge`]).
    pub async fn purge_prefix(&self, prefix: &str) -> Purged {
        let disk = match &self.tiers.disk {
            Some(d) => d.purge_prefix(prefix).await,
            None => 0,
        };
        Purged {
            memory: self.cache.purge_prefix(prefix),
            disk,
        }
    }

    /// Replaces the routes and policy chains for new requests.
    pub fn set_router(&self, router: Router) {
        self.router.store(Arc::new(router));
    }

    /// The router new requests use.
    pub fn router(&self) -> Arc<Router> {
        self.router.load_full()
    }

    /// The upstream (origin, or seeders then origin).
    pub fn origin(&self) -> &Arc<dyn Origin> {
        &self.tiers.upstream
    }

    async fn serve(&self, req: &EdgeRequest) -> (String, EdgeResponse) {
        if req.method == Method::OPTIONS && self.cfg.cors_allow_origin.is_some() {
            return (String::new(), respond::preflight());
        }
        let path = match normalize(&req.path) {
            Ok(p) => p,
            Err(_) if !matches!(req.method, Method::GET | Method::HEAD) => {
                return (String::new(), method_not_allowed());
            }
            Err(e) => return (String::new(), respond::error(400, e.reason(), &[])),
        };
        let mount = self
            .mounts
            .get()
            .and_then(|m| m.iter().find(|m| m.matches(&path)));
        if let Some(m) = mount.filter(|m| m.open) {
            let call = Call {
                path: &path,
                context: &[],
                objects: self,
            };
            return (m.path.clone(), m.service.call(req, call).await);
        }
        if mount.is_none() && req.method != Method::GET && req.method != Method::HEAD {
            return (String::new(), method_not_allowed());
        }
        let router = self.router.load_full();
        let Some(route) = router.route(&path) else {
            return (String::new(), respond::error(404, "no_route", &[]));
        };
        let route_name = route.name().to_owned();
        let info = RequestInfo {
            method: req.method.as_str(),
            path: &path,
            query: &req.query,
            headers: &req.headers,
            client_addr: req.client_addr,
        };
        if let Some(m) = mount {
            let outcome = route.run(&info).await;
            drop(router);
            let response = match outcome {
                Outcome::Allow {
                    response_headers,
                    context,
                    ..
                } => {
                    let call = Call {
                        path: &path,
                        context: &context,
                        objects: self,
                    };
                    let mut r = m.service.call(req, call).await;
                    respond::add_headers(&mut r.headers, &response_headers);
                    r
                }
                other => self.refused(other, &route_name, &path, req),
            };
            return (route_name, response);
        }
        let Some((content_type, kind)) = classify(&path) else {
            return (
                route_name,
                respond::error(404, "unsupported_media_type", &[]),
            );
        };
        let (response_headers, propagate) = match route.run(&info).await {
            Outcome::Allow {
                response_headers,
                propagate_query,
                ..
            } => (response_headers, propagate_query),
            other => return (route_name, self.refused(other, route.name(), &path, req)),
        };
        let protected = !route.is_open();
        drop(router);

        let tiers = self.tiers.clone();
        let key = path.clone();
        let fetched = self
            .cache
            .get_or_fetch(&path, move || async move { tiers.fill(&key, kind).await })
            .await;
        let (obj, status) = match fetched {
            Ok(v) => v,
            Err(e) => return (route_name, origin_error(&e)),
        };

        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert("x-cache", HeaderValue::from_static(obj.x_cache(status)));
        let stale = obj.stale || status == edge_cache::Status::Stale;
        let tier = match status {
            _ if stale => "stale",
            edge_cache::Status::Hit => "memory",
            _ => obj.source.as_str(),
        };
        self.metrics.tiers.served(tier, obj.body.len());
        let age = SystemTime::now()
            .duration_since(obj.fetched_at)
            .unwrap_or_default()
            .as_secs();
        if age > 0 || stale {
            headers.insert(header::AGE, HeaderValue::from(age));
        }
        if stale {
            headers.insert(
                header::WARNING,
                HeaderValue::from_static("110 edge \"Response is Stale\""),
            );
        }
        let ttl = if stale {
            0
        } else {
            obj.max_age.as_secs().saturating_sub(age)
        };
        let cache_control = format!(
            "{}max-age={}",
            if protected { "private, " } else { "public, " },
            ttl
        );
        if let Ok(v) = HeaderValue::from_str(&cache_control) {
            headers.insert(header::CACHE_CONTROL, v);
        }
        respond::add_headers(&mut headers, &response_headers);

        let rewrite = kind == MediaKind::Manifest && !propagate.is_empty();
        let (body, etag) = if rewrite {
            match obj
                .manifest
                .as_ref()
                .map(|m| m.render(&obj.body, &propagate))
            {
                Some(Ok(b)) => (Bytes::from(b), obj.etag.as_ref().map(|e| format!("W/{e}"))),
                Some(Err(e)) => {
                    tracing::warn!(path, error = %e, "cannot propagate the token into a manifest");
                    return (route_name, respond::error(502, "invalid_manifest", &[]));
                }
                None => return (route_name, respond::error(502, "invalid_manifest", &[])),
            }
        } else {
            (obj.body.clone(), obj.etag.clone())
        };
        (
            route_name,
            respond::object(&req.headers, &obj, body, etag.as_deref(), headers),
        )
    }
}

impl Pipeline {
    /// The answer to a chain that denied or redirected; a denial is recorded as an event.
    fn refused(
        &self,
        outcome: Outcome,
        route: &str,
        path: &str,
        req: &EdgeRequest,
    ) -> EdgeResponse {
        match outcome {
            Outcome::Allow { .. } => respond::error(500, "internal", &[]),
            Outcome::Deny {
                policy,
                status,
                reason,
                headers,
            } => {
                if let Some(events) = &self.events {
                    let client = req.client_addr.to_string();
                    let denied = edge_events::PolicyDenied {
                        route: route.to_owned(),
                        policy,
                        path: path.to_owned(),
                        status,
                        reason: reason.clone(),
                        client: client.clone(),
                        timestamp: edge_events::timestamp(SystemTime::now()),
                    };
                    events.emit(edge_events::NewRecord::new(&denied, client));
                }
                respond::error(status, &reason, &headers)
            }
            Outcome::Redirect {
                status, location, ..
            } => {
                let mut r = EdgeResponse::new(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::FOUND),
                    Body::empty(),
                );
                if let Ok(v) = HeaderValue::from_str(&location) {
                    r.headers.insert(header::LOCATION, v);
                }
                r
            }
        }
    }
}

fn method_not_allowed() -> EdgeResponse {
    let mut r = respond::error(405, "method_not_allowed", &[]);
    r.headers
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    r
}

fn origin_error(e: &FetchError) -> EdgeResponse {
    match e {
        FetchError::Origin(OriginError::NotFound) => respond::error(404, "not_found", &[]),
        FetchError::Origin(OriginError::InvalidPath(_)) => respond::error(400, "invalid_path", &[]),
        FetchError::Origin(OriginError::Timeout(_)) => respond::error(504, "origin_timeout", &[]),
        FetchError::Origin(OriginError::TooLarge(size)) => {
            tracing::warn!(size, "object larger than origin.max_object refused");
            respond::error(502, "object_too_large", &[])
        }
        FetchError::Origin(OriginError::Unavailable(reason)) => {
            tracing::warn!(%reason, "origin failed");
            respond::error(502, "origin_unavailable", &[])
        }
        FetchError::Task(e) => {
            tracing::error!(error = %e, "origin fetch task failed");
            respond::error(502, "origin_unavailable", &[])
        }
    }
}

#[async_trait::async_trait]
impl Handler for Pipeline {
    async fn handle(&self, req: EdgeRequest) -> EdgeResponse {
        let start = Instant::now();
        let _in_flight = metrics::InFlight::enter(&self.metrics);
        let (route, mut response) = self.serve(&req).await;
        if let Some(origin) = &self.cfg.cors_allow_origin {
            respond::cors(&mut response.headers, origin);
        }
        self.metrics.record(
            &route,
            response.status,
            usize::try_from(response.body.len().unwrap_or(0)).unwrap_or(usize::MAX),
            start.elapsed(),
        );
        tracing::debug!(method = %req.method, path = %req.path, status = response.status.as_u16(), route, "served");
        response
    }
}

#[async_trait::async_trait]
impl Objects for Pipeline {
    async fn probe(&self, path: &str) -> Result<(), ObjectError> {
        match self.lookup(path).await {
            Ok(_) => Ok(()),
            Err(FetchError::Origin(OriginError::NotFound)) => Err(ObjectError::NotFound),
            Err(e) => Err(ObjectError::Unavailable(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests;
