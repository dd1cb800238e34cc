//! The policy runtime against real guest components: the signed-URL policy and the hostile
//! fixture (loops, unbounded allocation, panics, invalid decisions).

use edge_config::{PolicySet, WasmConfig};
use edge_guest_artifacts::{FIXTURE_HOSTILE, SIGNED_URL, path};
use edge_policy::{HostServices, Outcome, PolicyMetrics, PolicyRuntime, RequestInfo, TrustedKeys};
use edge_wasm::{Engine, EngineConfig};
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

const SECRET: &str = "test-secret-0123456789abcdef";

/// Wall-clock budget per call: generous, since tests share two cores with each other.
const DEADLINE: Duration = Duration::from_millis(50);

fn runtime(registry: &prometheus::Registry) -> PolicyRuntime {
    let wasm = WasmConfig {
        deadline: DEADLINE,
        ..WasmConfig::default()
    };
    let engine = Engine::new(&EngineConfig {
        max_instances: 64,
        max_memory: wasm.memory_limit.as_u64(),
    })
    .unwrap();
    PolicyRuntime::new(
        engine,
        wasm,
        PolicyMetrics::new(registry).unwrap(),
        HostServices::local(1000),
        TrustedKeys::default(),
    )
    .unwrap()
}

fn policies(extra: &str) -> PolicySet {
    let text = format!(
        r#"
[policies.signed-url]
module = {signed:?}
[policies.signed-url.config]
secret = "${{SECRET}}"

[policies.hostile]
module = {hostile:?}
memory_limit = "4 MiB"

[policies.hostile-open]
module = {hostile:?}
fail = "open"

[[routes]]
name = "vod"
paths = ["/vod/**"]
chain = ["signed-url"]

[[routes]]
name = "hostile"
paths = ["/hostile/**"]
chain = ["hostile"]

[[routes]]
name = "open"
paths = ["/open/**"]
chain = ["hostile-open"]
{extra}
"#,
        signed = path(SIGNED_URL).display().to_string(),
        hostile = path(FIXTURE_HOSTILE).display().to_string(),
    );
    let vars = HashMap::from([("SECRET".to_string(), SECRET.to_string())]);
    PolicySet::from_toml_str("policies.toml".as_ref(), &text, &vars).unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn run(router: &edge_policy::Router, path: &str, query: &str) -> Outcome {
    let headers = http::HeaderMap::new();
    let req = RequestInfo {
        method: "GET",
        path,
        query,
        headers: &headers,
        client_addr: IpAddr::from([127, 0, 0, 1]),
    };
    router.route(path).expect("route").run(&req).await
}

fn token(scope: &str, expires: u64) -> String {
    edge_urlsig::Key::new(SECRET.as_bytes()).sign(&edge_urlsig::Grant {
        expires,
        scope: scope.into(),
        client_addr: None,
    })
}

fn denied(o: &Outcome) -> (u16, &str) {
    match o {
        Outcome::Deny { status, reason, .. } => (*status, reason.as_str()),
        other => panic!("expected a deny, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_url_policy() {
    let registry = prometheus::Registry::new();
    let router = runtime(&registry).load(&policies("")).unwrap();
    let good = token("/vod/movies/m1/", now() + 60);
    match run(
        &router,
        "/vod/movies/m1/v0/seg_000.ts",
        &format!("token={good}"),
    )
    .await
    {
        Outcome::Allow {
            propagate_query, ..
        } => assert_eq!(propagate_query, vec![("token".to_string(), good.clone())]),
        other => panic!("{other:?}"),
    }
    let cases = [
        ("", "missing_token"),
        ("token=", "missing_token"),
        ("token=garbage", "malformed_token"),
        ("token=%zz%%", "malformed_token"),
        (&format!("token={good}&token=other"), "malformed_token"),
        (
            &format!("token={}", token("/vod/movies/m1/", now() - 1)),
            "expired_token",
        ),
        (
            &format!("token={}", good.replacen('.', "9.", 1)),
            "bad_signature",
        ),
        (
            &format!("token={}", token("/vod/movies/m2/", now() + 60)),
            "scope_mismatch",
        ),
    ];
    for (query, reason) in cases {
        assert_eq!(
            denied(&run(&router, "/vod/movies/m1/index.m3u8", query).await),
            (403, reason),
            "query {query:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_guests_are_contained() {
    let registry = prometheus::Registry::new();
    let router = runtime(&registry).load(&policies("")).unwrap();

    let start = Instant::now();
    assert_eq!(
        denied(&run(&router, "/hostile/loop", "").await),
        (503, "policy_timeout")
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "a looping guest was cut off late: {:?}",
        start.elapsed()
    );
    assert_eq!(
        denied(&run(&router, "/hostile/oom", "").await),
        (503, "policy_memory")
    );
    assert_eq!(
        denied(&run(&router, "/hostile/panic", "").await),
        (503, "policy_trap")
    );
    let start = Instant::now();
    assert_eq!(
        denied(&run(&router, "/hostile/sleep", "").await),
        (503, "policy_timeout")
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "a sleeping guest was cut off late: {:?}",
        start.elapsed()
    );
    assert_eq!(
        denied(&run(&router, "/hostile/header-flood", "").await),
        (503, "policy_invalid")
    );
    assert_eq!(
        denied(&run(&router, "/hostile/bad-status", "").await),
        (503, "policy_invalid")
    );
    // A flood of guest logs is capped, and the call still succeeds.
    assert!(matches!(
        run(&router, "/hostile/log-flood", "").await,
        Outcome::Allow { .. }
    ));

    // While one request loops, others on the same policy are served.
    let looping = {
        let r = &router;
        async move { run(r, "/hostile/loop", "").await }
    };
    let calm = async {
        let mut n = 0;
        for _ in 0..20 {
            if let Outcome::Allow {
                response_headers, ..
            } = run(&router, "/hostile/calm", "").await
            {
                assert_eq!(
                    response_headers,
                    vec![("x-hostile".to_string(), "calm".to_string())]
                );
                n += 1;
            }
        }
        n
    };
    let (_, served) = tokio::join!(looping, calm);
    assert_eq!(served, 20);

    // Fail open lets the request through.
    assert!(matches!(
        run(&router, "/open/panic", "").await,
        Outcome::Allow { .. }
    ));

    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    for want in [
        r#"edge_policy_failures_total{kind="timeout",policy="hostile"} 3"#,
        r#"edge_policy_failures_total{kind="memory",policy="hostile"} 1"#,
        r#"edge_policy_failures_total{kind="trap",policy="hostile"} 1"#,
        r#"edge_policy_decisions_total{outcome="fail_open",policy="hostile-open"} 1"#,
        r#"edge_policy_guest_dropped_total{policy="hostile"}"#,
    ] {
        assert!(text.contains(want), "metrics lack {want}:\n{text}");
    }
}

#[tokio::test]
async fn invalid_modules_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("not-a-component.wasm");
    std::fs::write(&bad, b"definitely not wasm").unwrap();
    let text = format!(
        "[policies.broken]\nmodule = {:?}\n[[routes]]\nname = \"r\"\npaths = [\"/**\"]\nchain = [\"broken\"]\n",
        bad.display().to_string()
    );
    let set = PolicySet::from_toml_str("p.toml".as_ref(), &text, &HashMap::new()).unwrap();
    let errors = runtime(&prometheus::Registry::new())
        .load(&set)
        .unwrap_err();
    let msg = errors[0].to_string();
    assert!(
        msg.contains("not-a-component.wasm") && msg.contains("not a valid WebAssembly component"),
        "{msg}"
    );
}

/// A clock the test moves.
struct TestClock(std::sync::atomic::AtomicU64);

impl edge_policy::Clock for TestClock {
    fn now_millis(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The guest remembers tokens it authenticated; expiry and client binding must still hold on
/// every later request that hits that memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memoised_tokens_still_expire_and_stay_bound() {
    let clock = Arc::new(TestClock(std::sync::atomic::AtomicU64::new(1_000_000)));
    let registry = prometheus::Registry::new();
    let wasm = WasmConfig {
        deadline: DEADLINE,
        ..WasmConfig::default()
    };
    let engine = Engine::new(&EngineConfig {
        max_instances: 8,
        max_memory: wasm.memory_limit.as_u64(),
    })
    .unwrap();
    let rt = PolicyRuntime::new(
        engine,
        wasm,
        PolicyMetrics::new(&registry).unwrap(),
        HostServices {
            clock: clock.clone(),
            ..HostServices::local(1000)
        },
        TrustedKeys::default(),
    )
    .unwrap();
    let router = rt.load(&policies("")).unwrap();
    let key = edge_urlsig::Key::new(SECRET.as_bytes());
    let grant = |client: Option<&str>| edge_urlsig::Grant {
        expires: 1_060,
        scope: "/vod/m/".into(),
        client_addr: client.map(String::from),
    };
    let headers = http::HeaderMap::new();
    let ask = |query: String, client: [u8; 4]| {
        let (router, headers) = (&router, &headers);
        async move {
            let req = RequestInfo {
                method: "GET",
                path: "/vod/m/seg.ts",
                query: &query,
                headers,
                client_addr: IpAddr::from(client),
            };
            router.route("/vod/m/seg.ts").unwrap().run(&req).await
        }
    };
    let open = format!("token={}", key.sign(&grant(None)));
    let bound = format!("token={}", key.sign(&grant(Some("10.0.0.1"))));
    for _ in 0..3 {
        assert!(matches!(
            ask(open.clone(), [10, 0, 0, 9]).await,
            Outcome::Allow { .. }
        ));
        assert!(matches!(
            ask(bound.clone(), [10, 0, 0, 1]).await,
            Outcome::Allow { .. }
        ));
        assert_eq!(
            denied(&ask(bound.clone(), [10, 0, 0, 2]).await),
            (403, "bad_signature")
        );
    }
    clock
        .0
        .store(1_060_000, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        denied(&ask(open, [10, 0, 0, 9]).await),
        (403, "expired_token")
    );
    assert_eq!(
        denied(&ask(bound, [10, 0, 0, 1]).await),
        (403, "expired_token")
    );
}
