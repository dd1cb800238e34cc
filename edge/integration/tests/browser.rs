//! A real browser end to end: headless Chromium (playwright-core) opens two player pages that
//! play the demo stream with hls.js and p2p-media-loader 2.x, with the edge as their WebTorrent
//! tracker (`/ws/tracker`, a JWT in `access_token`). Page A fetches from the edge over HTTP;
//! page B prefers peers and gets segments from A over WebRTC (host candidates on loopback),
//! with the offers and answers relayed by the edge. p2p-media-loader's tracker client is the
//! `bittorrent-tracker` 11.x client (bundled in its ESM build), so this is also that client
//! announcing through the edge from a browser.

use edge_integration::{TestEdge, repo_root};
use serde_json::Value;
use std::time::Duration;

/// The default policies with the VOD route open (pages load the demo without signed URLs).
fn policies(dir: &std::path::Path) -> std::path::PathBuf {
    let auth = repo_root().join("guests/target/wasm32-wasip2/release/auth_jwt.wasm");
    let text = format!(
        "[policies.auth]\nmodule = {auth:?}\nfail = \"closed\"\n\
         headers = [\"authorization\", \"sec-websocket-protocol\"]\n\
         [policies.auth.config]\nsecret = \"${{JWT_SECRET_KEY}}\"\nleeway = \"30\"\n\
         [[routes]]\nname = \"vod\"\npaths = [\"/vod/**\"]\nchain = []\n\
         [[routes]]\nname = \"signaling\"\npaths = [\"/ws/**\"]\nchain = [\"auth\"]\n",
        auth = auth.display().to_string()
    );
    let path = dir.join("policies.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn counter(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browser_pages_share_segments_over_webrtc_with_the_edge_as_tracker() {
    let dir = repo_root().join("edge/integration/tests/browser");
    assert!(
        dir.join("node_modules/p2p-media-loader-hlsjs").is_dir()
            && std::path::Path::new("/usr/bin/chromium").exists(),
        "chromium or the browser test's npm packages are missing: run deploy/dev/setup.sh --test"
    );
    let tmp = tempfile::tempdir().unwrap();
    let edge = TestEdge::start_with_env(
        &policies(tmp.path()),
        "",
        &[("EDGE_ROLES", "edge,signaling")],
    )
    .await
    .expect("edge starts");
    let http = format!("http://{}", edge.edge.addrs().http[0]);
    let tracker = format!(
        "ws://{}/ws/tracker?access_token={}",
        edge.edge.addrs().http[0],
        edge.dev_jwt("viewer")
    );
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("node")
            .arg("p2p.mjs")
            .arg(&http)
            .arg(&tracker)
            .current_dir(&dir)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("p2p.mjs within 120 s")
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "p2p.mjs failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    let (a, b) = (&report["a"], &report["b"]);
    for page in [a, b] {
        assert_eq!(page["mse"], true, "H.264/AAC in MSE: {report}");
        // Played to the end without a fatal error or a stall after the start (one `waiting`
        // before the first frame).
        assert_eq!(
            (&page["ended"], &page["fatal"]),
            (&Value::Bool(true), &Value::Bool(false)),
            "{report}"
        );
        assert!(page["waiting"].as_u64().unwrap() <= 1, "{report}");
        assert!(page["peers"].as_u64().unwrap() >= 1, "{report}");
    }
    assert!(a["http"].as_u64().unwrap() > 300_000, "{report}");
    let p2p = b["p2p"].as_u64().unwrap();
    assert!(p2p > 0, "page B got no byte from page A: {report}");
    eprintln!("P2P bytes on page B: {p2p} (HTTP {})", b["http"]);
    // Both announced through the edge, which relayed the offer and the answer.
    let metrics = edge.metrics().await;
    let announces = counter(
        &metrics,
        r#"edge_signaling_messages_total{protocol="tracker",type="announce"}"#,
    );
    assert!(announces >= 2, "{metrics}");
    for kind in ["offer", "answer"] {
        let series = format!(r#"edge_signaling_relays_total{{kind="{kind}",protocol="tracker"}}"#);
        assert!(counter(&metrics, &series) >= 1, "{series}: {metrics}");
    }
}
