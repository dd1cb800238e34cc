//! The WebAssembly engine the edge runs policies on.
//!
//! It narrows wasmtime to what a per-request policy needs: the pooling allocator (instances are
//! carved out of pre-reserved slots, so instantiation costs microseconds), epoch interruption
//! driven by a ticker thread (a guest that loops is cut off at its deadline), a hard per-memory cap,
//! and components compiled once when they are loaded.
//!
//! ```no_run
//! use edge_wasm::{Engine, EngineConfig};
//! let engine = Engine::new(&EngineConfig::default()).unwrap();
//! let component = engine.load_component("guests/target/wasm32-wasip2/release/signed_url.wasm".as_ref()).unwrap();
//! ```

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};
use wasmtime::{InstanceAllocationStrategy, PoolingAllocationConfig, component::Component};

/// Time between two epoch ticks: the granularity of every guest deadline.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The engine could not be built from its configuration.
    #[error("cannot create the WebAssembly engine: {0}")]
    Engine(String),
    /// A module file could not be read.
    #[error("{path}: cannot read module: {source}")]
    Read {
        /// The module file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A module file is not a valid WebAssembly component (or a core module, which policies are not).
    #[error("{path}: not a valid WebAssembly component: {reason}")]
    InvalidComponent {
        /// The module file.
        path: PathBuf,
        /// What wasmtime reported.
        reason: String,
    },
}

/// Limits of the engine as a whole.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Most component instances alive at once (pool slots).
    pub max_instances: u32,
    /// Hard cap on any one linear memory; per-store limits may be lower.
    pub max_memory: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_instances: 1000,
            max_memory: 16 << 20,
        }
    }
}

/// A wasmtime engine with its epoch ticker. Cloning shares both; the ticker stops when the last
/// clone is dropped.
#[derive(Clone)]
pub struct Engine {
    inner: wasmtime::Engine,
    _ticker: Arc<Ticker>,
}

struct Ticker(Arc<AtomicBool>);

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Engine {
    /// Builds the engine and starts its epoch ticker.
    pub fn new(cfg: &EngineConfig) -> Result<Self, Error> {
        let mut pool = PoolingAllocationConfig::new();
        // A Rust wasip2 component holds ~4 core instances and 2 tables (main module + adapters).
        pool.total_component_instances(cfg.max_instances)
            .total_core_instances(cfg.max_instances.saturating_mul(4))
            .total_memories(cfg.max_instances)
            .total_tables(cfg.max_instances.saturating_mul(2))
            .total_stacks(cfg.max_instances)
            .max_memory_size(usize::try_from(cfg.max_memory).unwrap_or(usize::MAX));
        let mut config = wasmtime::Config::new();
        config
            .epoch_interruption(true)
            .concurrency_support(false)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let inner = wasmtime::Engine::new(&config).map_err(|e| Error::Engine(format!("{e:#}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (engine, flag) = (inner.clone(), stop.clone());
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .map_err(|e| Error::Engine(format!("cannot start the epoch ticker: {e}")))?;
        Ok(Self {
            inner,
            _ticker: Arc::new(Ticker(stop)),
        })
    }

    /// The wasmtime engine.
    pub fn wasmtime(&self) -> &wasmtime::Engine {
        &self.inner
    }

    /// Reads and compiles a component from `path`.
    pub fn load_component(&self, path: &Path) -> Result<Component, Error> {
        let bytes = std::fs::read(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        self.compile(path, &bytes)
    }

    /// Compiles component `bytes`; `path` names it in errors.
    pub fn compile(&self, path: &Path, bytes: &[u8]) -> Result<Component, Error> {
        if !bytes.starts_with(b"\0asm") {
            return Err(Error::InvalidComponent {
                path: path.to_owned(),
                reason: "not a WebAssembly file (no \\0asm header)".into(),
            });
        }
        if wasmparser_is_core_module(bytes) {
            return Err(Error::InvalidComponent {
                path: path.to_owned(),
                reason: "this is a core WebAssembly module; policies must be components (build for wasm32-wasip2)".into(),
            });
        }
        Component::new(&self.inner, bytes).map_err(|e| Error::InvalidComponent {
            path: path.to_owned(),
            reason: one_line(&format!("{e:#}")),
        })
    }

    /// Converts a wall-clock budget into epoch ticks (at least one).
    pub fn ticks(budget: Duration) -> u64 {
        (budget.as_micros() / EPOCH_TICK.as_micros()).max(1) as u64
    }
}

/// Collapses wasmtime's multi-line messages into one line.
pub fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Core modules start with `\0asm` and version 1; components use layer 1 in the same header.
fn wasmparser_is_core_module(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && &bytes[..4] == b"\0asm" && bytes[4..8] == [1, 0, 0, 0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_garbage_and_core_modules() {
        let engine = Engine::new(&EngineConfig {
            max_instances: 4,
            max_memory: 1 << 20,
        })
        .unwrap();
        let err = engine
            .compile(Path::new("x.wasm"), b"not wasm")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "x.wasm: not a valid WebAssembly component: not a WebAssembly file (no \\0asm header)"
        );
        let core = b"\0asm\x01\0\0\0";
        let err = engine
            .compile(Path::new("core.wasm"), core)
            .unwrap_err()
            .to_string();
        assert!(err.contains("core WebAssembly module"), "{err}");
    }

    #[test]
    fn ticks_round_down_but_never_to_zero() {
        assert_eq!(Engine::ticks(Duration::from_millis(5)), 5);
        assert_eq!(Engine::ticks(Duration::from_micros(10)), 1);
    }
}
