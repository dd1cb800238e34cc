use prometheus::{IntCounter, IntGauge, Registry};

/// Disk cache metrics:
///
/// | metric | type | meaning |
/// |---|---|---|
/// | `edge_disk_cache_bytes` | gauge | bytes of entry files (headers and bodies) indexed |
/// | `edge_disk_cache_entries` | gauge | entries indexed |
/// | `edge_disk_cache_evictions_total` | counter | entries evicted for space |
/// | `edge_disk_cache_corrupt_total` | counter | entry files found damaged (checksum, length, header) and deleted |
/// | `edge_disk_cache_write_errors_total` | counter | writes failed on an I/O error (disk full, EIO, permissions) |
/// | `edge_disk_cache_writes_suspended` | gauge | 1 while writes are paused after an error |
///
/// The two gauges `bytes` and `entries` always equal the index totals ([`crate::DiskCache::bytes`],
/// [`crate::DiskCache::len`]). The handles are public so tests and dashboards can read them.
#[derive(Debug, Clone)]
pub struct DiskMetrics {
    /// `edge_disk_cache_bytes`.
    pub bytes: IntGauge,
    /// `edge_disk_cache_entries`.
    pub entries: IntGauge,
    /// `edge_disk_cache_evictions_total`.
    pub evictions: IntCounter,
    /// `edge_disk_cache_corrupt_total`.
    pub corrupt: IntCounter,
    /// `edge_disk_cache_write_errors_total`.
    pub write_errors: IntCounter,
    /// `edge_disk_cache_writes_suspended`.
    pub writes_suspended: IntGauge,
}

impl DiskMetrics {
    /// Creates the metrics and registers them into `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self::build()?;
        registry.register(Box::new(m.bytes.clone()))?;
        registry.register(Box::new(m.entries.clone()))?;
        registry.register(Box::new(m.evictions.clone()))?;
        registry.register(Box::new(m.corrupt.clone()))?;
        registry.register(Box::new(m.write_errors.clone()))?;
        registry.register(Box::new(m.writes_suspended.clone()))?;
        Ok(m)
    }

    fn build() -> Result<Self, prometheus::Error> {
        Ok(Self {
            bytes: IntGauge::new(
                "edge_disk_cache_bytes",
                "Bytes of entry files (headers and bodies) in the disk cache",
            )?,
            entries: IntGauge::new("edge_disk_cache_entries", "Entries in the disk cache")?,
            evictions: IntCounter::new(
                "edge_disk_cache_evictions_total",
                "Disk cache entries evicted for space",
            )?,
            corrupt: IntCounter::new(
                "edge_disk_cache_corrupt_total",
                "Disk cache entry files found damaged and deleted",
            )?,
            write_errors: IntCounter::new(
                "edge_disk_cache_write_errors_total",
                "Disk cache writes failed on an I/O error",
            )?,
            writes_suspended: IntGauge::new(
                "edge_disk_cache_writes_suspended",
                "1 while disk cache writes are paused after an error",
            )?,
        })
    }
}

impl Default for DiskMetrics {
    /// Handles registered nowhere (tests, or a caller without a registry).
    fn default() -> Self {
        Self::build().expect("the metric names and help texts are valid")
    }
}
