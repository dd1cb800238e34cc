//! Policy lifecycle through a running edge: hot reload (admin endpoint and file watch) under load
//! with zero failed requests, a broken reload that changes nothing, status on the admin listener,
//! and an edge whose Redis is down that keeps serving.

use edge_guest_artifacts::{FIXTURE_ALLOW, FIXTURE_HOSTILE, RATE_LIMIT, path};
use edge_integration::{TestEdge, client};
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

const MANIFEST: &str = "/vod/movies/demo/index.m3u8";

fn policies(module: &str) -> String {
    format!(
        "[policies.p]\nmodule = {module:?}\n\n[[routes]]\nname = \"vod\"\npaths = [\"/vod/**\"]\nchain = [\"p\"]\n"
    )
}

async fn admin_json(t: &TestEdge, path: &str) -> serde_json::Value {
    let text = client()
        .get(format!("{}{path}", t.admin()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn sha(file: &std::path::Path) -> String {
    edge_policy::signing::sha256_hex(&std::fs::read(file).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_fails_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("p.wasm");
    std::fs::copy(path(FIXTURE_ALLOW), &module).unwrap();
    let file = dir.path().join("policies.toml");
    std::fs::write(&file, policies("p.wasm")).unwrap();
    let t = TestEdge::start_with_policies(&file, "watch_interval = \"100ms\"\n")
        .await
        .unwrap();
    let url = format!("{}{MANIFEST}", t.http());
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for _ in 0..8 {
        let (url, stop, ok, failed) = (url.clone(), stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let c = client();
            while !stop.load(Ordering::Relaxed) {
                match c.get(&url).send().await {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let c = client();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = c
            .post(format!("{}/admin/policies/reload", t.admin()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    // A new module version lands through the file watcher.
    let tmp = dir.path().join("p.wasm.new");
    std::fs::copy(path(FIXTURE_HOSTILE), &tmp).unwrap();
    std::fs::rename(&tmp, &module).unwrap();
    let want = format!("sha256:{}", sha(&module));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = admin_json(&t, "/admin/policies").await;
        if status["deployments"][0]["version"] == want.as_str() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "watcher never reloaded: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(
        failed, 0,
        "{failed} failed requests during reloads ({ok} ok)"
    );
    assert!(ok > 50, "too little load to mean anything: {ok}");
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(
        r.headers()["x-hostile"],
        "calm",
        "new requests run the new module"
    );
    let status = admin_json(&t, "/admin/policies").await;
    assert!(status["reloads"].as_u64().unwrap() >= 6, "{status}");
    t.edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_reload_is_rejected_and_the_running_policies_stay() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("p.wasm");
    std::fs::copy(path(FIXTURE_ALLOW), &module).unwrap();
    let file = dir.path().join("policies.toml");
    std::fs::write(&file, policies("p.wasm")).unwrap();
    let t = TestEdge::start_with_policies(&file, "watch_interval = \"0s\"\n")
        .await
        .unwrap();
    let version = format!("sha256:{}", sha(&module));
    std::fs::write(&module, b"\0asm\x0d\0\x01\0 definitely not a component").unwrap();
    let c = client();
    let r = c
        .post(format!("{}/admin/policies/reload", t.admin()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let body: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    let problem = body["problems"][0].as_str().unwrap();
    assert!(
        problem.contains("p.wasm") && problem.contains("not a valid WebAssembly component"),
        "{problem}"
    );
    let r = c
        .get(format!("{}{MANIFEST}", t.http()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the old chain still serves");
    let status = admin_json(&t, "/admin/policies").await;
    assert_eq!(status["deployments"][0]["version"], version.as_str());
    assert!(
        status["last_reload_error"]
            .as_str()
            .unwrap()
            .contains("p.wasm"),
        "{status}"
    );
    // A policies file with errors is rejected the same way, each error named.
    std::fs::write(
        &file,
        "[policies.p]\nmodule = \"missing.wasm\"\nfial = \"open\"\n",
    )
    .unwrap();
    let r = c
        .post(format!("{}/admin/policies/reload", t.admin()))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    let problems = body["problems"].to_string();
    assert!(
        problems.contains("policies.p.fial") && problems.contains("missing.wasm"),
        "{problems}"
    );
    let r = c
        .get(format!("{}/admin/policies/reload", t.admin()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    t.edge.shutdown().await;
}

/// Redis configured but down: the global rate limit falls back to local counters and the edge
/// keeps serving; `/health` still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policies.toml");
    std::fs::write(
        &file,
        format!(
            "[policies.rl]\nmodule = {:?}\nconfig = {{ rate = \"100/s\", mode = \"global\", key = \"client\" }}\n\n[[routes]]\nname = \"vod\"\npaths = [\"/vod/**\"]\nchain = [\"rl\"]\n",
            path(RATE_LIMIT).display().to_string()
        ),
    )
    .unwrap();
    let closed = edge_testinfra::free_port();
    let t = TestEdge::start_with_policies(
        &file,
        &format!("[redis]\nhost = \"127.0.0.1\"\nport = {closed}\n"),
    )
    .await
    .unwrap();
    let c = client();
    for _ in 0..5 {
        let r = c
            .get(format!("{}{MANIFEST}", t.http()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers().contains_key("ratelimit-remaining"));
    }
    let metrics = t.metrics().await;
    assert!(
        metrics.contains(r#"edge_policy_custom_total{name="global_fallback",policy="rl"} 5"#),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("edge_policy_custom"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    t.edge.shutdown().await;
}
