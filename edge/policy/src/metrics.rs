use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
};

/// One policy's hot-path metrics, resolved once at load: a label lookup per call would hash the
/// label values every time.
#[derive(Clone)]
pub(crate) struct Handles {
    pub(crate) calls: IntCounter,
    pub(crate) duration: Histogram,
    pub(crate) allow: IntCounter,
    pub(crate) deny: IntCounter,
    pub(crate) redirect: IntCounter,
    pub(crate) fail_open: IntCounter,
    pub(crate) fail_closed: IntCounter,
}

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
/// | `edge_policy_kv_errors_total` | policy, op, kind | key-value calls that failed (`unavailable`, `invalid`) |
/// | `edge_policy_outbound_total` | policy, result | outbound HTTP calls: `ok`, `denied`, `timeout`, `too_large`, `failed` |
/// | `edge_policy_canary_state` | policy | 0 no canary, 1 enforcing, 2 shadowing, 3 rolled back |
/// | `edge_policy_canary_calls_total` | policy, side, class | `baseline`/`candidate` calls: `ok`, `deny`, `error`, `trap` |
/// | `edge_policy_canary_rollbacks_total` | policy, reason | automatic rollbacks: `trap_rate`, `error_rate`, `deny_rate`, `p99` |
/// | `edge_policy_shadow_total` | policy, result | shadowed calls: `same`, `different`, or `skipped` (too many in flight) |
/// | `edge_policy_shadow_diff_total` | policy, baseline, candidate | differing verdicts (`allow`, `deny:<reason>`, `fail:<kind>`) |
#[derive(Clone)]
pub struct PolicyMetrics {
    calls: IntCounterVec,
    decisions: IntCounterVec,
    failures: IntCounterVec,
    duration: HistogramVec,
    instances: IntCounterVec,
    dropped: IntCounterVec,
    custom: IntCounterVec,
    kv_errors: IntCounterVec,
    outbound: IntCounterVec,
    canary_state: prometheus::IntGaugeVec,
    canary_calls: IntCounterVec,
    canary_rollbacks: IntCounterVec,
    shadow: IntCounterVec,
    shadow_diff: IntCounterVec,
    shadow_pairs:
        std::sync::Arc<parking_lot::Mutex<std::collections::HashSet<(String, String, String)>>>,
}

/// Most distinct (baseline, candidate) verdict pairs counted per policy; others count as `other`.
const MAX_SHADOW_PAIRS: usize = 64;

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
        let canary_state = prometheus::IntGaugeVec::new(
            Opts::new(
                "edge_policy_canary_state",
                "0 no canary, 1 enforcing, 2 shadowing, 3 rolled back",
            ),
            &["policy"],
        )?;
        registry.register(Box::new(canary_state.clone()))?;
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
            kv_errors: counter(
                "edge_policy_kv_errors_total",
                "Policy key-value calls that failed",
                &["policy", "op", "kind"],
            )?,
            outbound: counter(
                "edge_policy_outbound_total",
                "Policy outbound HTTP calls by result",
                &["policy", "result"],
            )?,
            canary_state,
            canary_calls: counter(
                "edge_policy_canary_calls_total",
                "Calls of canaried policies by side and class",
                &["policy", "side", "class"],
            )?,
            canary_rollbacks: counter(
                "edge_policy_canary_rollbacks_total",
                "Automatic canary rollbacks by reason",
                &["policy", "reason"],
            )?,
            shadow: counter(
                "edge_policy_shadow_total",
                "Shadowed calls: same or different verdict",
                &["policy", "result"],
            )?,
            shadow_diff: counter(
                "edge_policy_shadow_diff_total",
                "Shadowed calls whose verdict differs, by verdict pair",
                &["policy", "baseline", "candidate"],
            )?,
            shadow_pairs: Default::default(),
        })
    }

    pub(crate) fn handles(&self, policy: &str) -> Handles {
        let decision = |o: &str| self.decisions.with_label_values(&[policy, o]);
        Handles {
            calls: self.calls.with_label_values(&[policy]),
            duration: self.duration.with_label_values(&[policy]),
            allow: decision("allow"),
            deny: decision("deny"),
            redirect: decision("redirect"),
            fail_open: decision("fail_open"),
            fail_closed: decision("fail_closed"),
        }
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

    pub(crate) fn kv_error(&self, policy: &str, op: &str, kind: &str) {
        self.kv_errors.with_label_values(&[policy, op, kind]).inc();
    }

    pub(crate) fn outbound(&self, policy: &str, result: &str) {
        self.outbound.with_label_values(&[policy, result]).inc();
    }

    pub(crate) fn canary_state(&self, policy: &str, state: i64) {
        self.canary_state.with_label_values(&[policy]).set(state);
    }

    pub(crate) fn canary_call(&self, policy: &str, side: &str, class: &str) {
        self.canary_calls
            .with_label_values(&[policy, side, class])
            .inc();
    }

    pub(crate) fn canary_rollback(&self, policy: &str, reason: &str) {
        self.canary_rollbacks
            .with_label_values(&[policy, reason])
            .inc();
    }

    pub(crate) fn shadow(&self, policy: &str, baseline: &str, candidate: &str) {
        if baseline == candidate {
            self.shadow.with_label_values(&[policy, "same"]).inc();
            return;
        }
        self.shadow.with_label_values(&[policy, "different"]).inc();
        let key = (policy.to_owned(), baseline.to_owned(), candidate.to_owned());
        let known = {
            let mut pairs = self.shadow_pairs.lock();
            let per_policy = pairs.iter().filter(|(p, _, _)| p == policy).count();
            pairs.contains(&key) || (per_policy < MAX_SHADOW_PAIRS && pairs.insert(key))
        };
        let (b, c) = if known {
            (baseline, candidate)
        } else {
            ("other", "other")
        };
        self.shadow_diff.with_label_values(&[policy, b, c]).inc();
    }

    pub(crate) fn shadow_skipped(&self, policy: &str) {
        self.shadow.with_label_values(&[policy, "skipped"]).inc();
    }
}
