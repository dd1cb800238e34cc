//! Per-store host state and the host side of every import interface.

use crate::{
    metrics::PolicyMetrics,
    outbound::{AllowedOrigin, Outbound},
};
use edge_wit::host::{clock, config, log, metrics};
use std::{
    collections::BTreeMap,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Most log lines one call may emit; later lines are dropped (and counted).
const MAX_LOGS_PER_CALL: u32 = 32;
/// Longest log message kept; longer ones are cut.
const MAX_LOG_LEN: usize = 1024;
/// Most distinct custom counter names one policy may create.
pub(crate) const MAX_CUSTOM_COUNTERS: usize = 64;

/// The time source policies see through the `clock` import.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_millis(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_millis(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// What a policy's stores share: its name, config, metrics and host services.
pub(crate) struct PolicyInfo {
    pub(crate) name: String,
    pub(crate) config: BTreeMap<String, String>,
    pub(crate) metrics: PolicyMetrics,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) custom_counters: std::sync::Mutex<std::collections::HashSet<String>>,
    pub(crate) kv: edge_kv::Namespaced,
    pub(crate) outbound: Arc<dyn Outbound>,
    pub(crate) allowed: Vec<AllowedOrigin>,
    pub(crate) outbound_timeout: Duration,
    pub(crate) outbound_max_body: usize,
    /// Time guest code may run per call (host calls excluded).
    pub(crate) deadline: Duration,
    /// Time host calls may take per call, all together.
    pub(crate) host_budget: Duration,
}

/// The data of one policy store.
pub(crate) struct PolicyState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) info: Arc<PolicyInfo>,
    pub(crate) limiter: MemoryLimiter,
    logs_this_call: u32,
    call_started: Instant,
    /// Microseconds booked to host calls this call. A running host call is booked at its limit
    /// and corrected when it returns, so the wall-clock watchdog ([`crate::LoadedPolicy`]) that
    /// reads this from outside the store never cuts off a host call within its budget.
    pub(crate) host_us: Arc<std::sync::atomic::AtomicU64>,
    host_calls: u32,
}

/// Most host calls (kv and outbound HTTP together) one `decide` may make; later ones fail as
/// unavailable/timeout.
const MAX_HOST_CALLS: u32 = 256;

impl PolicyState {
    pub(crate) fn new(info: Arc<PolicyInfo>, memory_limit: usize) -> Self {
        Self {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            info,
            limiter: MemoryLimiter {
                limit: memory_limit,
                exceeded: false,
            },
            logs_this_call: 0,
            call_started: Instant::now(),
            host_us: Arc::default(),
            host_calls: 0,
        }
    }

    pub(crate) fn begin_call(&mut self) {
        self.logs_this_call = 0;
        self.call_started = Instant::now();
        self.host_us.store(0, Ordering::Relaxed);
        self.host_calls = 0;
    }

    /// Guest time left in this call: wall time since the call began, minus time spent in host
    /// calls. The epoch callback interrupts the guest when it reaches zero.
    pub(crate) fn guest_time_left(&self) -> Duration {
        let guest = self.call_started.elapsed().saturating_sub(self.host_time());
        self.info.deadline.saturating_sub(guest)
    }

    /// Runs a host call bounded by `limit` and by what is left of the call's host budget, and
    /// books its duration as host time. `None` when it ran out of time.
    pub(crate) async fn host_call<T>(
        &mut self,
        limit: Duration,
        work: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        self.host_calls += 1;
        if self.host_calls > MAX_HOST_CALLS {
            return None;
        }
        let left = self.info.host_budget.saturating_sub(self.host_time());
        let limit = limit.min(left);
        if limit.is_zero() {
            return None;
        }
        // Work that completes at once (in-memory kv) ran on this thread like guest code: it counts
        // as guest time, so a guest cannot escape its deadline through cheap host calls.
        let mut work = std::pin::pin!(work);
        if let std::task::Poll::Ready(r) = futures::poll!(&mut work) {
            return Some(r);
        }
        let booked = limit.as_micros() as u64;
        self.host_us.fetch_add(booked, Ordering::Relaxed);
        let started = Instant::now();
        let result = tokio::time::timeout(limit, work).await.ok();
        let used = (started.elapsed().as_micros() as u64).min(booked);
        self.host_us.fetch_sub(booked - used, Ordering::Relaxed);
        result
    }

    fn host_time(&self) -> Duration {
        Duration::from_micros(self.host_us.load(Ordering::Relaxed))
    }
}

/// Refuses memory growth past the policy's limit by trapping, and remembers that it did so the
/// failure can be reported as a memory failure rather than a generic trap.
pub(crate) struct MemoryLimiter {
    limit: usize,
    pub(crate) exceeded: bool,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.exceeded = true;
            return Err(wasmtime::Error::msg(format!(
                "memory limit of {} bytes exceeded",
                self.limit
            )));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

impl WasiView for PolicyState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl edge_wit::types::Host for PolicyState {}

impl config::Host for PolicyState {
    fn get(&mut self, key: String) -> Option<String> {
        self.info.config.get(&key).cloned()
    }
}

impl clock::Host for PolicyState {
    fn now_millis(&mut self) -> u64 {
        self.info.clock.now_millis()
    }
}

impl log::Host for PolicyState {
    fn log(&mut self, level: log::Level, mut message: String) {
        self.logs_this_call += 1;
        if self.logs_this_call > MAX_LOGS_PER_CALL {
            self.info.metrics.logs_dropped(&self.info.name);
            return;
        }
        if message.len() > MAX_LOG_LEN {
            let mut cut = MAX_LOG_LEN;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        let policy = self.info.name.as_str();
        match level {
            log::Level::Trace => tracing::trace!(target: "edge::guest", policy, "{message}"),
            log::Level::Debug => tracing::debug!(target: "edge::guest", policy, "{message}"),
            log::Level::Info => tracing::info!(target: "edge::guest", policy, "{message}"),
            log::Level::Warn => tracing::warn!(target: "edge::guest", policy, "{message}"),
            log::Level::Error => tracing::error!(target: "edge::guest", policy, "{message}"),
        }
    }
}

impl metrics::Host for PolicyState {
    fn counter_add(&mut self, name: String, value: u64) {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            self.info.metrics.logs_dropped(&self.info.name);
            return;
        }
        {
            let mut known = self
                .info
                .custom_counters
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if !known.contains(&name) {
                if known.len() >= MAX_CUSTOM_COUNTERS {
                    drop(known);
                    self.info.metrics.logs_dropped(&self.info.name);
                    return;
                }
                known.insert(name.clone());
            }
        }
        self.info.metrics.custom(&self.info.name, &name, value);
    }
}
