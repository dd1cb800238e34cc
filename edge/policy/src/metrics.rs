use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Per-policy metrics, registered into the edge's registry:
///
/// | metric | labels | meaning |
/// |---|---|---|
/// | `edge_policy_calls_total` | policy | `decide` calls |
/// | `edge_policy_decisions_total` | policy, outcome | `allow`, `deny`, `redirect`, `fail_open`, `fail_closed` |
/// | `edge_policy_failures_total` | policy, kind | `trap`, `timeout`, `memory`, `capacity`, `invalid` |
/// | `edge_policy_duration_seconds` | policy | latency of one call, instantiation included |
/// | `edge_policy_instances_total` | policy | instances created (a reused instance is not counted) |
/// | `edge_policy_guest_dropped_total` | policy | guest log lines or counters dropped by the host's caps |
/// | `edge_policy_custom_total` | policy, name | counters the guest adds through the `metrics` import |
#[derive(Clone)]
pub struct PolicyMetrics {
    calls: IntCounterVec,
    decisions: IntCounterVec,
    failures: IntCounterVec,
    duration: HistogramVec,
    instances: IntCounterVec,
    dropped: IntCounterVec,
    custom: IntCounterVec,
}

impl PolicyMetrics {
    /// Creates the metrics and registers them into `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let duration = HistogramVec::new(
            HistogramOpts::new("edge_policy_duration_seconds", "Latency of one policy call")
                .buckets(vec![
                    5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 5e-2,
                ]),
            &["policy"],
        )?;
        registry.register(Box::new(duration.clone()))?;
        Ok(Self {
            calls: counter(
                "edge_policy_calls_total",
                "Policy decide calls",
                &["policy"],
            )?,
            decisions: counter(
                "edge_policy_decisions_total",
                "Policy decisions by outcome",
                &["policy", "outcome"],
            )?,
            failures: counter(
                "edge_policy_failures_total",
                "Policy failures by kind",
                &["policy", "kind"],
            )?,
            duration,
            instances: counter(
                "edge_policy_instances_total",
                "Policy instances created",
                &["policy"],
            )?,
            dropped: counter(
                "edge_policy_guest_dropped_total",
                "Guest log lines or counters dropped",
                &["policy"],
            )?,
            custom: counter(
                "edge_policy_custom_total",
                "Counters added by policy guests",
                &["policy", "name"],
            )?,
        })
    }

    pub(crate) fn call(&self, policy: &str, seconds: f64) {
        self.calls.with_label_values(&[policy]).inc();
        self.duration.with_label_values(&[policy]).observe(seconds);
    }

    pub(crate) fn decision(&self, policy: &str, outcome: &str) {
        self.decisions.with_label_values(&[policy, outcome]).inc();
    }

    pub(crate) fn failure(&self, policy: &str, kind: &str) {
        self.failures.with_label_values(&[policy, kind]).inc();
    }

    pub(crate) fn instance_created(&self, policy: &str) {
        self.instances.with_label_values(&[policy]).inc();
    }

    pub(crate) fn logs_dropped(&self, policy: &str) {
        self.dropped.with_label_values(&[policy]).inc();
    }

    pub(crate) fn custom(&self, policy: &str, name: &str, value: u64) {
        self.custom.with_label_values(&[policy, name]).inc_by(value);
    }
}
