//! Runs fixtures on the real policy runtime with the kit's clock, key-value store and script.

use crate::{
    Error, Result,
    fixture::{self, Fixture},
    golden::Observed,
    host::{FixedClock, ScriptedOutbound},
};
use edge_config::{ConfigError, Errors, PolicySet, WasmConfig};
use edge_kv::Scope;
use edge_policy::{
    HostServices, Kv, PolicyMetrics, PolicyRuntime, Registry, RequestInfo, TrustedKeys,
};
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use toml::{Table, Value};

/// The CPU deadline of one `decide` call under test: far above the edge's default (5 ms), so a
/// result never depends on how busy the machine is. The kit checks decisions, not speed.
pub const DEADLINE: Duration = Duration::from_millis(500);

/// Instances alive at once: one fixture runs at a time.
const MAX_INSTANCES: u32 = 8;

/// The name of the policies file the kit builds in memory.
const POLICIES_FILE: &str = "edge-policy-kit.toml";

/// Keys each in-memory scope holds.
const KV_ENTRIES: usize = 10_000;

/// A module loaded once, ready to run fixtures one after another.
///
/// One runtime (and so one compilation of the module) serves every fixture. Each fixture still
/// starts clean: it is loaded as a new policy, so it gets fresh instances and its own key-value
/// namespace, and the clock and the HTTP script are set to its values.
pub struct Harness {
    runtime: PolicyRuntime,
    clock: Arc<FixedClock>,
    outbound: Arc<ScriptedOutbound>,
    kv: Kv,
    module: PathBuf,
    runs: AtomicUsize,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("module", &self.module)
            .finish_non_exhaustive()
    }
}

impl Harness {
    /// Compiles `module` and checks it loads as a policy, so a module that cannot run is reported
    /// once, before any fixture.
    pub fn new(module: &Path) -> Result<Self> {
        let clock = Arc::new(FixedClock::default());
        let outbound = Arc::new(ScriptedOutbound::default());
        let kv = Kv::memory(KV_ENTRIES);
        let host = HostServices {
            clock: clock.clone(),
            kv: kv.clone(),
            outbound: outbound.clone(),
        };
        let runtime = runtime(host, TrustedKeys::default())?;
        let module = std::path::absolute(module).map_err(Error::io(module))?;
        let set = policy_set(&module, "probe", "fixture", &[], &[])?;
        runtime.load(&set).map_err(Error::Load)?;
        Ok(Self {
            runtime,
            clock,
            outbound,
            kv,
            module,
            runs: AtomicUsize::new(0),
        })
    }

    /// Runs `fixture`: the policy's decision and the outbound requests it made.
    pub async fn run(&self, fixture: &Fixture) -> Result<Observed> {
        // Named after the fixture (guest logs carry it), numbered for a namespace of its own.
        let safe: String = fixture
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let name = format!("{safe}-{}", self.runs.fetch_add(1, Ordering::Relaxed));
        let req = &fixture.request;
        let mut headers: Vec<String> = req.headers.iter().map(|(k, _)| k.clone()).collect();
        headers.dedup();
        let mut origins: Vec<String> = fixture
            .http
            .iter()
            .map(|e| fixture::origin(&e.url))
            .collect();
        origins.sort();
        origins.dedup();
        let mut set = policy_set(&self.module, &name, &req.route, &headers, &origins)?;
        if let Some(spec) = set.policies.get_mut(&name) {
            spec.resolved_config = fixture.config.clone();
        }
        self.clock.set(fixture.now_ms);
        self.outbound.reset(&fixture.http);
        for (key, value) in &fixture.kv {
            for scope in [Scope::Local, Scope::Shared] {
                let full = format!("policy:{name}:{key}");
                self.kv
                    .set(scope, &full, value, Duration::ZERO)
                    .await
                    .map_err(|e| {
                        Error::Fixture(Errors(vec![ConfigError::new(
                            &fixture.path,
                            format!("kv.{key}"),
                            e.to_string(),
                        )]))
                    })?;
            }
        }
        let router = self.runtime.load(&set).map_err(Error::Load)?;
        let mut map = edge_policy::HeaderMap::new();
        for (k, v) in &req.headers {
            if let (Ok(k), Ok(v)) = (
                http::HeaderName::from_bytes(k.as_bytes()),
                http::HeaderValue::from_str(v),
            ) {
                map.append(k, v);
            }
        }
        let info = RequestInfo {
            method: &req.method,
            path: &req.path,
            query: &req.query,
            headers: &map,
            client_addr: req.client_addr,
        };
        let outcome = router.routes()[0]
            .run_with_context(&info, req.context.clone())
            .await;
        Ok(Observed {
            outcome,
            calls: self.outbound.take_calls(),
        })
    }
}

/// A runtime with the kit's limits on its own engine and metrics registry.
pub(crate) fn runtime(host: HostServices, trusted: TrustedKeys) -> Result<PolicyRuntime> {
    let wasm = WasmConfig {
        deadline: DEADLINE,
        max_instances: MAX_INSTANCES,
        ..WasmConfig::default()
    };
    let engine = edge_wasm::Engine::new(&edge_wasm::EngineConfig {
        max_instances: wasm.max_instances,
        max_memory: wasm.memory_limit.as_u64(),
    })
    .map_err(|e| Error::Runtime(e.to_string()))?;
    let metrics =
        PolicyMetrics::new(&Registry::new()).map_err(|e| Error::Runtime(e.to_string()))?;
    PolicyRuntime::new(engine, wasm, metrics, host, trusted)
        .map_err(|e| Error::Runtime(e.to_string()))
}

/// A policies file with one fail-closed policy `name` running `module` on every path, as the
/// edge would read it.
pub(crate) fn policy_set(
    module: &Path,
    name: &str,
    route: &str,
    headers: &[String],
    outbound: &[String],
) -> Result<PolicySet> {
    let strings = |items: &[String]| Value::Array(items.iter().cloned().map(Value::from).collect());
    let mut policy = Table::new();
    policy.insert("module".into(), module.display().to_string().into());
    policy.insert("fail".into(), "closed".into());
    policy.insert("headers".into(), strings(headers));
    policy.insert("outbound".into(), strings(outbound));
    let mut route_table = Table::new();
    route_table.insert("name".into(), route.into());
    route_table.insert("paths".into(), strings(&["/**".to_owned()]));
    route_table.insert("chain".into(), strings(&[name.to_owned()]));
    let mut doc = Table::new();
    doc.insert(
        "policies".into(),
        Value::Table(Table::from_iter([(name.to_owned(), Value::Table(policy))])),
    );
    doc.insert(
        "routes".into(),
        Value::Array(vec![Value::Table(route_table)]),
    );
    let text = toml::to_string(&doc).map_err(|e| Error::Runtime(e.to_string()))?;
    std::fs::metadata(module).map_err(Error::io(module))?;
    // A source without a directory: the module path is used as given, and so named in errors.
    PolicySet::from_toml_str(Path::new(POLICIES_FILE), &text, &HashMap::new())
        .map_err(Error::Fixture)
}
