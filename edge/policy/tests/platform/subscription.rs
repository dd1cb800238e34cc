use crate::*;
use edge_guest_artifacts::{AUTH_JWT, SUBSCRIPTION};
use edge_testinfra::UserService;
use jsonwebtoken::{EncodingKey, Header, encode};

const SECRET: &str = "subscription-test-secret-32bytes";

fn token(clock: &TestClock, sub: &str) -> String {
    let claims = serde_json::json!({"sub": sub, "exp": clock.secs() + 3600});
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn set(dir: &std::path::Path, users: &UserService, on_error: &str) -> PolicySet {
    policy_set(
        dir,
        &format!(
            r#"
[policies.auth]
module = "{auth}"
headers = ["authorization"]
config = {{ secret = "{SECRET}" }}

[policies.subscription]
module = "{sub}"
headers = ["authorization"]
outbound = ["{url}"]
outbound_timeout = "300ms"
config = {{ url = "{url}", timeout = "200ms", cache_ttl = "300", inactive_ttl = "60", on_error = "{on_error}", stale_max = "3600", forward_header = "authorization" }}

[[routes]]
name = "vod"
paths = ["/vod/**"]
chain = ["auth", "subscription"]
"#,
            auth = module(AUTH_JWT),
            sub = module(SUBSCRIPTION),
            url = users.url(),
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_checked_cached_and_stale_if_error() {
    let users = UserService::start().await;
    users.set("alice", Some(true));
    users.set("bob", Some(false));
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::at_now();
    let s = setup(clock.clone(), Kv::memory(1000), TrustedKeys::default());
    let router = s.runtime.load(&set(dir.path(), &users, "stale")).unwrap();
    let get = |who: &str| {
        let auth = format!("Bearer {}", token(&clock, who));
        let router = &router;
        async move {
            run(
                router,
                "/vod/m/index.m3u8",
                &[("authorization", &auth)],
                "198.51.100.1",
            )
            .await
        }
    };

    assert_eq!(verdict(&get("alice").await).0, 200);
    assert_eq!(users.hits(), 1);
    assert!(
        users
            .last_authorization()
            .is_some_and(|a| a.starts_with("Bearer "))
    );
    assert_eq!(verdict(&get("alice").await).0, 200, "cached");
    assert_eq!(users.hits(), 1, "the second request is answered from kv");
    assert_eq!(
        verdict(&get("bob").await),
        (403, "no_active_subscription".into())
    );
    assert_eq!(
        verdict(&get("carol").await),
        (403, "no_active_subscription".into()),
        "404 = inactive"
    );

    // The user service goes down: a fresh answer is still served from the cache, a stale one
    // (older than cache_ttl, younger than stale_max) is served instead of failing.
    users.fail(true);
    assert_eq!(verdict(&get("alice").await).0, 200);
    clock.advance(Duration::from_secs(400));
    let before = users.hits();
    assert_eq!(verdict(&get("alice").await).0, 200, "stale-if-error");
    assert!(users.hits() > before, "a stale entry is refreshed first");
    assert_eq!(
        metric(
            &s.registry,
            "edge_policy_custom_total",
            &[("policy", "subscription"), ("name", "stale_served")]
        ),
        1.0
    );
    // Never seen, service down → 503.
    users.set("dave", Some(true));
    assert_eq!(
        verdict(&get("dave").await),
        (503, "subscription_unavailable".into())
    );
    // Slow counts as down: the call is cut at its timeout, well within the host budget.
    users.fail(false);
    users.delay(Duration::from_secs(2));
    let started = std::time::Instant::now();
    assert_eq!(
        verdict(&get("dave").await),
        (503, "subscription_unavailable".into())
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    users.delay(Duration::ZERO);
    assert_eq!(verdict(&get("dave").await).0, 200);
    // Too old for stale_max: fail closed.
    clock.advance(Duration::from_secs(4000));
    users.fail(true);
    assert_eq!(
        verdict(&get("alice").await),
        (503, "subscription_unavailable".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_mode_and_no_subject() {
    let users = UserService::start().await;
    users.set("alice", Some(true));
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::at_now();
    let s = setup(clock.clone(), Kv::memory(1000), TrustedKeys::default());
    let router = s.runtime.load(&set(dir.path(), &users, "closed")).unwrap();
    let auth = format!("Bearer {}", token(&clock, "alice"));
    let headers = [("authorization", auth.as_str())];
    let ask = || run(&router, "/vod/a.ts", &headers, "198.51.100.1");
    assert_eq!(verdict(&ask().await).0, 200);
    clock.advance(Duration::from_secs(400));
    users.fail(true);
    assert_eq!(
        verdict(&ask().await),
        (503, "subscription_unavailable".into())
    );
    // Without a token the chain stops at auth.
    assert_eq!(
        verdict(&run(&router, "/vod/a.ts", &[], "198.51.100.1").await),
        (401, "missing_token".into())
    );
}

/// An outbound call to a host not on the allow-list is refused by the edge, not made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_allow_list_is_enforced() {
    let users = UserService::start().await;
    users.set("alice", Some(true));
    let elsewhere = UserService::start().await;
    elsewhere.set("alice", Some(true));
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::at_now();
    let s = setup(clock.clone(), Kv::memory(1000), TrustedKeys::default());
    // The guest is configured to call `elsewhere`, but only `users` is allowed.
    let text = std::fs::read_to_string(set(dir.path(), &users, "closed").source)
        .unwrap()
        .replace(
            &format!("url = \"{}\"", users.url()),
            &format!("url = \"{}\"", elsewhere.url()),
        );
    let router = s.runtime.load(&policy_set(dir.path(), &text)).unwrap();
    let auth = format!("Bearer {}", token(&clock, "alice"));
    let o = run(
        &router,
        "/vod/a.ts",
        &[("authorization", &auth)],
        "198.51.100.1",
    )
    .await;
    assert_eq!(verdict(&o), (503, "subscription_unavailable".into()));
    assert_eq!(elsewhere.hits(), 0, "no connection was made");
    assert_eq!(
        metric(
            &s.registry,
            "edge_policy_outbound_total",
            &[("policy", "subscription"), ("result", "denied")]
        ),
        1.0
    );
}
