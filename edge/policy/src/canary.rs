//! A deployed policy: its baseline version and, optionally, a canary candidate that takes a
//! sticky share of viewers (or shadows the baseline) and is rolled back automatically when it does
//! worse than the baseline over a sliding window.

use crate::{Failure, LoadedPolicy, PolicyMetrics};
use edge_config::{CanaryMode, CanarySpec, FailMode, PolicySpec, RollbackSpec, Sticky};
use edge_wit::types::{Decision, Request};
use parking_lot::Mutex;
use serde::Serialize;
use std::{
    collections::HashSet,
    hash::{DefaultHasher, Hash, Hasher},
    sync::Arc,
    time::{Duration, Instant},
};

const BUCKETS: usize = 10;
const LATENCY_BUCKETS: usize = 26;
/// Rollback checks run at most this often (they sum the window).
const EVAL_EVERY: Duration = Duration::from_millis(50);

/// Candidates rolled back so far, by (policy, sha256).
#[derive(Debug, Default)]
pub(crate) struct RollbackLedger(Mutex<HashSet<(String, String)>>);

/// How one call ended, for canary comparisons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Ok,
    Deny,
    Error,
    Trap,
}

impl Class {
    fn of(result: &Result<Decision, Failure>) -> Self {
        match result {
            Ok(Decision::Deny(d)) if d.status >= 500 => Self::Error,
            Ok(Decision::Deny(_)) => Self::Deny,
            Ok(_) => Self::Ok,
            Err(Failure::Invalid(_) | Failure::Capacity(_)) => Self::Error,
            Err(_) => Self::Trap,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Deny => "deny",
            Self::Error => "error",
            Self::Trap => "trap",
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    slot: u64,
    calls: u64,
    traps: u64,
    errors: u64,
    denies: u64,
    latency: [u64; LATENCY_BUCKETS],
}

/// One side's calls over the sliding window, in `BUCKETS` time slots.
#[derive(Debug)]
struct Window {
    buckets: [Bucket; BUCKETS],
    slot_len: Duration,
}

/// A side's totals over the window.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct SideStats {
    /// Calls.
    pub calls: u64,
    /// Fraction of calls that trapped, timed out or ran out of memory.
    pub trap_rate: f64,
    /// Fraction of calls with an invalid decision, no capacity, or a 5xx denial.
    pub error_rate: f64,
    /// Fraction of calls denied with a 4xx.
    pub deny_rate: f64,
    /// 99th-percentile call latency in microseconds (upper bound of a power-of-two bucket).
    pub p99_us: u64,
}

impl Window {
    fn new(window: Duration) -> Self {
        Self {
            buckets: [Bucket::default(); BUCKETS],
            slot_len: (window / BUCKETS as u32).max(Duration::from_millis(1)),
        }
    }

    fn slot(&self, epoch: Instant, now: Instant) -> u64 {
        (now.duration_since(epoch).as_nanos() / self.slot_len.as_nanos()) as u64
    }

    fn record(&mut self, slot: u64, class: Class, latency: Duration) {
        let b = &mut self.buckets[(slot % BUCKETS as u64) as usize];
        if b.slot != slot {
            *b = Bucket {
                slot,
                ..Bucket::default()
            };
        }
        b.calls += 1;
        match class {
            Class::Trap => b.traps += 1,
            Class::Error => b.errors += 1,
            Class::Deny => b.denies += 1,
            Class::Ok => {}
        }
        let us = latency.as_micros().max(1) as u64;
        let i = (63 - us.leading_zeros() as usize).min(LATENCY_BUCKETS - 1);
        b.latency[i] += 1;
    }

    fn stats(&self, slot: u64) -> SideStats {
        let mut total = Bucket::default();
        for b in self
            .buckets
            .iter()
            .filter(|b| b.calls > 0 && slot.saturating_sub(b.slot) < BUCKETS as u64)
        {
            total.calls += b.calls;
            total.traps += b.traps;
            total.errors += b.errors;
            total.denies += b.denies;
            for (t, l) in total.latency.iter_mut().zip(b.latency) {
                *t += l;
            }
        }
        let rate = |n: u64| {
            if total.calls == 0 {
                0.0
            } else {
                n as f64 / total.calls as f64
            }
        };
        let mut p99_us = 0;
        let threshold = (total.calls as f64 * 0.99).ceil() as u64;
        let mut seen = 0;
        for (i, n) in total.latency.iter().enumerate() {
            seen += n;
            if total.calls > 0 && seen >= threshold {
                p99_us = 1u64 << (i + 1);
                break;
            }
        }
        SideStats {
            calls: total.calls,
            trap_rate: rate(total.traps),
            error_rate: rate(total.errors),
            deny_rate: rate(total.denies),
            p99_us,
        }
    }
}

/// A canary's state as the admin listener shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CanaryStatus {
    /// The candidate's sha256.
    pub version: String,
    /// `enforce` or `shadow`.
    pub mode: &'static str,
    /// Configured percent of viewers.
    pub weight: u8,
    /// `active` or `rolled_back`.
    pub state: &'static str,
    /// Why it was rolled back.
    pub reason: Option<String>,
    /// Baseline over the window.
    pub baseline: SideStats,
    /// Candidate over the window.
    pub candidate: SideStats,
}

struct Canary {
    candidate: Arc<LoadedPolicy>,
    spec: CanarySpec,
    epoch: Instant,
    inner: Mutex<CanaryInner>,
    metrics: PolicyMetrics,
    name: String,
    ledger: Arc<RollbackLedger>,
    /// Bounds shadow calls in flight: a slow candidate must not hold the instance slots the
    /// baseline needs. When full, the sample is skipped (and counted).
    shadows: Arc<tokio::sync::Semaphore>,
}

/// Most shadow calls in flight per canary.
const MAX_SHADOW_CALLS: usize = 32;

struct CanaryInner {
    rolled_back: Option<String>,
    baseline: Window,
    candidate: Window,
    last_eval: Instant,
}

/// A policy as routes use it: baseline plus optional canary.
pub struct Deployment {
    baseline: Arc<LoadedPolicy>,
    canary: Option<Arc<Canary>>,
}

impl std::fmt::Debug for Deployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployment")
            .field("baseline", &self.baseline)
            .field(
                "canary",
                &self.canary.as_ref().map(|c| c.candidate.version()),
            )
            .finish()
    }
}

impl Deployment {
    pub(crate) fn new(
        spec: &PolicySpec,
        baseline: Arc<LoadedPolicy>,
        candidate: Option<Arc<LoadedPolicy>>,
        metrics: &PolicyMetrics,
        ledger: &Arc<RollbackLedger>,
    ) -> Self {
        let canary = match (candidate, &spec.canary) {
            (Some(candidate), Some(cs)) => {
                let key = (spec.name.clone(), candidate.version().to_owned());
                let rolled_back = ledger.0.lock().contains(&key).then(|| {
                    "rolled back earlier; deploy a new candidate version to retry".to_owned()
                });
                let window = cs.rollback.window;
                metrics.canary_state(&spec.name, state_code(cs.mode, rolled_back.is_some()));
                let canary = Canary {
                    candidate,
                    spec: cs.clone(),
                    epoch: Instant::now(),
                    inner: Mutex::new(CanaryInner {
                        rolled_back,
                        baseline: Window::new(window),
                        candidate: Window::new(window),
                        last_eval: Instant::now(),
                    }),
                    metrics: metrics.clone(),
                    name: spec.name.clone(),
                    ledger: ledger.clone(),
                    shadows: Arc::new(tokio::sync::Semaphore::new(MAX_SHADOW_CALLS)),
                };
                Some(Arc::new(canary))
            }
            _ => {
                metrics.canary_state(&spec.name, 0);
                None
            }
        };
        Self { baseline, canary }
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        self.baseline.name()
    }

    /// The baseline version.
    pub fn baseline(&self) -> &LoadedPolicy {
        &self.baseline
    }

    /// The canary's state, if there is one.
    pub fn canary(&self) -> Option<CanaryStatus> {
        let c = self.canary.as_ref()?;
        let inner = c.inner.lock();
        let slot = inner.baseline.slot(c.epoch, Instant::now());
        Some(CanaryStatus {
            version: c.candidate.version().to_owned(),
            mode: match c.spec.mode {
                CanaryMode::Enforce => "enforce",
                CanaryMode::Shadow => "shadow",
            },
            weight: c.spec.weight,
            state: if inner.rolled_back.is_some() {
                "rolled_back"
            } else {
                "active"
            },
            reason: inner.rolled_back.clone(),
            baseline: inner.baseline.stats(slot),
            candidate: inner.candidate.stats(slot),
        })
    }

    /// The fail mode (shared by both versions).
    pub fn fail_mode(&self) -> FailMode {
        self.baseline.fail_mode()
    }

    /// Decides `request` on the version this viewer is assigned to (shadow: on the baseline, with
    /// the candidate run beside it in the background).
    pub(crate) async fn decide(&self, request: &Request) -> Result<Decision, Failure> {
        let Some(c) = &self.canary else {
            return self.baseline.decide(request).await;
        };
        if !c.sampled(request) {
            let started = Instant::now();
            let result = self.baseline.decide(request).await;
            c.record(false, &result, started.elapsed());
            return result;
        }
        match c.spec.mode {
            CanaryMode::Enforce => {
                let started = Instant::now();
                let result = c.candidate.decide(request).await;
                c.record(true, &result, started.elapsed());
                result
            }
            CanaryMode::Shadow => {
                let started = Instant::now();
                let result = self.baseline.decide(request).await;
                c.record(false, &result, started.elapsed());
                let Ok(permit) = c.shadows.clone().try_acquire_owned() else {
                    c.metrics.shadow_skipped(&c.name);
                    return result;
                };
                let (c, request, baseline) = (c.clone(), request.clone(), result.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    let started = Instant::now();
                    let shadow = c.candidate.decide(&request).await;
                    c.record(true, &shadow, started.elapsed());
                    c.metrics
                        .shadow(&c.name, &verdict(&baseline), &verdict(&shadow));
                });
                result
            }
        }
    }
}

fn state_code(mode: CanaryMode, rolled_back: bool) -> i64 {
    match (rolled_back, mode) {
        (true, _) => 3,
        (false, CanaryMode::Enforce) => 1,
        (false, CanaryMode::Shadow) => 2,
    }
}

/// A decision as a shadow-comparison label: `allow`, `redirect`, `deny:<reason>`, `fail:<kind>`.
fn verdict(result: &Result<Decision, Failure>) -> String {
    match result {
        Ok(Decision::Allow(_)) => "allow".into(),
        Ok(Decision::Redirect(_)) => "redirect".into(),
        Ok(Decision::Deny(d)) => {
            let clean = d.reason.len() <= 32
                && d.reason
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            format!("deny:{}", if clean { d.reason.as_str() } else { "other" })
        }
        Err(f) => format!("fail:{}", f.kind()),
    }
}

impl Canary {
    fn sampled(&self, request: &Request) -> bool {
        if self.spec.weight == 0 || self.inner.lock().rolled_back.is_some() {
            return false;
        }
        let subject = match self.spec.sticky {
            Sticky::Subject => request
                .context
                .iter()
                .find(|(k, _)| k == "sub")
                .map(|(_, v)| v.as_str()),
            Sticky::Client => None,
        };
        let mut h = DefaultHasher::new();
        self.name.hash(&mut h);
        subject.unwrap_or(&request.client_addr).hash(&mut h);
        h.finish() % 100 < u64::from(self.spec.weight)
    }

    fn record(&self, candidate: bool, result: &Result<Decision, Failure>, latency: Duration) {
        let class = Class::of(result);
        self.metrics.canary_call(
            &self.name,
            if candidate { "candidate" } else { "baseline" },
            class.label(),
        );
        let now = Instant::now();
        let mut inner = self.inner.lock();
        let slot = inner.baseline.slot(self.epoch, now);
        let side = if candidate {
            &mut inner.candidate
        } else {
            &mut inner.baseline
        };
        side.record(slot, class, latency);
        if !candidate || inner.rolled_back.is_some() {
            return;
        }
        if class != Class::Trap && now.duration_since(inner.last_eval) < EVAL_EVERY {
            return;
        }
        inner.last_eval = now;
        let (b, c) = (inner.baseline.stats(slot), inner.candidate.stats(slot));
        if let Some((metric, reason)) = worse(&self.spec.rollback, &b, &c) {
            tracing::error!(policy = %self.name, candidate = %self.candidate.version(), %reason, "canary rolled back");
            self.metrics.canary_rollback(&self.name, metric);
            self.metrics.canary_state(&self.name, 3);
            inner.rolled_back = Some(reason);
            self.ledger
                .0
                .lock()
                .insert((self.name.clone(), self.candidate.version().to_owned()));
        }
    }
}

/// The first margin the candidate exceeds, as (metric, human-readable reason).
fn worse(r: &RollbackSpec, b: &SideStats, c: &SideStats) -> Option<(&'static str, String)> {
    if c.calls < r.min_requests {
        return None;
    }
    // Traps and errors are judged against the baseline when it has enough calls, else against
    // zero (a candidate that traps is bad whatever the baseline does); denials only against a
    // measured baseline, since a policy's normal deny rate is unknown without one.
    let measured = b.calls >= r.min_requests;
    let base_or_zero = |v: f64| if measured { v } else { 0.0 };
    for (metric, cand, base, margin, judged) in [
        (
            "trap_rate",
            c.trap_rate,
            base_or_zero(b.trap_rate),
            r.trap_rate,
            true,
        ),
        (
            "error_rate",
            c.error_rate,
            base_or_zero(b.error_rate),
            r.error_rate,
            true,
        ),
        ("deny_rate", c.deny_rate, b.deny_rate, r.deny_rate, measured),
    ] {
        if judged && cand > base + margin {
            return Some((
                metric,
                format!(
                    "{metric} {cand:.3} over {} calls exceeds the baseline's {base:.3} + {margin}",
                    c.calls
                ),
            ));
        }
    }
    let margin = r.p99.as_micros() as u64;
    if measured && c.p99_us > b.p99_us + margin {
        return Some((
            "p99",
            format!(
                "p99 {} µs exceeds the baseline's {} µs + {margin} µs",
                c.p99_us, b.p99_us
            ),
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_rates_percentile_and_expiry() {
        let mut w = Window::new(Duration::from_secs(10));
        for i in 0..100 {
            let class = if i < 5 { Class::Trap } else { Class::Ok };
            w.record(
                0,
                class,
                Duration::from_micros(if i == 0 { 5000 } else { 3 }),
            );
        }
        let s = w.stats(0);
        assert_eq!(s.calls, 100);
        assert!((s.trap_rate - 0.05).abs() < 1e-9);
        assert_eq!(s.p99_us, 4, "99 of 100 calls took 3 µs");
        assert_eq!(w.stats(BUCKETS as u64).calls, 0, "slid out of the window");
        assert_eq!(w.stats(BUCKETS as u64 - 1).calls, 100);
    }

    #[test]
    fn margins() {
        let r = RollbackSpec {
            min_requests: 10,
            ..RollbackSpec::default()
        };
        let base = SideStats {
            calls: 100,
            deny_rate: 0.10,
            p99_us: 8,
            ..SideStats::default()
        };
        let mut cand = SideStats {
            calls: 9,
            trap_rate: 1.0,
            ..base
        };
        assert_eq!(worse(&r, &base, &cand), None, "too few candidate calls");
        cand.calls = 10;
        assert_eq!(worse(&r, &base, &cand).unwrap().0, "trap_rate");
        cand.trap_rate = 0.0;
        let thin = SideStats { calls: 3, ..base };
        cand.deny_rate = 0.9;
        assert_eq!(
            worse(&r, &thin, &cand),
            None,
            "no deny judgement without a measured baseline"
        );
        cand.error_rate = 0.5;
        assert_eq!(
            worse(&r, &thin, &cand).unwrap().0,
            "error_rate",
            "errors are judged against zero"
        );
        cand.error_rate = 0.0;
        cand.deny_rate = 0.14;
        assert_eq!(worse(&r, &base, &cand), None, "within the deny margin");
        cand.deny_rate = 0.16;
        assert_eq!(worse(&r, &base, &cand).unwrap().0, "deny_rate");
        cand.deny_rate = 0.1;
        cand.p99_us = 8 + 2001;
        assert_eq!(worse(&r, &base, &cand).unwrap().0, "p99");
    }
}
