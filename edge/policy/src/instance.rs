//! One loaded policy: its pre-linked component, limits and instance pool.

use crate::{
    Error, PolicyRuntime,
    state::{PolicyInfo, PolicyState},
};
use edge_config::{FailMode, Isolation, PolicySet, PolicySpec};
use edge_wasm::Engine;
use edge_wit::{
    Policy, PolicyPre,
    types::{Decision, Request},
};
use std::{sync::Arc, time::Instant};
use wasmtime::{Store, Trap};

/// Most idle instances a policy keeps for reuse; more are dropped when returned.
const MAX_IDLE: usize = 64;

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
    ticks: u64,
    memory_limit: usize,
    max_reuse: u32,
    idle: std::sync::Mutex<Vec<Slot>>,
}

impl std::fmt::Debug for LoadedPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPolicy")
            .field("name", &self.spec.name)
            .finish_non_exhaustive()
    }
}

impl LoadedPolicy {
    pub(crate) fn load(
        rt: &PolicyRuntime,
        set: &PolicySet,
        spec: &PolicySpec,
    ) -> Result<Self, Error> {
        let rt = &rt.inner;
        let path = set.module_path(spec);
        let component = rt.engine.load_component(&path)?;
        let world = |e: wasmtime::Error| Error::World {
            policy: spec.name.clone(),
            path: path.clone(),
            reason: edge_wasm::one_line(&format!("{e:#}")),
        };
        let pre =
            PolicyPre::new(rt.linker.instantiate_pre(&component).map_err(world)?).map_err(world)?;
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
                clock: rt.clock.clone(),
                custom_counters: Default::default(),
            }),
            spec: spec.clone(),
            ticks: Engine::ticks(deadline),
            memory_limit: usize::try_from(memory_limit.as_u64()).unwrap_or(usize::MAX),
            max_reuse,
            idle: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.spec.name
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
        metrics.call(&self.spec.name, start.elapsed().as_secs_f64());
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
        match slot
            .policy
            .edge_policy_decide()
            .call_decide(&mut slot.store, request)
            .await
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
            // A trap poisons the whole store: dropping `slot` discards it.
            Err(e) => Err(classify(&e, slot.store.data())),
        }
    }

    async fn instantiate(&self) -> Result<Slot, Failure> {
        let engine = self.pre.engine();
        let mut store = Store::new(
            engine,
            PolicyState::new(self.info.clone(), self.memory_limit),
        );
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(self.ticks);
        let policy = self.pre.instantiate_async(&mut store).await.map_err(|e| {
            match classify(&e, store.data()) {
                Failure::Trap(msg) => Failure::Capacity(msg),
                other => other,
            }
        })?;
        self.info.metrics.instance_created(&self.spec.name);
        Ok(Slot {
            store,
            policy,
            uses: 0,
        })
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
