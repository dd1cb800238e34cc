use crate::Status;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Cache metrics:
///
/// | metric | labels | meaning |
/// |---|---|---|
/// | `edge_cache_lookups_total` | tier, result | `hit`, `miss` (this request fetched), `coalesced` (waited on another's fetch), `stale` (an expired copy answered a failed fetch) |
/// | `edge_cache_stored_bytes` | tier | bytes currently held |
/// | `edge_cache_evictions_total` | tier | entries evicted for space |
#[derive(Clone)]
pub struct CacheMetrics {
    lookups: IntCounterVec,
    hit: IntCounter,
    miss: IntCounter,
    coalesced: IntCounter,
    stale: IntCounter,
    bytes: IntGauge,
    evictions: IntCounter,
}

impl CacheMetrics {
    /// Registers the metrics of cache tier `tier` (e.g. `memory`) into `registry`.
    pub fn new(registry: &Registry, tier: &str) -> Result<Self, prometheus::Error> {
        let lookups = IntCounterVec::new(
            Opts::new("edge_cache_lookups_total", "Cache lookups by result"),
            &["tier", "result"],
        )?;
        let bytes = IntGauge::with_opts(
            Opts::new("edge_cache_stored_bytes", "Bytes held by the cache")
                .const_label("tier", tier),
        )?;
        let evictions = IntCounter::with_opts(
            Opts::new("edge_cache_evictions_total", "Entries evicted for space")
                .const_label("tier", tier),
        )?;
        registry.register(Box::new(lookups.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(evictions.clone()))?;
        Ok(Self {
            lookups: lookups.clone(),
            hit: lookups.with_label_values(&[tier, "hit"]),
            miss: lookups.with_label_values(&[tier, "miss"]),
            coalesced: lookups.with_label_values(&[tier, "coalesced"]),
            stale: lookups.with_label_values(&[tier, "stale"]),
            bytes,
            evictions,
        })
    }

    /// `edge_cache_lookups_total`, for the lookups of tiers outside this crate (`disk`).
    pub fn lookups(&self) -> &IntCounterVec {
        &self.lookups
    }

    pub(crate) fn lookup(&self, status: Status) {
        match status {
            Status::Hit => self.hit.inc(),
            Status::Miss => self.miss.inc(),
            Status::Coalesced => self.coalesced.inc(),
            Status::Stale => self.stale.inc(),
        }
    }

    pub(crate) fn stored(&self, delta: i64) {
        self.bytes.add(delta);
    }

    pub(crate) fn evicted(&self, n: u64) {
        self.evictions.inc_by(n);
    }
}
