//! The signaling endpoints' WebSocket layer against a conformance suite nobody here wrote: the
//! Autobahn test suite's fuzzing client (`wstest -m fuzzingclient`, autobahntestsuite 0.8.2,
//! installed by deploy/dev/wstest.sh) on a whole edge with the repository's default policies.
//!
//! The two signaling protocols answer JSON, not echoes, so the suite talks to
//! `signaling.echo_path`: the same handshake (policy chain, token, Origin), session (frame and
//! message limits, rate, pings, close codes, drain) and outbox as `/ws/tracker` and
//! `/ws/signaling`, with an engine that sends every message back. Every core case (framing,
//! pings and pongs, reserved bits, opcodes, fragmentation, UTF-8, close handling, auto-
//! fragmentation: sections 1-7 and 10) must pass: OK, NON-STRICT or INFORMATIONAL. Left out:
//! 9 (performance, up to 16 MiB messages: beyond `signaling.max_message`, refused by design),
//! 12 and 13 (permessage-deflate, which the endpoints do not offer).

use edge_integration::{TestEdge, repo_root};
use serde_json::Value;
use std::{collections::BTreeMap, process::Command};

/// The `wstest` wrapper (installed now when it is not yet).
fn wstest() -> String {
    let out = Command::new("bash")
        .arg(repo_root().join("deploy/dev/wstest.sh"))
        .arg("path")
        .output()
        .expect("bash runs deploy/dev/wstest.sh");
    assert!(
        out.status.success(),
        "deploy/dev/wstest.sh path failed (deploy/dev/setup.sh --test installs it):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signaling_websocket_layer_passes_the_autobahn_core_cases() {
    let wstest = wstest();
    let edge = TestEdge::start_with_env(
        &repo_root().join("policies/default.toml"),
        "[signaling]\necho_path = \"/ws/echo\"\n",
        &[("EDGE_ROLES", "edge,signaling")],
    )
    .await
    .expect("edge starts");
    let work = tempfile::tempdir().unwrap();
    let url = format!(
        "ws://{}/ws/echo?access_token={}",
        edge.edge.addrs().http[0],
        edge.dev_jwt("autobahn")
    );
    let spec = serde_json::json!({
        "outdir": work.path().join("reports").display().to_string(),
        "servers": [{ "agent": "edge", "url": url }],
        "cases": ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*"],
        "exclude-cases": ["9.*", "12.*", "13.*"],
        "exclude-agent-cases": {},
    });
    let spec_path = work.path().join("fuzzingclient.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let run = tokio::process::Command::new(&wstest)
        .args(["-m", "fuzzingclient", "-s"])
        .arg(&spec_path)
        .current_dir(work.path())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(600), run)
        .await
        .expect("the suite finishes within 10 minutes")
        .expect("wstest runs");
    let index = work.path().join("reports/index.json");
    let text = std::fs::read_to_string(&index).unwrap_or_else(|e| {
        panic!(
            "no {} ({e}); wstest said:\n{}\n{}",
            index.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let index: Value = serde_json::from_str(&text).unwrap();
    let cases = index["edge"].as_object().expect("results for agent `edge`");
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    let (mut failed, mut not_ok) = (Vec::new(), Vec::new());
    for (case, result) in cases {
        let behavior = result["behavior"].as_str().unwrap_or("?");
        let close = result["behaviorClose"].as_str().unwrap_or("?");
        *tally.entry(behavior.to_owned()).or_default() += 1;
        if behavior != "OK" {
            not_ok.push(format!("{case} {behavior}"));
        }
        let passes = matches!(behavior, "OK" | "NON-STRICT" | "INFORMATIONAL")
            && matches!(close, "OK" | "NON-STRICT" | "INFORMATIONAL");
        if !passes {
            failed.push(format!(
                "{case}: {behavior} / close {close} (remote close code {})",
                result["remoteCloseCode"]
            ));
        }
    }
    eprintln!(
        "autobahn fuzzingclient: {} cases, {tally:?}; not OK: {}",
        cases.len(),
        not_ok.join(", ")
    );
    // Sections 1-7 and 10 of autobahntestsuite 0.8.2 hold 247 cases.
    assert!(cases.len() >= 247, "only {} cases ran", cases.len());
    assert!(failed.is_empty(), "failed cases:\n{}", failed.join("\n"));
}
