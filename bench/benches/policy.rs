//! Per-request cost of the policy runtime: one `decide` through a route's chain, for the
//! signed-URL guest and for the empty (allow-all) guest, with a fresh instance per request
//! (`isolation = "fresh"`) and with pooled instances (`isolation = "pooled"`, the default).
//!
//! `cargo bench -p edge-bench --bench policy`

#![allow(missing_docs, reason = "criterion_group! generates undocumented items")]

use criterion::{Criterion, criterion_group, criterion_main};
use edge_config::{PolicySet, WasmConfig};
use edge_guest_artifacts::{FIXTURE_ALLOW, SIGNED_URL, path};
use edge_policy::{HostServices, Outcome, PolicyMetrics, PolicyRuntime, RequestInfo, TrustedKeys};
use edge_wasm::{Engine, EngineConfig};
use std::{collections::HashMap, net::IpAddr};

const SECRET: &str = "bench-secret-0123456789abcdef0123";

fn router() -> edge_policy::Router {
    let mut text = String::new();
    for (name, module) in [("signed", SIGNED_URL), ("empty", FIXTURE_ALLOW)] {
        for isolation in ["fresh", "pooled"] {
            text += &format!(
                "[policies.{name}-{isolation}]\nmodule = {:?}\nisolation = {isolation:?}\n[policies.{name}-{isolation}.config]\nsecret = {SECRET:?}\n\
                 [[routes]]\nname = \"{name}-{isolation}\"\npaths = [\"/{name}-{isolation}/**\"]\nchain = [\"{name}-{isolation}\"]\n",
                path(module).display().to_string()
            );
        }
    }
    let set = PolicySet::from_toml_str("bench.toml".as_ref(), &text, &HashMap::new()).unwrap();
    let wasm = WasmConfig::default();
    let engine = Engine::new(&EngineConfig {
        max_instances: 256,
        max_memory: wasm.memory_limit.as_u64(),
    })
    .unwrap();
    let runtime = PolicyRuntime::new(
        engine,
        wasm,
        PolicyMetrics::new(&prometheus_registry()).unwrap(),
        HostServices::local(100_000),
        TrustedKeys::default(),
    )
    .unwrap();
    runtime.load(&set).unwrap()
}

fn prometheus_registry() -> edge_policy::Registry {
    edge_policy::Registry::new()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let router = router();
    let headers = http_headers();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let grant = edge_urlsig::Grant {
        expires: now + 3600,
        scope: "/".into(),
        client_addr: None,
    };
    let query = format!(
        "token={}",
        edge_urlsig::Key::new(SECRET.as_bytes()).sign(&grant)
    );
    let mut group = c.benchmark_group("policy_decide");
    for name in [
        "signed-fresh",
        "signed-pooled",
        "empty-fresh",
        "empty-pooled",
    ] {
        let path = format!("/{name}/movies/m1/seg_001.ts");
        let route = router.route(&path).unwrap();
        let info = RequestInfo {
            method: "GET",
            path: &path,
            query: &query,
            headers: &headers,
            client_addr: IpAddr::from([10, 0, 0, 1]),
        };
        assert!(
            matches!(rt.block_on(route.run(&info)), Outcome::Allow { .. }),
            "{name} must allow"
        );
        group.bench_function(name, |b| b.to_async(&rt).iter(|| route.run(&info)));
    }
    group.finish();
}

fn http_headers() -> edge_policy::HeaderMap {
    edge_policy::HeaderMap::new()
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = bench
}
criterion_main!(benches);
