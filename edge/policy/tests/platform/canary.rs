use crate::*;
use edge_guest_artifacts::{FIXTURE_ALLOW, FIXTURE_HOSTILE, SIGNED_URL};

fn canary_set(dir: &std::path::Path, candidate: &str, mode: &str, weight: u8) -> PolicySet {
    policy_set(
        dir,
        &format!(
            r#"
[policies.p]
module = "{base}"
[policies.p.config]
secret = "a-secret-of-at-least-16-bytes"
[policies.p.canary]
module = "{candidate}"
weight = {weight}
sticky = "client"
mode = "{mode}"
[policies.p.canary.rollback]
window = "60s"
min_requests = 5

[[routes]]
name = "r"
paths = ["/**"]
chain = ["p"]
"#,
            base = module(FIXTURE_ALLOW),
        ),
    )
}

/// A candidate that traps is rolled back automatically: viewers sampled onto it get the policy's
/// fail-mode answer until then, everyone gets the baseline afterwards, and a reload with the same
/// candidate does not bring it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trapping_canary_is_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(TestClock::at_now(), Kv::memory(100), TrustedKeys::default());
    let set = canary_set(dir.path(), &module(FIXTURE_HOSTILE), "enforce", 50);
    let router = s.runtime.load(&set).unwrap();
    let mut failed = 0;
    let mut sampled_clients = 0;
    for i in 0..200 {
        let client = format!("10.0.{}.{}", i / 250, i % 250);
        let o = run(&router, "/vod/panic", &[], &client).await;
        match verdict(&o) {
            (200, _) => {}
            (503, reason) => {
                assert_eq!(reason, "policy_trap");
                failed += 1;
                sampled_clients += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        failed, 5,
        "exactly min_requests trapping calls before the rollback"
    );
    assert!(sampled_clients > 0);
    let status = router.deployments()[0].canary().unwrap();
    assert_eq!(status.state, "rolled_back", "{status:?}");
    assert!(
        status.reason.as_deref().unwrap().starts_with("trap_rate"),
        "{status:?}"
    );
    assert_eq!(
        metric(&s.registry, "edge_policy_canary_state", &[("policy", "p")]),
        3.0
    );
    assert_eq!(
        metric(
            &s.registry,
            "edge_policy_canary_rollbacks_total",
            &[("policy", "p"), ("reason", "trap_rate")]
        ),
        1.0
    );
    let router = s.runtime.load(&set).unwrap();
    assert_eq!(
        router.deployments()[0].canary().unwrap().state,
        "rolled_back"
    );
}

/// A healthy candidate keeps its share: sticky per viewer, both versions serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_canary_stays_and_is_sticky() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(TestClock::at_now(), Kv::memory(100), TrustedKeys::default());
    let router = s
        .runtime
        .load(&canary_set(
            dir.path(),
            &module(FIXTURE_HOSTILE),
            "enforce",
            30,
        ))
        .unwrap();
    for i in 0..100 {
        let o = run(&router, "/vod/calm", &[], &format!("10.1.0.{i}")).await;
        assert_eq!(verdict(&o).0, 200);
    }
    let status = router.deployments()[0].canary().unwrap();
    assert_eq!(status.state, "active");
    let cand = status.candidate.calls;
    assert!((15..=45).contains(&cand), "30% of 100 viewers, got {cand}");
    for _ in 0..10 {
        run(&router, "/vod/calm", &[], "10.1.0.1").await;
    }
    let after = router.deployments()[0].canary().unwrap().candidate.calls;
    assert!(
        after == cand || after == cand + 10,
        "one viewer stays on one side"
    );
}

/// Shadow mode: viewers always get the baseline's answer; the candidate's differing verdicts are
/// counted with their reason codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_counts_differences_without_enforcing() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(TestClock::at_now(), Kv::memory(100), TrustedKeys::default());
    let router = s
        .runtime
        .load(&canary_set(dir.path(), &module(SIGNED_URL), "shadow", 100))
        .unwrap();
    for i in 0..20 {
        let o = run(&router, "/vod/a.m3u8", &[], &format!("10.2.0.{i}")).await;
        assert_eq!(verdict(&o).0, 200, "the baseline decides");
    }
    let labels = [
        ("policy", "p"),
        ("baseline", "allow"),
        ("candidate", "deny:missing_token"),
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metric(&s.registry, "edge_policy_shadow_diff_total", &labels) < 20.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "shadow calls not counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        metric(&s.registry, "edge_policy_canary_state", &[("policy", "p")]),
        2.0
    );
}

/// Signed modules and version pins are checked at load, with messages that say what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_and_version_pins() {
    use edge_policy::signing;
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = signing::generate_key();
    std::fs::write(dir.path().join("k.pem"), private).unwrap();
    std::fs::write(dir.path().join("k.pub"), public).unwrap();
    let wasm = dir.path().join("allow.wasm");
    std::fs::copy(module(FIXTURE_ALLOW), &wasm).unwrap();
    let text = "[policies.p]\nmodule = \"allow.wasm\"\n[[routes]]\nname = \"r\"\npaths = [\"/**\"]\nchain = [\"p\"]\n";
    let trusted = TrustedKeys::load(&[dir.path().join("k.pub")]).unwrap();
    let s = setup(TestClock::at_now(), Kv::memory(10), trusted);
    let errors = s.runtime.load(&policy_set(dir.path(), text)).unwrap_err();
    assert!(
        errors[0].to_string().contains("unsigned module refused"),
        "{}",
        errors[0]
    );
    let bytes = std::fs::read(&wasm).unwrap();
    let sig = signing::sign(&dir.path().join("k.pem"), &bytes).unwrap();
    std::fs::write(edge_config::signature_path(&wasm), sig).unwrap();
    let router = s.runtime.load(&policy_set(dir.path(), text)).unwrap();
    let version = signing::sha256_hex(&bytes);
    assert_eq!(router.deployments()[0].baseline().version(), version);

    let pinned = text.replace(
        "module = \"allow.wasm\"",
        &format!(
            "module = \"allow.wasm\"\nversion = \"sha256:{}\"",
            &version[..32]
        ),
    );
    s.runtime.load(&policy_set(dir.path(), &pinned)).unwrap();
    let wrong = pinned.replace(&version[..32], "0123456789abcdef0123456789abcdef");
    let errors = s.runtime.load(&policy_set(dir.path(), &wrong)).unwrap_err();
    assert!(
        errors[0]
            .to_string()
            .contains("pins version sha256:0123456789abcdef0123456789abcdef"),
        "{}",
        errors[0]
    );
}

/// A shadowed (or canaried) candidate keeps its state apart: it cannot spend the baseline's
/// rate-limit budget or write the baseline's caches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candidates_have_their_own_kv_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(TestClock::at_now(), Kv::memory(100), TrustedKeys::default());
    let rl = module(edge_guest_artifacts::RATE_LIMIT);
    let text = format!(
        "[policies.p]\nmodule = {rl:?}\nconfig = {{ rate = \"5/h\", key = \"client\" }}\n\
         [policies.p.canary]\nmodule = {rl:?}\nweight = 100\nmode = \"shadow\"\n\
         [[routes]]\nname = \"r\"\npaths = [\"/**\"]\nchain = [\"p\"]\n"
    );
    let router = s.runtime.load(&policy_set(dir.path(), &text)).unwrap();
    let mut passed = 0;
    for _ in 0..20 {
        if verdict(&run(&router, "/vod/a.ts", &[], "192.0.2.1").await).0 == 200 {
            passed += 1;
        }
        // Let the shadow call finish before the next request, as a worst case for sharing.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(passed, 5, "the baseline's budget is its own");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metric(
        &s.registry,
        "edge_policy_shadow_total",
        &[("policy", "p"), ("result", "same")],
    ) < 20.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the shadow saw another budget"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
