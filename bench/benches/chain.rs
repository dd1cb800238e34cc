//! Per-request cost of the full policy chain of a subscription platform:
//! auth-jwt (HS256) → subscription (answer cached in kv) → rate-limit (local GCRA) → signed-url,
//! all pooled, through one route. Criterion reports the mean/median of a viewer's repeated requests
//! (same token: the JWT guest remembers verified tokens) and of requests that each bring a new
//! token (signature verified every time); a second pass times 100 000 single requests and prints
//! p50/p99, which criterion does not.
//!
//! `cargo bench -p edge-bench --bench chain`   (goal: median ≤ 15 µs, p99 ≤ 50 µs)
//! `CHAIN_PREFIXES=1 cargo bench -p edge-bench --bench chain` also times each prefix of the chain.

#![allow(missing_docs, reason = "criterion_group! generates undocumented items")]

use criterion::{Criterion, criterion_group, criterion_main};
use edge_config::{PolicySet, WasmConfig};
use edge_guest_artifacts::{AUTH_JWT, RATE_LIMIT, SIGNED_URL, SUBSCRIPTION, path};
use edge_policy::{HostServices, Outcome, PolicyMetrics, PolicyRuntime, RequestInfo, TrustedKeys};
use edge_wasm::{Engine, EngineConfig};
use std::{collections::HashMap, net::IpAddr, time::Instant};

const URL_SECRET: &str = "bench-secret-0123456789abcdef0123";
const JWT_SECRET: &str = "bench-jwt-secret-0123456789abcdef";

fn set(users: &str) -> PolicySet {
    let text = format!(
        r#"
[policies.auth]
module = {auth:?}
headers = ["authorization"]
config = {{ secret = "{JWT_SECRET}" }}
[policies.subscription]
module = {sub:?}
outbound = ["{users}"]
config = {{ url = "{users}" }}
[policies.rate-limit]
module = {rl:?}
config = {{ rate = "1000000/s", burst = "1000000" }}
[policies.signed-url]
module = {signed:?}
config = {{ secret = "{URL_SECRET}" }}

[[routes]]
name = "vod"
paths = ["/vod/**"]
chain = ["auth", "subscription", "rate-limit", "signed-url"]

# Prefixes of the chain, to see what each policy adds.
[[routes]]
name = "auth"
paths = ["/1/**"]
chain = ["auth"]
[[routes]]
name = "auth-sub"
paths = ["/2/**"]
chain = ["auth", "subscription"]
[[routes]]
name = "auth-sub-rl"
paths = ["/3/**"]
chain = ["auth", "subscription", "rate-limit"]
"#,
        auth = path(AUTH_JWT).display().to_string(),
        sub = path(SUBSCRIPTION).display().to_string(),
        rl = path(RATE_LIMIT).display().to_string(),
        signed = path(SIGNED_URL).display().to_string(),
    );
    PolicySet::from_toml_str("chain.toml".as_ref(), &text, &HashMap::new()).unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let users = rt.block_on(edge_testinfra::UserService::start());
    users.set("viewer-1", Some(true));
    let wasm = WasmConfig::default();
    let engine = Engine::new(&EngineConfig {
        max_instances: 64,
        max_memory: wasm.memory_limit.as_u64(),
    })
    .unwrap();
    let runtime = PolicyRuntime::new(
        engine,
        wasm,
        PolicyMetrics::new(&edge_policy::Registry::new()).unwrap(),
        HostServices::local(100_000),
        TrustedKeys::default(),
    )
    .unwrap();
    let router = runtime.load(&set(&users.url())).unwrap();

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let jwt = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": "viewer-1", "exp": now + 3600}),
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap();
    let mut headers = edge_policy::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {jwt}").parse().unwrap());
    let grant = edge_urlsig::Grant {
        expires: now + 3600,
        scope: "/vod/".into(),
        client_addr: None,
    };
    let query = format!(
        "token={}",
        edge_urlsig::Key::new(URL_SECRET.as_bytes()).sign(&grant)
    );
    let path = "/vod/movies/m1/seg_001.ts";
    let info = RequestInfo {
        method: "GET",
        path,
        query: &query,
        headers: &headers,
        client_addr: IpAddr::from([10, 0, 0, 1]),
    };
    let route = router.route(path).unwrap();
    let first = rt.block_on(route.run(&info));
    assert!(matches!(first, Outcome::Allow { .. }), "{first:?}");
    assert_eq!(users.hits(), 1);

    c.bench_function("policy_chain/jwt-subscription-ratelimit-signedurl", |b| {
        b.to_async(&rt).iter(|| route.run(&info))
    });
    // A new viewer token on every request (256 distinct tokens, more than an instance remembers):
    // the cost of the first request of a session, signature verification included.
    let cold: Vec<edge_policy::HeaderMap> = (0..256)
        .map(|i| {
            let jwt = jsonwebtoken::encode(
                &jsonwebtoken::Header::default(),
                &serde_json::json!({"sub": "viewer-1", "exp": now + 3600, "jti": i}),
                &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
            )
            .unwrap();
            let mut h = edge_policy::HeaderMap::new();
            h.insert("authorization", format!("Bearer {jwt}").parse().unwrap());
            h
        })
        .collect();
    let mut next = 0usize;
    c.bench_function(
        "policy_chain/jwt-subscription-ratelimit-signedurl/new-token",
        |b| {
            b.to_async(&rt).iter(|| {
                next = next.wrapping_add(1);
                let info = RequestInfo {
                    headers: &cold[next % cold.len()],
                    ..info.clone()
                };
                async move { route.run(&info).await }
            })
        },
    );
    if std::env::var_os("CHAIN_PREFIXES").is_some() {
        for (prefix, name) in [
            ("/1", "jwt"),
            ("/2", "jwt-subscription"),
            ("/3", "jwt-subscription-ratelimit"),
        ] {
            let p = format!("{prefix}/movies/m1/seg_001.ts");
            let r = router.route(&p).unwrap();
            let i = RequestInfo {
                path: &p,
                ..info.clone()
            };
            assert!(matches!(rt.block_on(r.run(&i)), Outcome::Allow { .. }));
            c.bench_function(&format!("policy_chain/{name}"), |b| {
                b.to_async(&rt).iter(|| r.run(&i))
            });
        }
    }

    let mut samples: Vec<u128> = (0..100_000)
        .map(|_| {
            let t = Instant::now();
            let o = rt.block_on(route.run(&info));
            let ns = t.elapsed().as_nanos();
            debug_assert!(matches!(o, Outcome::Allow { .. }));
            ns
        })
        .collect();
    samples.sort_unstable();
    let pct = |p: f64| {
        samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)] as f64 / 1000.0
    };
    println!(
        "policy_chain single requests (n={}): p50 {:.2} µs, p99 {:.2} µs, p99.9 {:.2} µs; user-service calls {}",
        samples.len(),
        pct(0.50),
        pct(0.99),
        pct(0.999),
        users.hits()
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = bench
}
criterion_main!(benches);
