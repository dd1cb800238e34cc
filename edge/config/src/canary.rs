use serde::Deserialize;
use std::{path::PathBuf, time::Duration};

/// `[policies.NAME.canary]`: a candidate version of the policy's module that takes part of the
/// traffic (`mode = "enforce"`) or runs beside the baseline without deciding (`mode = "shadow"`),
/// and is rolled back automatically when it does worse than the baseline.
///
/// ```toml
/// [policies.auth.canary]
/// module = "auth_jwt-v2.wasm"
/// version = "sha256:3f2a…"      # optional pin, like the policy's own `version`
/// weight = 10                   # percent of viewers (sticky)
/// sticky = "subject"            # "subject" (context `sub`, else client address) | "client"
/// mode = "enforce"              # "enforce" | "shadow"
/// [policies.auth.canary.rollback]
/// window = "60s"
/// min_requests = 50
/// trap_rate = 0.01              # candidate may exceed the baseline's rate by at most this
/// error_rate = 0.01
/// deny_rate = 0.05
/// p99 = "2ms"
/// ```
#[derive(Debug, Clone, Deserialize)]
pub struct CanarySpec {
    /// The candidate component, resolved against the policies file's directory.
    pub module: PathBuf,
    /// Pin: `sha256:<hex>` (a prefix of at least 32 hex digits) the module must hash to.
    #[serde(default)]
    pub version: Option<String>,
    /// Percent (0–100) of viewers sent to the candidate (shadow: also run on the candidate).
    pub weight: u8,
    /// What keeps a viewer on one side.
    #[serde(default)]
    pub sticky: Sticky,
    /// Whether the candidate's decisions are enforced.
    #[serde(default)]
    pub mode: CanaryMode,
    /// When the candidate is rolled back.
    #[serde(default)]
    pub rollback: RollbackSpec,
}

/// Which request property keeps a viewer on one side of a canary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sticky {
    /// The `sub` an earlier policy put in the context; the client address when there is none.
    #[default]
    Subject,
    /// The client address.
    Client,
}

/// Whether a canary's decisions count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CanaryMode {
    /// Sampled viewers get the candidate's decision.
    #[default]
    Enforce,
    /// Everyone gets the baseline's decision; the candidate runs beside it on sampled requests and
    /// differences (allow↔deny, reason codes) are counted.
    Shadow,
}

/// Margins over the baseline, measured over a sliding window, past which the candidate is rolled
/// back. Rates are fractions of calls (0.01 = one percentage point).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RollbackSpec {
    /// Sliding window. Default `60s`.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Candidate calls in the window before any comparison. Default 20.
    pub min_requests: u64,
    /// Traps, timeouts and memory failures. Default 0.01.
    pub trap_rate: f64,
    /// Invalid decisions, capacity failures and 5xx denials. Default 0.01.
    pub error_rate: f64,
    /// 4xx denials. Default 0.05.
    pub deny_rate: f64,
    /// 99th-percentile latency of a call. Default `2ms`.
    #[serde(with = "humantime_serde")]
    pub p99: Duration,
}

impl Default for RollbackSpec {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
            min_requests: 20,
            trap_rate: 0.01,
            error_rate: 0.01,
            deny_rate: 0.05,
            p99: Duration::from_millis(2),
        }
    }
}
