//! Filling the memory tier from the tiers below it: disk, then the upstream (seeders, origin).
//!
//! Runs inside the memory tier's coalesced fetch, so 200 concurrent misses of one segment read
//! the disk once and ask the upstream at most once.

use crate::{EventSink, FetchError, MediaKind, Object};
use bytes::Bytes;
use edge_disk_cache::{DiskCache, Meta};
use edge_events::{CacheFill, NewRecord};
use edge_origin::{Origin, OriginError, Tier};
use headers::{CacheControl, HeaderMapExt};
use http::{HeaderMap, HeaderValue};
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

/// Where the object a viewer got came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The disk tier.
    Disk,
    /// A seeder node.
    Seeder,
    /// The origin store.
    Origin,
}

impl Source {
    /// `disk`, `seeder` or `origin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disk => "disk",
            Self::Seeder => "seeder",
            Self::Origin => "origin",
        }
    }
}

/// Metrics of the tiers below memory:
///
/// | metric | labels | meaning |
/// |---|---|---|
/// | `edge_cache_lookups_total` | tier=`disk`, result | `hit`, `miss`, `stale` (expired copy served because the upstream failed) |
/// | `edge_cache_served_bytes_total` | tier | body bytes served to viewers by tier (`memory`, `disk`, `seeder`, `origin`, `stale`) |
/// | `edge_upstream_fills_total` | source, result | fills from below the disk: `seeder`/`origin` × `ok`, or `error`/`not_found` |
#[derive(Clone)]
pub(crate) struct TierMetrics {
    disk_hit: IntCounter,
    disk_miss: IntCounter,
    disk_stale: IntCounter,
    served: IntCounterVec,
    fills: IntCounterVec,
}

impl TierMetrics {
    pub(crate) fn new(
        registry: &Registry,
        lookups: &IntCounterVec,
    ) -> Result<Self, prometheus::Error> {
        let served = IntCounterVec::new(
            Opts::new(
                "edge_cache_served_bytes_total",
                "Body bytes served to viewers by tier",
            ),
            &["tier"],
        )?;
        let fills = IntCounterVec::new(
            Opts::new(
                "edge_upstream_fills_total",
                "Fills from seeders and the origin",
            ),
            &["source", "result"],
        )?;
        registry.register(Box::new(served.clone()))?;
        registry.register(Box::new(fills.clone()))?;
        Ok(Self {
            disk_hit: lookups.with_label_values(&["disk", "hit"]),
            disk_miss: lookups.with_label_values(&["disk", "miss"]),
            disk_stale: lookups.with_label_values(&["disk", "stale"]),
            served,
            fills,
        })
    }

    pub(crate) fn served(&self, tier: &str, bytes: usize) {
        self.served.with_label_values(&[tier]).inc_by(bytes as u64);
    }
}

/// Freshness rules of a fill.
#[derive(Debug, Clone)]
pub(crate) struct Freshness {
    pub(crate) manifest_ttl: Duration,
    pub(crate) segment_ttl: Duration,
    pub(crate) stale_if_error: Duration,
}

impl Freshness {
    /// How long an object stays fresh: the origin's `Cache-Control` when it says, else the
    /// configured TTL of its kind. Zero = not cached.
    pub(crate) fn ttl(&self, kind: MediaKind, cache_control: Option<&str>) -> Duration {
        let default = match kind {
            MediaKind::Manifest => self.manifest_ttl,
            MediaKind::Segment => self.segment_ttl,
        };
        let Some(cc) = cache_control
            .and_then(|v| HeaderValue::from_str(v).ok())
            .and_then(|v| {
                let mut h = HeaderMap::new();
                h.insert(http::header::CACHE_CONTROL, v);
                h.typed_get::<CacheControl>()
            })
        else {
            return default;
        };
        if cc.no_store() || cc.no_cache() || cc.private() {
            return Duration::ZERO;
        }
        cc.s_max_age().or(cc.max_age()).unwrap_or(default)
    }
}

/// The tiers below memory.
pub(crate) struct Tiers {
    pub(crate) upstream: Arc<dyn Origin>,
    pub(crate) disk: Option<DiskCache>,
    pub(crate) freshness: Freshness,
    pub(crate) metrics: TierMetrics,
    pub(crate) events: Option<Arc<dyn EventSink>>,
}

impl Tiers {
    /// The object at `key` from disk (fresh) or the upstream; an expired disk copy when the
    /// upstream is down. Returns the object and how long the memory tier may keep it. Every
    /// fill is recorded as a `cache.fill` event when events are on.
    pub(crate) async fn fill(
        &self,
        key: &str,
        kind: MediaKind,
    ) -> Result<(Object, Duration), FetchError> {
        let start = Instant::now();
        let filled = self.fill_from_below(key, kind).await;
        if let Some(events) = &self.events {
            let (source, result, bytes) = match &filled {
                Ok((o, _)) => (
                    o.source.as_str(),
                    if o.stale { "stale" } else { "ok" },
                    o.body.len() as u64,
                ),
                Err(FetchError::Origin(OriginError::NotFound)) => ("upstream", "not_found", 0),
                Err(_) => ("upstream", "error", 0),
            };
            let fill = CacheFill {
                path: key.to_owned(),
                source: source.to_owned(),
                result: result.to_owned(),
                bytes,
                millis: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
                timestamp: edge_events::timestamp(SystemTime::now()),
            };
            events.emit(NewRecord::new(&fill, key));
        }
        filled
    }

    async fn fill_from_below(
        &self,
        key: &str,
        kind: MediaKind,
    ) -> Result<(Object, Duration), FetchError> {
        let now = SystemTime::now();
        // Before the lookup: a purge from here on drops the disk write of what the upstream
        // returns, which may have been read before the purge.
        let mark = self.disk.as_ref().map(DiskCache::purge_mark);
        let mut expired = None;
        if let Some(disk) = &self.disk {
            match disk.get(key).await {
                Some(e) if e.meta.expires_at > now => {
                    self.metrics.disk_hit.inc();
                    let ttl = e.meta.expires_at.duration_since(now).unwrap_or_default();
                    return Ok((from_disk(key, e.body, &e.meta, Source::Disk, false), ttl));
                }
                Some(e) => expired = Some(e),
                None => {}
            }
            self.metrics.disk_miss.inc();
        }
        match self.upstream.get(key).await {
            Ok(o) => {
                let source = match o.tier {
                    Tier::Seeder => Source::Seeder,
                    Tier::Origin => Source::Origin,
                };
                self.metrics
                    .fills
                    .with_label_values(&[source.as_str(), "ok"])
                    .inc();
                let ttl = self.freshness.ttl(kind, o.cache_control.as_deref());
                let mut obj = Object::new(key, o.body, o.etag, o.last_modified, source, now, false);
                obj.max_age = ttl;
                if let Some((disk, mark)) = self.disk.clone().zip(mark).filter(|_| !ttl.is_zero()) {
                    let meta = Meta {
                        etag: obj.etag.clone(),
                        last_modified: obj.last_modified,
                        cache_control: o.cache_control,
                        stored_at: now,
                        expires_at: now + ttl,
                        source: source.as_str().to_owned(),
                    };
                    let (key, body) = (key.to_owned(), obj.body.clone());
                    tokio::spawn(async move {
                        if let Err(e) = disk.put_since(&key, body, meta, mark).await {
                            tracing::debug!(key, error = %e, "not kept on disk");
                        }
                    });
                }
                Ok((obj, ttl))
            }
            Err(e) => {
                let result = if e == OriginError::NotFound {
                    "not_found"
                } else {
                    "error"
                };
                self.metrics
                    .fills
                    .with_label_values(&["upstream", result])
                    .inc();
                match expired {
                    Some(entry)
                        if e.is_outage()
                            && entry.meta.expires_at + self.freshness.stale_if_error > now =>
                    {
                        self.metrics.disk_stale.inc();
                        tracing::warn!(key, error = %e, "upstream failed; serving the expired disk copy");
                        Ok((
                            from_disk(key, entry.body, &entry.meta, Source::Disk, true),
                            Duration::ZERO,
                        ))
                    }
                    Some(_) if e == OriginError::NotFound => {
                        if let Some(disk) = &self.disk {
                            disk.remove(key).await;
                        }
                        Err(e.into())
                    }
                    _ => Err(e.into()),
                }
            }
        }
    }
}

fn from_disk(key: &str, body: Bytes, meta: &Meta, source: Source, stale: bool) -> Object {
    let etag = meta.etag.clone();
    let mut obj = Object::new(
        key,
        body,
        etag,
        meta.last_modified,
        source,
        meta.stored_at,
        stale,
    );
    if !stale {
        obj.max_age = meta
            .expires_at
            .duration_since(meta.stored_at)
            .unwrap_or_default();
    }
    obj
}
