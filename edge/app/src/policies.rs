//! The running policy set: loading, hot reload (file watch and admin endpoint) and status.
//!
//! A reload reads the policies file again, checks and compiles every module (unchanged ones come
//! from the runtime's cache), and only then swaps the router: requests in flight finish on the chain
//! they started with, new requests use the new one. A reload that fails anywhere changes nothing.

use crate::Problems;
use edge_config::{EdgeConfig, PolicySet};
use edge_pipeline::Pipeline;
use edge_policy::{HostServices, PolicyMetrics, PolicyRuntime, Router, TrustedKeys};
use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, OnceLock},
    time::{Duration, SystemTime},
};

/// Owns the policy runtime and the current set; swaps the pipeline's router on reload.
pub(crate) struct PolicyControl {
    runtime: PolicyRuntime,
    path: PathBuf,
    vars: HashMap<String, String>,
    current: parking_lot::Mutex<Current>,
    pipeline: OnceLock<Arc<Pipeline>>,
    reloading: tokio::sync::Mutex<()>,
}

struct Current {
    set: PolicySet,
    router_status: serde_json::Value,
    fingerprint: Fingerprint,
    reloads: u64,
    last_error: Option<String>,
}

fn warn_skipped(set: &PolicySet) {
    for (name, missing) in &set.skipped {
        tracing::warn!(
            policy = name,
            missing = missing.join(", "),
            file = %set.source.display(),
            "policy left out of every chain: a variable it requires is unset"
        );
    }
}

fn problems(e: impl IntoIterator<Item = impl ToString>) -> Problems {
    Problems(e.into_iter().map(|e| e.to_string()).collect())
}

impl PolicyControl {
    /// Loads the policies file named by `cfg` with `vars` for its placeholders.
    pub(crate) fn load(
        cfg: &EdgeConfig,
        vars: HashMap<String, String>,
        registry: &prometheus::Registry,
        redis: Option<Arc<edge_kv::RedisStore>>,
    ) -> anyhow::Result<(Self, Router)> {
        let keys: Vec<PathBuf> = cfg
            .wasm
            .trusted_keys
            .iter()
            .map(|k| cfg.resolve(k))
            .collect();
        let trusted = TrustedKeys::load(&keys).map_err(problems)?;
        let kv = match redis {
            None => edge_policy::Kv::memory(cfg.wasm.kv_max_entries),
            Some(store) => edge_policy::Kv::with_redis_store(cfg.wasm.kv_max_entries, store),
        };
        let host = HostServices {
            kv,
            ..HostServices::local(cfg.wasm.kv_max_entries)
        };
        let engine = edge_wasm::Engine::new(&edge_wasm::EngineConfig {
            max_instances: cfg.wasm.max_instances,
            max_memory: cfg.wasm.memory_limit.as_u64(),
        })?;
        let runtime = PolicyRuntime::new(
            engine,
            cfg.wasm.clone(),
            PolicyMetrics::new(registry)?,
            host,
            trusted,
        )?;
        let path = cfg.resolve(&cfg.policies.file);
        let before = fingerprint_paths(vec![path.clone()]);
        let set = PolicySet::load(&path, &vars).map_err(|e| problems(e.iter()))?;
        warn_skipped(&set);
        let fingerprint = fingerprint_of(&set, &before);
        let router = runtime.load(&set).map_err(problems)?;
        let current = Current {
            fingerprint,
            router_status: status_of(&router),
            set,
            reloads: 0,
            last_error: None,
        };
        Ok((
            Self {
                runtime,
                path,
                vars,
                current: parking_lot::Mutex::new(current),
                pipeline: OnceLock::new(),
                reloading: tokio::sync::Mutex::new(()),
            },
            router,
        ))
    }

    /// Binds the pipeline whose router reloads replace.
    pub(crate) fn attach(&self, pipeline: Arc<Pipeline>) {
        let _ = self.pipeline.set(pipeline);
    }

    /// The current set's file, policy names and route names.
    pub(crate) fn summary(&self) -> serde_json::Value {
        let c = self.current.lock();
        serde_json::json!({
            "file": c.set.source.display().to_string(),
            "policies": c.set.policies.keys().collect::<Vec<_>>(),
            "routes": c.set.routes.iter().map(|r| &r.name).collect::<Vec<_>>(),
            "reloads": c.reloads,
            "last_reload_error": c.last_error,
        })
    }

    /// Versions, canaries and their live statistics (`GET /admin/policies`).
    pub(crate) fn status(&self) -> serde_json::Value {
        let router = self.pipeline.get().map(|p| p.router());
        let mut summary = self.summary();
        summary["deployments"] = match router {
            Some(r) => status_of(&r),
            None => self.current.lock().router_status.clone(),
        };
        summary
    }

    /// Reloads now. On failure nothing changes and every problem is returned.
    pub(crate) async fn reload(&self, why: &str) -> Result<serde_json::Value, Problems> {
        let _one_at_a_time = self.reloading.lock().await;
        // Fingerprints are taken before the files are read: a write that lands while a reload
        // runs is seen by the next poll, never mistaken for what was loaded.
        let before = fingerprint_paths(vec![self.path.clone()]);
        let (path, vars, runtime) = (self.path.clone(), self.vars.clone(), self.runtime.clone());
        // Compiling modules is CPU work: off the request workers.
        let loaded = tokio::task::spawn_blocking(move || {
            let set = PolicySet::load(&path, &vars).map_err(|e| (problems(e.iter()), None))?;
            warn_skipped(&set);
            let fingerprint = fingerprint_of(&set, &before);
            match runtime.load(&set) {
                Ok(router) => Ok((set, router, fingerprint)),
                Err(e) => Err((problems(e), Some(fingerprint))),
            }
        })
        .await
        .unwrap_or_else(|e| Err((problems([format!("reload task failed: {e}")]), None)));
        let mut current = self.current.lock();
        match loaded {
            Ok((set, router, fingerprint)) => {
                current.fingerprint = fingerprint;
                current.router_status = status_of(&router);
                current.set = set;
                current.reloads += 1;
                current.last_error = None;
                if let Some(p) = self.pipeline.get() {
                    p.set_router(router);
                }
                tracing::info!(file = %self.path.display(), trigger = why, "policies reloaded");
                Ok(current.router_status.clone())
            }
            Err((p, attempted)) => {
                // Remember what failed so the watcher does not retry the same broken files, and
                // watch the files the new set names too (a missing module or signature may come).
                let mut watched = fingerprint_paths(current.set.files());
                for entry in attempted.unwrap_or_default() {
                    match watched.iter_mut().find(|(p, _)| *p == entry.0) {
                        Some(w) => *w = entry,
                        None => watched.push(entry),
                    }
                }
                current.fingerprint = watched;
                current.last_error = Some(p.to_string());
                tracing::error!(file = %self.path.display(), trigger = why, problems = %p, "policy reload rejected; the running policies stay");
                Err(p)
            }
        }
    }

    /// Polls the policy files every `interval` and reloads when any changed.
    pub(crate) fn watch(self: Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let (seen, paths): (Fingerprint, Vec<PathBuf>) = {
                    let c = self.current.lock();
                    let paths = c.fingerprint.iter().map(|(p, _)| p.clone()).collect();
                    (c.fingerprint.clone(), paths)
                };
                let changed = seen != fingerprint_paths(paths);
                if changed {
                    let _ = self.reload("file change").await;
                }
            }
        })
    }
}

type Fingerprint = Vec<(PathBuf, Option<(SystemTime, u64)>)>;

/// The set's files as they are now, except the policies file itself, taken (`before`) when it was
/// read.
fn fingerprint_of(set: &PolicySet, before: &Fingerprint) -> Fingerprint {
    let mut fp = fingerprint_paths(set.files());
    for entry in &mut fp {
        if let Some(b) = before.iter().find(|(p, _)| *p == entry.0) {
            *entry = b.clone();
        }
    }
    fp
}

fn fingerprint_paths(paths: Vec<PathBuf>) -> Fingerprint {
    paths
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())));
            (p, meta)
        })
        .collect()
}

fn status_of(router: &Router) -> serde_json::Value {
    router
        .deployments()
        .iter()
        .map(|d| {
            serde_json::json!({
                "name": d.name(),
                "version": format!("sha256:{}", d.baseline().version()),
                "fail": format!("{:?}", d.fail_mode()).to_lowercase(),
                "canary": d.canary(),
            })
        })
        .collect()
}
