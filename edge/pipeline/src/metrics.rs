use edge_cache::CacheMetrics;
use http::StatusCode;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};
use std::time::Duration;

/// Request metrics of the pipeline:
///
/// | metric | labels | meaning |
/// |---|---|---|
/// | `edge_requests_total` | route, status | responses by route (empty when none matched) and status class (`2xx`…) |
/// | `edge_request_duration_seconds` | route | time from request to complete response |
/// | `edge_response_body_bytes_total` | route | body bytes produced |
/// | `edge_requests_in_flight` | | requests being handled |
///
/// plus the memory tier's [`CacheMetrics`] and the lower tiers' metrics (`edge_cache_lookups_total`
/// with `tier="disk"`, `edge_cache_served_bytes_total{tier}`, `edge_upstream_fills_total`).
#[derive(Clone)]
pub struct PipelineMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    bytes: IntCounterVec,
    pub(crate) in_flight: IntGauge,
    pub(crate) cache: CacheMetrics,
    pub(crate) tiers: crate::tiers::TierMetrics,
}

impl PipelineMetrics {
    /// Registers the metrics into `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new("edge_requests_total", "Viewer requests"),
            &["route", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new("edge_request_duration_seconds", "Viewer request latency").buckets(
                vec![
                    1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5,
                    1.0, 2.5,
                ],
            ),
            &["route"],
        )?;
        let bytes = IntCounterVec::new(
            Opts::new(
                "edge_response_body_bytes_total",
                "Body bytes sent to viewers",
            ),
            &["route"],
        )?;
        let in_flight = IntGauge::new("edge_requests_in_flight", "Viewer requests being handled")?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        let cache = CacheMetrics::new(registry, "memory")?;
        Ok(Self {
            requests,
            duration,
            bytes,
            in_flight,
            tiers: crate::tiers::TierMetrics::new(registry, cache.lookups())?,
            cache,
        })
    }

    pub(crate) fn record(&self, route: &str, status: StatusCode, body: usize, elapsed: Duration) {
        let class = match status.as_u16() / 100 {
            1 => "1xx",
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            _ => "5xx",
        };
        self.requests.with_label_values(&[route, class]).inc();
        self.duration
            .with_label_values(&[route])
            .observe(elapsed.as_secs_f64());
        self.bytes.with_label_values(&[route]).inc_by(body as u64);
    }
}

/// Counts a request in `edge_requests_in_flight` until dropped, however the request ends.
pub(crate) struct InFlight<'a>(&'a IntGauge);

impl<'a> InFlight<'a> {
    pub(crate) fn enter(metrics: &'a PipelineMetrics) -> Self {
        metrics.in_flight.inc();
        Self(&metrics.in_flight)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
