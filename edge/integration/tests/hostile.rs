//! A hostile policy behind the real listener: cut off at its deadline or memory cap, answered
//! with its fail mode, while every other viewer is served.

use edge_guest_artifacts::{FIXTURE_HOSTILE, path};
use edge_integration::{TestEdge, client, repo_root};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_guest_does_not_hurt_other_viewers() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies.toml");
    let signed = repo_root().join("guests/target/wasm32-wasip2/release/signed_url.wasm");
    std::fs::write(
        &policies,
        format!(
            "[policies.hostile]\nmodule = {:?}\nmemory_limit = \"4 MiB\"\n\
             [policies.signed-url]\nmodule = {:?}\n[policies.signed-url.config]\nsecret = \"${{SIGNED_URL_SECRET}}\"\n\
             [[routes]]\nname = \"hostile\"\npaths = [\"/vod/movies/demo/v0/**\"]\nchain = [\"hostile\"]\n\
             [[routes]]\nname = \"vod\"\npaths = [\"/vod/**\"]\nchain = [\"signed-url\"]\n",
            path(FIXTURE_HOSTILE).display().to_string(),
            signed.display().to_string(),
        ),
    )
    .unwrap();
    let t = TestEdge::start_with_policies(&policies, "").await.unwrap();
    let c = client();
    let base = t.http();
    let attack = |what: &'static str| {
        let (c, base) = (c.clone(), base.clone());
        async move {
            let start = Instant::now();
            let r = c
                .get(format!("{base}/vod/movies/demo/v0/{what}.ts"))
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.headers()["x-edge-reason"].to_str().unwrap().to_owned(),
                start.elapsed(),
            )
        }
    };
    let viewers = {
        let (c, base) = (c.clone(), base.clone());
        async move {
            let mut ok = 0;
            for _ in 0..40 {
                let r = c
                    .get(format!("{base}/vod/movies/demo/v0/seg_000.ts"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(
                    r.headers().get("x-hostile").map(|v| v.to_str().unwrap()),
                    Some("calm")
                );
                ok += usize::from(r.status() == 200);
            }
            ok
        }
    };
    let (looped, oom, panicked, served) =
        tokio::join!(attack("loop"), attack("oom"), attack("panic"), viewers);
    assert_eq!((looped.0, looped.1.as_str()), (503, "policy_timeout"));
    assert!(
        looped.2 < Duration::from_secs(2),
        "loop cut off late: {:?}",
        looped.2
    );
    assert_eq!((oom.0, oom.1.as_str()), (503, "policy_memory"));
    assert_eq!((panicked.0, panicked.1.as_str()), (503, "policy_trap"));
    assert_eq!(served, 40);
    t.edge.shutdown().await;
}
