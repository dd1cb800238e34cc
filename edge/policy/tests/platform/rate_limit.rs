use crate::*;
use edge_guest_artifacts::RATE_LIMIT;
use edge_kv::RedisSettings;
use edge_testinfra::Redis;

fn set(dir: &std::path::Path, mode: &str) -> PolicySet {
    policy_set(
        dir,
        &format!(
            r#"
[policies.rl]
module = "{m}"
config = {{ rate = "10/h", burst = "10", key = "client", mode = "{mode}", cas_retries = "1000", "rate.live" = "2/h" }}

[[routes]]
name = "vod"
paths = ["/vod/**"]
chain = ["rl"]
[[routes]]
name = "live"
paths = ["/live/**"]
chain = ["rl"]
"#,
            m = module(RATE_LIMIT)
        ),
    )
}

fn redis_kv(port: u16) -> Kv {
    Kv::with_redis(
        10_000,
        RedisSettings {
            host: "127.0.0.1".into(),
            port,
            password: None,
            db: 0,
            timeout: Duration::from_millis(200),
            connect_timeout: Duration::from_millis(500),
            retry_after: Duration::from_millis(200),
        },
    )
    .unwrap()
}

/// Fires `n` concurrent requests from one client, spread over `routers`; returns how many passed.
async fn hammer(routers: &[Arc<Router>], path: &'static str, n: usize) -> (usize, Vec<Outcome>) {
    let mut tasks = Vec::new();
    for i in 0..n {
        let router = routers[i % routers.len()].clone();
        tasks.push(tokio::spawn(async move {
            run(&router, path, &[], "192.0.2.7").await
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    let passed = outcomes.iter().filter(|o| verdict(o).0 == 200).count();
    (passed, outcomes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_limit_admits_exactly_the_burst_under_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(
        TestClock::at_now(),
        Kv::memory(1000),
        TrustedKeys::default(),
    );
    let router = Arc::new(s.runtime.load(&set(dir.path(), "local")).unwrap());
    let (passed, outcomes) = hammer(std::slice::from_ref(&router), "/vod/seg.ts", 100).await;
    assert_eq!(passed, 10);
    let denied = outcomes.iter().find(|o| verdict(o).0 == 429).unwrap();
    assert_eq!(verdict(denied).1, "rate_limited");
    let retry: u64 = header(denied, "retry-after").unwrap().parse().unwrap();
    assert!((1..=360).contains(&retry), "retry-after {retry}");
    assert_eq!(header(denied, "ratelimit-remaining").as_deref(), Some("0"));
    assert_eq!(header(denied, "ratelimit-limit").as_deref(), Some("10"));
    let allowed = outcomes.iter().find(|o| verdict(o).0 == 200).unwrap();
    assert!(header(allowed, "ratelimit-remaining").is_some());
    // A per-route limit has its own budget.
    let (live, _) = hammer(std::slice::from_ref(&router), "/live/seg.ts", 20).await;
    assert_eq!(live, 2);
}

/// Two edges sharing one Redis give a viewer one budget, not two; when Redis goes away they fall
/// back to local limits (and count it), and keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_limit_is_one_budget_across_edges_and_falls_back_when_redis_is_down() {
    let mut redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let a = setup(
        TestClock::at_now(),
        redis_kv(redis.port()),
        TrustedKeys::default(),
    );
    let b = setup(
        TestClock::at_now(),
        redis_kv(redis.port()),
        TrustedKeys::default(),
    );
    let ra = Arc::new(a.runtime.load(&set(dir.path(), "global")).unwrap());
    let rb = Arc::new(b.runtime.load(&set(dir.path(), "global")).unwrap());
    let (passed, _) = hammer(&[ra.clone(), rb.clone()], "/vod/seg.ts", 120).await;
    assert_eq!(passed, 10, "one budget across both edges");

    redis.stop();
    let (passed, _) = hammer(std::slice::from_ref(&ra), "/vod/other.ts", 30).await;
    assert_eq!(passed, 10, "local fallback still limits");
    assert!(
        metric(
            &a.registry,
            "edge_policy_custom_total",
            &[("policy", "rl"), ("name", "global_fallback")]
        ) >= 1.0
    );
    assert!(
        metric(
            &a.registry,
            "edge_policy_kv_errors_total",
            &[("policy", "rl"), ("kind", "unavailable")]
        ) >= 1.0
    );
}
