//! The policy host: runs WebAssembly policy chains on requests.
//!
//! - [`PolicyRuntime`] owns the engine and the linker with every host import (`config`, `clock`,
//!   `log`, `metrics`, and a deny-all WASI for the guest's standard library).
//! - [`PolicyRuntime::load`] compiles every module of a [`edge_config::PolicySet`] once and returns a
//!   [`Router`]: routes (glob patterns) bound to chains of [`LoadedPolicy`].
//! - [`Route::run`] runs a chain on a protocol-neutral [`RequestInfo`] and returns an [`Outcome`].
//!
//! A guest that traps, runs past its deadline or grows past its memory limit never takes the process
//! down: the call returns a [`Failure`], the instance (and its store) is discarded, and the policy's
//! fail mode decides the request. Nothing here knows about pingora or any listener.

mod canary;
mod chain;
mod host;
mod instance;
mod metrics;
pub mod outbound;
pub mod signing;
mod state;

pub use canary::{CanaryStatus, Deployment, SideStats};
pub use chain::{Outcome, RequestInfo, Route, Router};
pub use edge_kv::Kv;
pub use instance::{Failure, LoadedPolicy};
pub use metrics::PolicyMetrics;
pub use outbound::{HttpOutbound, Outbound};
pub use signing::TrustedKeys;
pub use state::{Clock, SystemClock};

/// Re-exported so embedders need not name these crates to build a runtime or a request.
pub use http::HeaderMap;
pub use prometheus::Registry;

use edge_config::{PolicySet, WasmConfig};
use edge_wasm::Engine;
use std::{path::PathBuf, sync::Arc};
use wasmtime::component::{HasSelf, Linker};

/// Errors of loading policies.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A module could not be read or compiled.
    #[error(transparent)]
    Module(#[from] edge_wasm::Error),
    /// A module's bytes do not hash to the version its policy pins.
    #[error("{path}: policy {policy:?} pins version {expected} but the module is sha256:{actual}")]
    Version {
        /// The policy name.
        policy: String,
        /// The module file.
        path: PathBuf,
        /// The pinned version.
        expected: String,
        /// The module's sha256 (hex).
        actual: String,
    },
    /// A module is unsigned or badly signed while trusted keys are configured.
    #[error(transparent)]
    Signature(#[from] signing::SigningError),
    /// A module does not implement the `edge:policy/policy` world (wrong exports, unknown imports).
    #[error("{path}: policy {policy:?} does not fit the edge:policy world: {reason}")]
    World {
        /// The policy name.
        policy: String,
        /// The module file.
        path: PathBuf,
        /// What wasmtime reported.
        reason: String,
    },
    /// The linker could not be set up (a bug, not a user error).
    #[error("cannot link host imports: {0}")]
    Linker(String),
    /// A route pattern did not compile (validated earlier; kept for completeness).
    #[error("route {route:?}: {reason}")]
    Route {
        /// The route name.
        route: String,
        /// Why.
        reason: String,
    },
}

/// Compiles and runs policies. Cheap to clone.
#[derive(Clone)]
pub struct PolicyRuntime {
    inner: Arc<RuntimeInner>,
}

/// What guests reach through their imports: time, key-value state, outbound HTTP.
#[derive(Clone)]
pub struct HostServices {
    /// The `clock` import.
    pub clock: Arc<dyn Clock>,
    /// The `kv` import (each policy sees its own namespace).
    pub kv: Kv,
    /// The transport of the `outbound-http` import (after the allow-list check).
    pub outbound: Arc<dyn Outbound>,
}

impl HostServices {
    /// System clock, in-memory key-value scopes of `kv_max_entries` keys, real HTTP.
    pub fn local(kv_max_entries: usize) -> Self {
        Self {
            clock: Arc::new(SystemClock),
            kv: Kv::memory(kv_max_entries),
            outbound: Arc::new(
                HttpOutbound::new().expect("an HTTP client without TLS roots to load"),
            ),
        }
    }
}

/// A compiled module and its version.
#[derive(Clone)]
pub(crate) struct Module {
    pub(crate) path: PathBuf,
    pub(crate) sha256: String,
    pub(crate) component: wasmtime::component::Component,
}

struct RuntimeInner {
    engine: Engine,
    linker: Linker<state::PolicyState>,
    wasm: WasmConfig,
    metrics: PolicyMetrics,
    host: HostServices,
    trusted: TrustedKeys,
    /// Compiled components by sha256: a reload recompiles only modules that changed.
    compiled: std::sync::Mutex<std::collections::HashMap<String, wasmtime::component::Component>>,
    /// Candidate versions rolled back automatically, by (policy, sha256): a reload with the same
    /// candidate does not restart its canary; a new candidate version does.
    rolled_back: Arc<canary::RollbackLedger>,
}

impl PolicyRuntime {
    /// A runtime on `engine` with the limits of `wasm`, reporting into `metrics`; modules must be
    /// signed by one of `trusted` (when it holds any key).
    pub fn new(
        engine: Engine,
        wasm: WasmConfig,
        metrics: PolicyMetrics,
        host: HostServices,
        trusted: TrustedKeys,
    ) -> Result<Self, Error> {
        let mut linker = Linker::new(engine.wasmtime());
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| Error::Linker(format!("{e:#}")))?;
        edge_wit::Policy::add_to_linker::<_, HasSelf<state::PolicyState>>(&mut linker, |s| s)
            .map_err(|e| Error::Linker(format!("{e:#}")))?;
        Ok(Self {
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                wasm,
                metrics,
                host,
                trusted,
                compiled: Default::default(),
                rolled_back: Default::default(),
            }),
        })
    }

    /// Compiles every policy of `set` (and canary candidate) and binds its routes. All problems
    /// are returned at once. Modules already compiled (same sha256) are reused.
    pub fn load(&self, set: &PolicySet) -> Result<Router, Vec<Error>> {
        let mut errors = Vec::new();
        let mut loaded = std::collections::HashMap::new();
        let mut used = std::collections::HashSet::new();
        for spec in set.policies.values() {
            let baseline = self
                .module(spec, &set.module_path(spec), spec.version.as_deref())
                .and_then(|m| {
                    used.insert(m.sha256.clone());
                    LoadedPolicy::load(self, spec, &m, false)
                });
            let candidate = spec.canary.as_ref().map(|c| {
                self.module(spec, &set.resolve(&c.module), c.version.as_deref())
                    .and_then(|m| {
                        used.insert(m.sha256.clone());
                        LoadedPolicy::load(self, spec, &m, true)
                    })
            });
            match (baseline, candidate.transpose()) {
                (Ok(b), Ok(c)) => {
                    let d = Deployment::new(
                        spec,
                        Arc::new(b),
                        c.map(Arc::new),
                        &self.inner.metrics,
                        &self.inner.rolled_back,
                    );
                    loaded.insert(spec.name.clone(), Arc::new(d));
                }
                (b, c) => errors.extend(b.err().into_iter().chain(c.err())),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        self.inner
            .compiled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|sha, _| used.contains(sha));
        Router::new(&set.routes, &loaded).map_err(|e| vec![e])
    }

    /// Reads, checks (pin, signature) and compiles the module at `path` for policy `spec`.
    fn module(
        &self,
        spec: &edge_config::PolicySpec,
        path: &std::path::Path,
        pin: Option<&str>,
    ) -> Result<Module, Error> {
        let bytes = std::fs::read(path).map_err(|source| edge_wasm::Error::Read {
            path: path.to_owned(),
            source,
        })?;
        let sha256 = signing::sha256_hex(&bytes);
        if let Some(pin) = pin
            && !sha256.starts_with(&pin.trim_start_matches("sha256:").to_ascii_lowercase())
        {
            return Err(Error::Version {
                policy: spec.name.clone(),
                path: path.to_owned(),
                expected: pin.to_owned(),
                actual: sha256,
            });
        }
        self.inner.trusted.check(path, &bytes)?;
        let cached = self
            .inner
            .compiled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&sha256)
            .cloned();
        let component = match cached {
            Some(c) => c,
            None => {
                let c = self.inner.engine.compile(path, &bytes)?;
                self.inner
                    .compiled
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(sha256.clone(), c.clone());
                c
            }
        };
        Ok(Module {
            path: path.to_owned(),
            sha256,
            component,
        })
    }

    /// The metrics this runtime reports into.
    pub fn metrics(&self) -> &PolicyMetrics {
        &self.inner.metrics
    }
}
