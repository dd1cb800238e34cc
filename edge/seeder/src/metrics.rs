//! The seeder's Prometheus metrics (listed in the crate documentation).

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// How an object request ended, the `result` label of `edge_seeder_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Served from the cache directory.
    Hit,
    /// Pulled from the origin (or waited for a pull).
    Pull,
    /// Neither on disk nor at the origin.
    NotFound,
    /// Anything else: bad method or path, read or origin failure.
    Error,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Pull => "pull",
            Self::NotFound => "not_found",
            Self::Error => "error",
        }
    }
}

#[derive(Clone)]
pub(crate) struct Metrics {
    requests: IntCounterVec,
    pub(crate) bytes_served: IntCounter,
    pub(crate) segments: IntGauge,
    pub(crate) stored_bytes: IntGauge,
    pub(crate) deleted: IntCounter,
    pub(crate) directory_errors: IntCounter,
    pub(crate) ready: IntGauge,
}

impl Metrics {
    pub(crate) fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "edge_seeder_requests_total",
                "Object requests to the seeder by result",
            ),
            &["result"],
        )?;
        let bytes_served = IntCounter::new(
            "edge_seeder_bytes_served_total",
            "Body bytes served to edges",
        )?;
        let segments = IntGauge::new("edge_seeder_segments", "Segments the seeder publishes")?;
        let stored_bytes = IntGauge::new(
            "edge_seeder_stored_bytes",
            "Bytes of the files in the seeder cache",
        )?;
        let deleted = IntCounter::new("edge_seeder_deleted_total", "Files deleted by retention")?;
        let directory_errors = IntCounter::new(
            "edge_seeder_directory_errors_total",
            "Directory (Redis) calls that failed",
        )?;
        let ready = IntGauge::new("edge_seeder_ready", "1 once the first scan finished")?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(bytes_served.clone()))?;
        registry.register(Box::new(segments.clone()))?;
        registry.register(Box::new(stored_bytes.clone()))?;
        registry.register(Box::new(deleted.clone()))?;
        registry.register(Box::new(directory_errors.clone()))?;
        registry.register(Box::new(ready.clone()))?;
        for o in [
            Outcome::Hit,
            Outcome::Pull,
            Outcome::NotFound,
            Outcome::Error,
        ] {
            requests.with_label_values(&[o.label()]);
        }
        Ok(Self {
            requests,
            bytes_served,
            segments,
            stored_bytes,
            deleted,
            directory_errors,
            ready,
        })
    }

    pub(crate) fn request(&self, outcome: Outcome) {
        self.requests.with_label_values(&[outcome.label()]).inc();
    }
}
