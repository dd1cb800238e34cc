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

mod chain;
mod instance;
mod metrics;
mod state;

pub use chain::{Outcome, RequestInfo, Route, Router};
pub use instance::{Failure, LoadedPolicy};
pub use metrics::PolicyMetrics;
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

struct RuntimeInner {
    engine: Engine,
    linker: Linker<state::PolicyState>,
    wasm: WasmConfig,
    metrics: PolicyMetrics,
    clock: Arc<dyn Clock>,
}

impl PolicyRuntime {
    /// A runtime on `engine` with the limits of `wasm`, reporting into `metrics`.
    pub fn new(
        engine: Engine,
        wasm: WasmConfig,
        metrics: PolicyMetrics,
        clock: Arc<dyn Clock>,
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
                clock,
            }),
        })
    }

    /// Compiles every policy of `set` and binds its routes. All problems are returned at once.
    pub fn load(&self, set: &PolicySet) -> Result<Router, Vec<Error>> {
        let mut errors = Vec::new();
        let mut loaded = std::collections::HashMap::new();
        for spec in set.policies.values() {
            match LoadedPolicy::load(self, set, spec) {
                Ok(p) => {
                    loaded.insert(spec.name.clone(), Arc::new(p));
                }
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Router::new(&set.routes, &loaded).map_err(|e| vec![e])
    }

    /// The metrics this runtime reports into.
    pub fn metrics(&self) -> &PolicyMetrics {
        &self.inner.metrics
    }
}
