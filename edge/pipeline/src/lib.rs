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

mod fill;
mod metrics;
mod respond;
mod slices;
mod tiers;

pub use metrics::PipelineMetrics;
pub use slices::Head;
pub use tiers::Source;

use arc_swap::ArcSwap;
use bytes::Bytes;
use edge_cache::{Cache, CacheConfig, FetchFailure, TaskFailed};
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

/// How a response's object was obtained: one value gives both `x-cache` and the metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// From the memory tier.
    HitMemory,
    /// From the disk tier.
    HitDisk,
    /// An expired copy from memory, because the upstream failed.
    StaleMemory,
    /// An expired copy from disk, because the upstream failed.
    StaleDisk,
    /// Filled from a seeder or the origin, by this request or (`coalesced`) another one.
    Miss {
        /// Where from.
        source: Source,
        /// Another request's fill.
        coalesced: bool,
    },
}

impl Served {
    /// How a slice with `head`, got from memory with `status`, was obtained; a hit on a slice
    /// still `filling` from below is a coalesced miss.
    fn of(head: &Head, status: edge_cache::Status, filling: bool) -> Self {
        use edge_cache::Status;
        match (status, head.source, head.stale) {
            (Status::Hit, Source::Seeder | Source::Origin, _) if filling => Self::Miss {
                source: head.source,
                coalesced: true,
            },
            (Status::Hit, ..) => Self::HitMemory,
            (Status::Stale, ..) => Self::StaleMemory,
            (_, Source::Disk, true) => Self::StaleDisk,
            (_, Source::Disk, false) => Self::HitDisk,
            (status, source, _) => Self::Miss {
                source,
                coalesced: status == Status::Coalesced,
            },
        }
    }

    /// The `x-cache` header.
    pub fn x_cache(self) -> &'static str {
        match self {
            Self::HitMemory => "HIT memory",
            Self::HitDisk => "HIT disk",
            Self::StaleMemory => "STALE memory",
            Self::StaleDisk => "STALE disk",
            Self::Miss {
                source: Source::Seeder,
                coalesced: true,
            } => "MISS seeder coalesced",
            Self::Miss {
                source: Source::Seeder,
                coalesced: false,
            } => "MISS seeder",
            Self::Miss {
                coalesced: true, ..
            } => "MISS origin coalesced",
            Self::Miss { .. } => "MISS origin",
        }
    }

    /// The `tier` label of `edge_cache_served_bytes_total`.
    pub fn tier(self) -> &'static str {
        match self {
            Self::HitMemory => "memory",
            Self::HitDisk => "disk",
            Self::StaleMemory | Self::StaleDisk => "stale",
            Self::Miss { source, .. } => source.as_str(),
        }
    }

    fn stale(self) -> bool {
        matches!(self, Self::StaleMemory | Self::StaleDisk)
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
    /// Memory tier limits (its `max_object` is set to `slice`).
    pub cache: CacheConfig,
    /// Objects are cached and read in slices of this many bytes.
    pub slice: u64,
    /// Freshness of cached manifests.
    pub manifest_ttl: Duration,
    /// Freshness of cached segments.
    pub segment_ttl: Duration,
    /// How long past freshness a copy may answer when the upstream fails (memory and disk).
    pub stale_if_error: Duration,
    /// `Access-Control-Allow-Origin` for every response; `None` disables CORS.
    pub cors_allow_origin: Option<HeaderValue>,
    /// Slices filling from the upstream at once, at most.
    pub max_fills: usize,
    /// Longest one slice may take to fill.
    pub fill_timeout: Duration,
}

/// The viewer-facing pipeline. Routes can be swapped at run time ([`Pipeline::set_router`]):
/// requests in flight finish on the router they started with.
pub struct Pipeline {
    router: ArcSwap<Router>,
    slices: slices::Slices,
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
        // The memory tier weighs entries in u16 KiB units: a slice must stay below 64 MiB.
        cfg.slice = cfg.slice.clamp(1, 32 << 20);
        cfg.cache.max_object = usize::try_from(cfg.slice).unwrap_or(usize::MAX);
        let memory = Cache::new(cfg.cache.clone(), Some(metrics.cache.clone()));
        let tiers = tiers::Tiers {
            upstream,
            disk,
            freshness: tiers::Freshness {
                manifest_ttl: cfg.manifest_ttl,
                segment_ttl: cfg.segment_ttl,
                stale_if_error: cfg.stale_if_error,
            },
            metrics: metrics.tiers.clone(),
            events: std::sync::OnceLock::new(),
            slice: cfg.slice,
            fills: Arc::new(tokio::sync::Semaphore::new(cfg.max_fills.max(1))),
            fill_timeout: cfg.fill_timeout,
        };
        let tiers = Arc::new(tiers);
        if tiers.disk.is_some() {
            let below = Arc::downgrade(&tiers);
            memory.on_evict(move |key, slice, expires| {
                if let Some(tiers) = below.upgrade() {
                    tiers.victim(key, slice, expires);
                }
            });
        }
        Self {
            router: ArcSwap::from_pointee(router),
            slices: slices::Slices { memory, tiers },
            cfg,
            metrics,
            mounts: std::sync::OnceLock::new(),
            events: None,
        }
    }

    /// Records a `policy.denied` event per denial and a `cache.fill` event per fill into
    /// `events`.
    pub fn with_events(mut self, events: Arc<dyn EventSink>) -> Self {
        let _ = self.slices.tiers.events.set(events.clone());
        self.events = Some(events);
        self
    }

    /// Mounts the endpoints the edge answers itself; the first match wins. Set once, before
    /// serving (later calls are ignored and return false).
    pub fn mount(&self, mounts: Vec<Mount>) -> bool {
        self.mounts.set(mounts).is_ok()
    }

    /// The object at the normalised `path` through the cache tiers, as a viewer's request would
    /// get it (coalesced, cached; its first slice), without policies. For services (does a
    /// movie's manifest exist?).
    pub async fn lookup(&self, path: &str) -> Result<Head, FetchError> {
        let kind = classify(path).map_or(MediaKind::Segment, |(_, k)| k);
        let (slice, _) = self.slices.get(path, 0, kind).await?;
        Ok(slice.head.as_ref().clone())
    }

    /// Removes `path` (every slice of it) from every cache tier (fills in flight are not kept).
    pub async fn purge(&self, path: &str) -> Purged {
        self.slices.purge(path).await
    }

    /// Writes what only the memory tier holds to the disk tier (complete slices, fresh or within
    /// stale-if-error) and returns how many slices were written; for a drain, so a restart
    /// keeps them. Memory keeps its copies.
    pub async fn spill(&self) -> usize {
        self.slices.tiers.spill(&self.slices.memory).await
    }

    /// Removes every path starting with `prefix` from every cache tier (as [`Pipeline::purge`]).
    pub async fn purge_prefix(&self, prefix: &str) -> Purged {
        let mut memory = self.slices.memory.purge_prefix(prefix);
        let disk = match &self.slices.tiers.disk {
            Some(d) => d.purge_prefix(prefix).await,
            None => 0,
        };
        memory += self.slices.memory.purge_prefix(prefix);
        Purged { memory, disk }
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
        &self.slices.tiers.upstream
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
        let wanted = Wanted {
            path: &path,
            kind,
            content_type,
            protected,
            propagate: &propagate,
        };
        let mut response = self.deliver(req, &wanted).await;
        respond::add_headers(&mut response.headers, &response_headers);
        (route_name, response)
    }
}

/// Largest manifest rewritten for token propagation (a 10-hour VOD playlist of 2 s segments is
/// about 1 MiB).
const MAX_MANIFEST: u64 = 16 << 20;

/// What a viewer asked for, once admitted and authorised.
struct Wanted<'a> {
    path: &'a str,
    kind: MediaKind,
    content_type: &'static str,
    /// A policy guarded it (`Cache-Control: private`).
    protected: bool,
    /// Query parameters to propagate into a manifest's URIs.
    propagate: &'a [(String, String)],
}

impl Pipeline {
    /// Fetch and represent: the first slice the request needs (its head says what the object
    /// is), the HTTP semantics on that head, then the body, whole or streamed slice by slice.
    async fn deliver(&self, req: &EdgeRequest, w: &Wanted<'_>) -> EdgeResponse {
        let mut index = respond::first_byte(&req.headers) / self.slices.size();
        // A cached first slice knows the size: a range past the end is answered from it.
        if index > 0
            && let Some(first) = self.slices.memory.get(w.path)
            && index * self.slices.size() >= first.head.size
        {
            index = 0;
        }
        let fetched = match self.slices.get(w.path, index, w.kind).await {
            // Past the end of the object, or an outage: the first slice says which.
            Err(FetchError::Origin(e)) if index > 0 && e != OriginError::NotFound => {
                self.slices.get(w.path, 0, w.kind).await
            }
            other => other,
        };
        let (first, status) = match fetched {
            Ok(v) => v,
            Err(e) => return origin_error(&e),
        };
        let served = Served::of(&first.head, status, first.data.filling());
        let mut headers = self.object_headers(&first.head, served, w);

        if w.kind == MediaKind::Manifest && !w.propagate.is_empty() {
            return self.rewritten(req, w, &first, served, headers).await;
        }
        let head = &first.head;
        let plan = respond::plan(
            &req.headers,
            head.etag.as_deref(),
            head.last_modified,
            head.size,
            &mut headers,
        );
        let (range, status) = match self.sending(plan, served) {
            Ok(v) => v,
            Err(answer) => return *answer,
        };
        let body = match first.data.whole() {
            Some(b) if first.start <= range.start && range.end <= first.end() => Body::Full(
                b.slice((range.start - first.start) as usize..(range.end - first.start) as usize),
            ),
            _ => Body::Stream {
                len: Some(range.end - range.start),
                chunks: self.slices.stream(w.path, w.kind, first, range),
            },
        };
        EdgeResponse {
            status,
            headers,
            body,
        }
    }

    /// What a plan sends, counted as served by `served`'s tier; or its complete answer.
    fn sending(
        &self,
        plan: respond::Plan,
        served: Served,
    ) -> Result<(std::ops::Range<u64>, StatusCode), Box<EdgeResponse>> {
        match plan {
            respond::Plan::Answer(r) => Err(Box::new(r)),
            respond::Plan::Send { range, partial } => {
                self.metrics
                    .tiers
                    .served(served.tier(), (range.end - range.start) as usize);
                Ok((range, respond::Plan::status(partial)))
            }
        }
    }

    /// The headers every answer about an object carries: type, `x-cache`, `Age`, `Warning`,
    /// `Cache-Control`.
    fn object_headers(&self, head: &Head, served: Served, w: &Wanted<'_>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(w.content_type),
        );
        headers.insert("x-cache", HeaderValue::from_static(served.x_cache()));
        let stale = head.stale || served.stale();
        let age = SystemTime::now()
            .duration_since(head.fetched_at)
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
            head.max_age.as_secs().saturating_sub(age)
        };
        let cache_control = format!(
            "{}max-age={}",
            if w.protected { "private, " } else { "public, " },
            ttl
        );
        if let Ok(v) = HeaderValue::from_str(&cache_control) {
            headers.insert(header::CACHE_CONTROL, v);
        }
        headers
    }

    /// A manifest with the policy's query parameters propagated into its URIs: read whole,
    /// rewritten for this response (weak entity tag), then the same HTTP semantics.
    async fn rewritten(
        &self,
        req: &EdgeRequest,
        w: &Wanted<'_>,
        first: &slices::Slice,
        served: Served,
        mut headers: HeaderMap,
    ) -> EdgeResponse {
        let body = match self.slices.whole(w.path, w.kind, first, MAX_MANIFEST).await {
            Ok(b) => b,
            Err(OriginError::TooLarge(size)) => {
                tracing::warn!(path = w.path, size, "manifest too large to rewrite");
                return respond::error(502, "manifest_too_large", &[]);
            }
            Err(e) => return origin_error(&FetchError::Origin(e)),
        };
        let single = first.start == 0 && first.len == first.head.size;
        let prepare = || {
            edge_manifest::Kind::of(w.path).and_then(|kind| {
                match edge_manifest::Prepared::new(kind, &body) {
                    Ok(p) => Some(Arc::new(p)),
                    Err(e) => {
                        tracing::warn!(path = w.path, error = %e, "origin manifest does not parse; served without token propagation");
                        None
                    }
                }
            })
        };
        let prepared = if single {
            first.manifest.get_or_init(prepare).clone()
        } else {
            prepare()
        };
        let rendered = match prepared.map(|m| m.render(&body, w.propagate)) {
            Some(Ok(b)) => Bytes::from(b),
            Some(Err(e)) => {
                tracing::warn!(path = w.path, error = %e, "cannot propagate the token into a manifest");
                return respond::error(502, "invalid_manifest", &[]);
            }
            None => return respond::error(502, "invalid_manifest", &[]),
        };
        let etag = first.head.etag.as_ref().map(|e| format!("W/{e}"));
        let plan = respond::plan(
            &req.headers,
            etag.as_deref(),
            first.head.last_modified,
            rendered.len() as u64,
            &mut headers,
        );
        let (range, status) = match self.sending(plan, served) {
            Ok(v) => v,
            Err(answer) => return *answer,
        };
        EdgeResponse {
            status,
            headers,
            body: Body::Full(rendered.slice(range.start as usize..range.end as usize)),
        }
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
            tracing::warn!(size, "object larger than the upstream's limit");
            respond::error(502, "object_too_large", &[])
        }
        FetchError::Origin(OriginError::Changed) => respond::error(502, "object_changed", &[]),
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
