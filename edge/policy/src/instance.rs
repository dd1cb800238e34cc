//! One loaded policy: its pre-linked component, limits and instance pool.

use crate::{
    Error, Module, PolicyRuntime,
    outbound::AllowedOrigin,
    state::{PolicyInfo, PolicyState},
};
use edge_config::{FailMode, Isolation, PolicySpec};
use edge_wasm::Engine;
use edge_wit::{
    Policy, PolicyPre,
    types::{Decision, Request},
};
use std::{sync::Arc, time::Instant};
use wasmtime::{Store, Trap, UpdateDeadline};

/// Most idle instances a policy keeps for reuse; more are dropped when returned.
const MAX_IDLE: usize = 64;

/// Added to twice the deadline to bound a call by wall-clock time. The epoch deadline stays the
/// precise limit on guest code; this is the backstop for a guest parked in a host call (a WASI
/// sleep), loose enough that a busy machine does not turn host-side work into timeouts.
const WALL_SLACK: std::time::Duration = std::time::Duration::from_millis(50);

/// Bound on creating an instance (host-side work, not only guest code: it is not held to the
/// per-call deadline, which a busy machine would spuriously exceed).
const INSTANTIATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Most pairs in any list of a decision (headers, context, query parameters to propagate).
pub(crate) const MAX_PAIRS: usize = 64;

/// Most bytes of all names, values and the reason of a decision together.
pub(crate) const MAX_DECISION_BYTES: usize = 16 * 1024;

/// Why a policy call produced no decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The guest ran past its deadline and was interrupted.
    #[error("ran past its deadline")]
    Timeout,
    /// The guest grew its memory past its limit.
    #[error("exceeded its memory limit")]
    Memory,
    /// The guest trapped (a panic, an out-of-bounds access, ...).
    #[error("trapped: {0}")]
    Trap(String),
    /// No instance could be created (the engine's instance pool is exhausted).
    #[error("no instance available: {0}")]
    Capacity(String),
    /// The guest answered with a decision the edge cannot honour (e.g. a deny with status 200).
    #[error("invalid decision: {0}")]
    Invalid(String),
}

impl Failure {
    /// Metric label and short reason suffix.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Memory => "memory",
            Self::Trap(_) => "trap",
            Self::Capacity(_) => "capacity",
            Self::Invalid(_) => "invalid",
        }
    }
}

struct Slot {
    store: Store<PolicyState>,
    policy: Policy,
    uses: u32,
}

/// A compiled policy, ready to decide requests.
pub struct LoadedPolicy {
    pre: PolicyPre<PolicyState>,
    /// Keeps the epoch ticker running for as long as this policy can be called.
    _engine: Engine,
    info: Arc<PolicyInfo>,
    spec: PolicySpec,
    version: String,
    ticks: u64,
    /// Wall-clock bound of a call (`2 × deadline + WALL_SLACK`, plus the time booked to host
    /// calls): the epoch deadline only interrupts running guest code, not a guest parked in a WASI
    /// call (a sleep), which is not a budgeted host call.
    wall: std::time::Duration,
    memory_limit: usize,
    max_reuse: u32,
    idle: std::sync::Mutex<Vec<Slot>>,
    pub(crate) handles: crate::metrics::Handles,
}

impl std::fmt::Debug for LoadedPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPolicy")
            .field("name", &self.spec.name)
            .finish_non_exhaustive()
    }
}

impl LoadedPolicy {
    /// `candidate`: a canary candidate gets its own key-value namespace
    /// (`policy:NAME@<sha256 prefix>:`), so a shadowed or canaried version can never change the
    /// state the baseline decides on (a subscription cache, a rate-limit budget).
    pub(crate) fn load(
        rt: &PolicyRuntime,
        spec: &PolicySpec,
        module: &Module,
        candidate: bool,
    ) -> Result<Self, Error> {
        let rt = &rt.inner;
        let world = |e: wasmtime::Error| Error::World {
            policy: spec.name.clone(),
            path: module.path.clone(),
            reason: edge_wasm::one_line(&format!("{e:#}")),
        };
        let pre = PolicyPre::new(
            rt.linker
                .instantiate_pre(&module.component)
                .map_err(world)?,
        )
        .map_err(world)?;
        let allowed = spec
            .outbound
            .iter()
            .map(|o| AllowedOrigin::parse(o))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|reason| Error::World {
                policy: spec.name.clone(),
                path: module.path.clone(),
                reason: format!("outbound: {reason}"),
            })?;
        let deadline = spec
            .deadline
            .map_or(rt.wasm.deadline, |d| d.min(rt.wasm.deadline));
        let memory_limit = spec
            .memory_limit
            .map_or(rt.wasm.memory_limit, |m| m.min(rt.wasm.memory_limit));
        let max_reuse = match spec.isolation {
            Isolation::Pooled => rt.wasm.max_reuse,
            Isolation::Fresh => 1,
        };
        Ok(Self {
            pre,
            _engine: rt.engine.clone(),
            info: Arc::new(PolicyInfo {
                name: spec.name.clone(),
                config: spec.resolved_config.clone(),
                metrics: rt.metrics.clone(),
                clock: rt.host.clock.clone(),
                custom_counters: Default::default(),
                kv: rt.host.kv.namespaced(if candidate {
                    format!("policy:{}@{}:", spec.name, &module.sha256[..16])
                } else {
                    format!("policy:{}:", spec.name)
                }),
                outbound: rt.host.outbound.clone(),
                allowed,
                outbound_timeout: spec.outbound_timeout,
                outbound_max_body: usize::try_from(spec.outbound_max_body.as_u64())
                    .unwrap_or(usize::MAX),
                deadline,
                host_budget: spec.host_budget,
            }),
            spec: spec.clone(),
            version: module.sha256.clone(),
            ticks: Engine::ticks(deadline),
            wall: deadline * 2 + WALL_SLACK,
            memory_limit: usize::try_from(memory_limit.as_u64()).unwrap_or(usize::MAX),
            max_reuse,
            idle: std::sync::Mutex::new(Vec::new()),
            handles: rt.metrics.handles(&spec.name),
        })
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The module's sha256 (hex): the version this runs.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The names of the interfaces the module imports (`edge:policy/kv@0.1.0`,
    /// `wasi:cli/environment@0.2.6`, ...), in the component's order.
    pub fn imports(&self) -> Vec<String> {
        let component = self.pre.instance_pre().component();
        component
            .component_type()
            .imports(self.pre.engine())
            .map(|(name, _)| name.to_owned())
            .collect()
    }

    /// The policy's fail mode.
    pub fn fail_mode(&self) -> FailMode {
        self.spec.fail
    }

    /// Status of this policy's fail-closed answer.
    pub fn fail_status(&self) -> u16 {
        self.spec.fail_status
    }

    /// The metrics this policy reports into.
    pub fn metrics(&self) -> &crate::PolicyMetrics {
        &self.info.metrics
    }

    /// Request headers this policy may see.
    pub fn headers(&self) -> &[String] {
        &self.spec.headers
    }

    /// Runs `decide` on `request` on a pooled or new instance. Records metrics; never panics and
    /// never lets a guest failure escape as anything but a [`Failure`].
    pub async fn decide(&self, request: &Request) -> Result<Decision, Failure> {
        let start = Instant::now();
        let result = self.decide_inner(request).await;
        let metrics = &self.info.metrics;
        self.handles.calls.inc();
        self.handles.duration.observe(start.elapsed().as_secs_f64());
        if let Err(f) = &result {
            metrics.failure(&self.spec.name, f.kind());
        }
        result
    }

    async fn decide_inner(&self, request: &Request) -> Result<Decision, Failure> {
        let reused = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut slot = match reused {
            Some(slot) => slot,
            None => self.instantiate().await?,
        };
        slot.store.data_mut().begin_call();
        slot.store.set_epoch_deadline(self.ticks);
        let host_us = slot.store.data().host_us.clone();
        let call = slot
            .policy
            .edge_policy_decide()
            .call_decide(&mut slot.store, request);
        // A timed-out call is dropped mid-flight, which poisons the store: the slot goes with it.
        let result = match watchdog(call, self.wall, &host_us).await {
            None => return Err(Failure::Timeout),
            Some(r) => r,
        };
        match result
            .map_err(|e| classify(&e, slot.store.data()))
            .and_then(validate)
        {
            Ok(decision) => {
                slot.uses += 1;
                if slot.uses < self.max_reuse {
                    let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                    if idle.len() < MAX_IDLE {
                        idle.push(slot);
                    }
                }
                Ok(decision)
            }
            // A trap poisons the whole store, and an instance that answered nonsense is not
            // trusted again: dropping `slot` discards both.
            Err(failure) => Err(failure),
        }
    }

    async fn instantiate(&self) -> Result<Slot, Failure> {
        let engine = self.pre.engine();
        let mut store = Store::new(
            engine,
            PolicyState::new(self.info.clone(), self.memory_limit),
        );
        store.limiter(|s| &mut s.limiter);
        store.data_mut().begin_call();
        store.set_epoch_deadline(self.ticks);
        store.epoch_deadline_callback(|ctx| {
            let left = ctx.data().guest_time_left();
            Ok(if left.is_zero() {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::Continue(Engine::ticks(left))
            })
        });
        let instantiating =
            tokio::time::timeout(INSTANTIATE_TIMEOUT, self.pre.instantiate_async(&mut store)).await;
        let instantiated = instantiating.map_err(|_| Failure::Timeout)?;
        let policy = instantiated.map_err(|e| match classify(&e, store.data()) {
            Failure::Trap(msg) => Failure::Capacity(msg),
            other => other,
        })?;
        self.info.metrics.instance_created(&self.spec.name);
        Ok(Slot {
            store,
            policy,
            uses: 0,
        })
    }
}

/// Awaits `call` for at most `wall` plus the time booked to host calls (read from `host_us`, which
/// grows while the call runs). `None` when it ran out.
async fn watchdog<T>(
    call: impl Future<Output = T>,
    wall: std::time::Duration,
    host_us: &std::sync::atomic::AtomicU64,
) -> Option<T> {
    let started = tokio::time::Instant::now();
    let mut call = std::pin::pin!(call);
    // Most calls never wait (no host call pending): finish them without arming a timer.
    if let std::task::Poll::Ready(r) = futures::poll!(&mut call) {
        return Some(r);
    }
    loop {
        let allowed = wall
            + std::time::Duration::from_micros(host_us.load(std::sync::atomic::Ordering::Relaxed));
        tokio::select! {
            r = &mut call => return Some(r),
            () = tokio::time::sleep_until(started + allowed) => {
                let now_allowed = wall + std::time::Duration::from_micros(
                    host_us.load(std::sync::atomic::Ordering::Relaxed),
                );
                if started.elapsed() >= now_allowed {
                    return None;
                }
            }
        }
    }
}

fn classify(e: &wasmtime::Error, state: &PolicyState) -> Failure {
    if state.limiter.exceeded {
        return Failure::Memory;
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Failure::Timeout,
        _ => Failure::Trap(
            format!("{e:#}")
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
        ),
    }
}

/// Guests may not answer with statuses the edge cannot honour, nor with more than the edge will
/// carry (a decision with 25 000 headers would otherwise reach the response builder).
fn validate(d: Decision) -> Result<Decision, Failure> {
    let pairs: Vec<&[(String, String)]> = match &d {
        Decision::Allow(a) => vec![&a.response_headers, &a.context, &a.propagate_query],
        Decision::Deny(x) => vec![&x.headers],
        Decision::Redirect(_) => vec![],
    };
    if pairs.iter().any(|p| p.len() > MAX_PAIRS) {
        return Err(Failure::Invalid(format!(
            "more than {MAX_PAIRS} pairs in one list"
        )));
    }
    let text = match &d {
        Decision::Deny(x) => x.reason.len(),
        Decision::Redirect(x) => x.location.len(),
        Decision::Allow(_) => 0,
    };
    let bytes = text
        + pairs
            .iter()
            .flat_map(|p| p.iter())
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>();
    if bytes > MAX_DECISION_BYTES {
        return Err(Failure::Invalid(format!(
            "decision of {bytes} bytes (at most {MAX_DECISION_BYTES})"
        )));
    }
    match &d {
        Decision::Deny(x) if !(400..=599).contains(&x.status) => {
            Err(Failure::Invalid(format!("deny with status {}", x.status)))
        }
        Decision::Redirect(x) if !matches!(x.status, 301..=303 | 307 | 308) => Err(
            Failure::Invalid(format!("redirect with status {}", x.status)),
        ),
        Decision::Redirect(x) if x.location.is_empty() || x.location.contains(['\r', '\n']) => Err(
            Failure::Invalid("redirect with an empty or multi-line location".into()),
        ),
        _ => Ok(d),
    }
}
