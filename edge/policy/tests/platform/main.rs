//! The policy platform with the real guests: JWT attack list, subscription against a user
//! service, rate limits under concurrency (local and on a real Redis), canary rollback and
//! shadowing, signed modules and version pins.

mod canary;
mod jwt;
mod rate_limit;
mod subscription;

use edge_config::{PolicySet, WasmConfig};
use edge_policy::{
    Clock, HostServices, Kv, Outcome, PolicyMetrics, PolicyRuntime, RequestInfo, Router,
    TrustedKeys,
};
use edge_wasm::{Engine, EngineConfig};
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

/// Generous: the epoch deadline is wall-clock, and tests share two cores with the build.
const DEADLINE: Duration = Duration::from_millis(200);

/// A clock tests move by hand.
pub(crate) struct TestClock(pub(crate) AtomicU64);

impl TestClock {
    pub(crate) fn at_now() -> Arc<Self> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        Arc::new(Self(AtomicU64::new(now)))
    }

    pub(crate) fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }

    pub(crate) fn secs(&self) -> u64 {
        self.0.load(Ordering::SeqCst) / 1000
    }
}

impl Clock for TestClock {
    fn now_millis(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

pub(crate) struct Setup {
    pub(crate) runtime: PolicyRuntime,
    pub(crate) registry: prometheus::Registry,
}

pub(crate) fn setup(clock: Arc<dyn Clock>, kv: Kv, trusted: TrustedKeys) -> Setup {
    let registry = prometheus::Registry::new();
    let wasm = WasmConfig {
        deadline: DEADLINE,
        ..WasmConfig::default()
    };
    let engine = Engine::new(&EngineConfig {
        max_instances: 128,
        max_memory: wasm.memory_limit.as_u64(),
    })
    .unwrap();
    let runtime = PolicyRuntime::new(
        engine,
        wasm,
        PolicyMetrics::new(&registry).unwrap(),
        HostServices {
            clock,
            kv,
            ..HostServices::local(10_000)
        },
        trusted,
    )
    .unwrap();
    Setup { runtime, registry }
}

/// A policies file written into `dir` (so relative `config_files` resolve there).
pub(crate) fn policy_set(dir: &std::path::Path, text: &str) -> PolicySet {
    let file = dir.join("policies.toml");
    std::fs::write(&file, text).unwrap();
    PolicySet::load(&file, &HashMap::new()).unwrap_or_else(|e| panic!("{e}"))
}

pub(crate) fn module(guest: &str) -> String {
    edge_guest_artifacts::path(guest).display().to_string()
}

pub(crate) async fn run(
    router: &Router,
    path: &str,
    headers: &[(&str, &str)],
    client: &str,
) -> Outcome {
    let mut map = http::HeaderMap::new();
    for (k, v) in headers {
        map.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let req = RequestInfo {
        method: "GET",
        path,
        query,
        headers: &map,
        client_addr: client.parse::<IpAddr>().unwrap(),
    };
    router
        .route(path)
        .unwrap_or_else(|| panic!("no route for {path}"))
        .run(&req)
        .await
}

/// (status, reason) of a denial, or (200, "") for an allow.
pub(crate) fn verdict(o: &Outcome) -> (u16, String) {
    match o {
        Outcome::Allow { .. } => (200, String::new()),
        Outcome::Deny { status, reason, .. } => (*status, reason.clone()),
        Outcome::Redirect { status, .. } => (*status, "redirect".into()),
    }
}

pub(crate) fn context(o: &Outcome, key: &str) -> Option<String> {
    match o {
        Outcome::Allow { context, .. } => context
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone()),
        _ => None,
    }
}

pub(crate) fn header(o: &Outcome, name: &str) -> Option<String> {
    let list = match o {
        Outcome::Allow {
            response_headers, ..
        } => response_headers,
        Outcome::Deny { headers, .. } => headers,
        Outcome::Redirect { .. } => return None,
    };
    list.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

/// The value of a Prometheus counter or gauge with exactly these labels (0 when absent).
pub(crate) fn metric(registry: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    for family in registry.gather() {
        if family.name() != name {
            continue;
        }
        for m in family.get_metric() {
            let matches = labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            });
            if matches {
                return match family.get_field_type() {
                    prometheus::proto::MetricType::COUNTER => m.get_counter().get_value(),
                    _ => m.get_gauge().get_value(),
                };
            }
        }
    }
    0.0
}
