use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

/// How one attempt at a seeder ended, as counted in `edge_upstream_fetches_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FetchResult {
    /// A verified body.
    Ok,
    /// Transport error, timeout, bad status, short body or checksum mismatch.
    Error,
    /// The seeder does not have it.
    NotFound,
}

impl FetchResult {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::NotFound => "not_found",
        }
    }
}

/// Seeder routing metrics:
///
/// | metric | labels | meaning |
/// |---|---|---|
/// | `edge_upstream_fetches_total` | seeder, result | attempts at a seeder: `ok`, `error`, `not_found` |
/// | `edge_upstream_hedges_total` | | attempts started because the previous one was slow |
/// | `edge_upstream_fallbacks_total` | | segment requests that ended at the origin |
/// | `edge_upstream_seeder_healthy` | seeder | 1 while the seeder is used, 0 while it awaits a probe |
/// | `edge_upstream_seeder_success_rate` | seeder | this edge's `ok / (ok + error)` for the seeder |
/// | `edge_upstream_directory_errors_total` | | directory (Redis) reads that failed |
#[derive(Clone)]
pub(crate) struct Metrics {
    fetches: IntCounterVec,
    pub(crate) hedges: IntCounter,
    pub(crate) fallbacks: IntCounter,
    healthy: IntGaugeVec,
    success_rate: GaugeVec,
    pub(crate) directory_errors: IntCounter,
}

impl Metrics {
    pub(crate) fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let fetches = IntCounterVec::new(
            Opts::new(
                "edge_upstream_fetches_total",
                "Attempts at a seeder by result",
            ),
            &["seeder", "result"],
        )?;
        let hedges = IntCounter::new(
            "edge_upstream_hedges_total",
            "Seeder or origin attempts started because the previous attempt was slow",
        )?;
        let fallbacks = IntCounter::new(
            "edge_upstream_fallbacks_total",
            "Segment requests that ended at the origin",
        )?;
        let healthy = IntGaugeVec::new(
            Opts::new(
                "edge_upstream_seeder_healthy",
                "Whether a seeder is used (1) or awaits a successful probe (0)",
            ),
            &["seeder"],
        )?;
        let success_rate = GaugeVec::new(
            Opts::new(
                "edge_upstream_seeder_success_rate",
                "Share of this edge's attempts at a seeder that succeeded",
            ),
            &["seeder"],
        )?;
        let directory_errors = IntCounter::new(
            "edge_upstream_directory_errors_total",
            "Seeder directory reads that failed (Redis down or slow)",
        )?;
        registry.register(Box::new(fetches.clone()))?;
        registry.register(Box::new(hedges.clone()))?;
        registry.register(Box::new(fallbacks.clone()))?;
        registry.register(Box::new(healthy.clone()))?;
        registry.register(Box::new(success_rate.clone()))?;
        registry.register(Box::new(directory_errors.clone()))?;
        Ok(Self {
            fetches,
            hedges,
            fallbacks,
            healthy,
            success_rate,
            directory_errors,
        })
    }

    pub(crate) fn fetch(&self, seeder: &str, result: FetchResult) {
        self.fetches
            .with_label_values(&[seeder, result.as_str()])
            .inc();
    }

    #[cfg(test)]
    pub(crate) fn fetches(&self, seeder: &str, result: FetchResult) -> u64 {
        self.fetches
            .with_label_values(&[seeder, result.as_str()])
            .get()
    }

    pub(crate) fn healthy(&self, seeder: &str, healthy: bool) {
        self.healthy
            .with_label_values(&[seeder])
            .set(i64::from(healthy));
    }

    pub(crate) fn success_rate(&self, seeder: &str, rate: f64) {
        self.success_rate.with_label_values(&[seeder]).set(rate);
    }

    /// Drops the series of a seeder that left.
    pub(crate) fn forget(&self, seeder: &str) {
        for result in [FetchResult::Ok, FetchResult::Error, FetchResult::NotFound] {
            let _ = self.fetches.remove_label_values(&[seeder, result.as_str()]);
        }
        let _ = self.healthy.remove_label_values(&[seeder]);
        let _ = self.success_rate.remove_label_values(&[seeder]);
    }
}
