//! The whole edge in-process on port 0, driven by real clients.

use edge_integration::{TestEdge, client, token};
use std::process::Command;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MASTER: &str = "/vod/movies/demo/index.m3u8";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_downloads_the_demo_stream_through_a_signed_url() {
    let t = TestEdge::start("").await.unwrap();
    let url = t.edge.demo_url().expect("demo url").to_owned();
    assert!(url.starts_with(&t.http()), "{url}");
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("out.ts");
    let status = tokio::task::spawn_blocking({
        let (url, file) = (url.clone(), file.clone());
        move || {
            Command::new("ffmpeg")
                .args([
                    "-hide_banner",
                    "-loglevel",
                    "error",
                    "-i",
                    &url,
                    "-map",
                    "0",
                    "-c",
                    "copy",
                ])
                .arg(&file)
                .status()
        }
    })
    .await
    .unwrap()
    .expect("ffmpeg must be installed (the README test command installs it)");
    assert!(status.success(), "ffmpeg failed on {url}");
    let probe = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "default=nw=1:nk=1",
        ])
        .arg(&file)
        .output()
        .unwrap();
    let seconds: f64 = String::from_utf8_lossy(&probe.stdout)
        .trim()
        .parse()
        .unwrap();
    assert!(
        (7.5..9.0).contains(&seconds),
        "downloaded {seconds} s of an 8 s stream"
    );

    let metrics = t.metrics().await;
    assert!(
        metrics.contains(r#"edge_policy_decisions_total{outcome="allow",policy="signed-url"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"edge_cache_lookups_total{result="hit",tier="memory"}"#),
        "{metrics}"
    );
    assert_eq!(t.edge.shutdown().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_propagate_into_manifests_and_bad_tokens_are_refused() {
    let t = TestEdge::start("").await.unwrap();
    let good = token("/vod/movies/demo/", 60);
    let c = client();
    let r = c
        .get(format!("{}{MASTER}?token={good}", t.http()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/vnd.apple.mpegurl");
    let body = r.text().await.unwrap();
    assert!(
        body.contains(&format!("v0/index.m3u8?token={good}")),
        "{body}"
    );
    let seg = c
        .get(format!(
            "{}/vod/movies/demo/v1/seg_000.ts?token={good}",
            t.http()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (
            seg.status().as_u16(),
            seg.headers()["content-type"].to_str().unwrap()
        ),
        (200, "video/mp2t")
    );

    let mut tampered = good.clone().into_bytes();
    let i = tampered.len() - 6;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for (query, reason) in [
        (String::new(), "missing_token"),
        (
            format!("token={}", token("/vod/movies/demo/", -5)),
            "expired_token",
        ),
        (format!("token={tampered}"), "bad_signature"),
        (
            format!("token={}", token("/vod/movies/other/", 60)),
            "scope_mismatch",
        ),
        ("token=%%zz&&==".to_string(), "malformed_token"),
        (format!("token={good}&token=again"), "malformed_token"),
    ] {
        let r = c
            .get(format!("{}{MASTER}?{query}", t.http()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{query}");
        assert_eq!(r.headers()["x-edge-reason"], reason, "{query}");
    }
    t.edge.shutdown().await;
}

/// Raw request line, so no client library normalises the path first.
async fn raw_status(addr: std::net::SocketAddr, target: &str) -> u16 {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_traversal_is_refused_before_any_policy_or_origin() {
    let t = TestEdge::start("").await.unwrap();
    let addr = t.edge.addrs().http[0];
    let tok = token("/", 60);
    for target in [
        "/vod/../Cargo.toml",
        "/vod/movies/demo/../../../../etc/passwd.ts",
        "/vod/%2e%2e/%2e%2e/etc/passwd.ts",
        "/vod/movies%2f..%2f..%2fCargo.toml",
        "/vod/movies/demo/%00.ts",
        "/vod/movies/demo/..%5c..%5cx.ts",
    ] {
        assert_eq!(
            raw_status(addr, &format!("{target}?token={tok}")).await,
            400,
            "{target}"
        );
    }
    t.edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_over_tls_and_h2c() {
    let t = TestEdge::start("").await.unwrap();
    let url = format!("{MASTER}?token={}", token("/vod/movies/demo/", 60));
    let h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2c.get(format!("{}{url}", t.http())).send().await.unwrap();
    assert_eq!(
        (r.version(), r.status().as_u16()),
        (reqwest::Version::HTTP_2, 200)
    );
    let tls = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let r = tls.get(format!("{}{url}", t.https())).send().await.unwrap();
    assert_eq!(
        (r.version(), r.status().as_u16()),
        (reqwest::Version::HTTP_2, 200)
    );
    let body = r.text().await.unwrap();
    assert!(body.starts_with("#EXTM3U"));
    let tls1 = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .http1_only()
        .build()
        .unwrap();
    let r = tls1
        .head(format!("{}{url}", t.https()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.version(), r.status().as_u16()),
        (reqwest::Version::HTTP_11, 200)
    );
    t.edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_health_and_metrics() {
    let t = TestEdge::start("").await.unwrap();
    let c = client();
    assert_eq!(
        c.get(format!("{}/health/live", t.admin()))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(format!("{}/health/ready", t.admin()))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let health: serde_json::Value = serde_json::from_str(
        &c.get(format!("{}/health", t.admin()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["components"]["origin"]["status"], "ok", "{health}");
    assert_eq!(
        health["components"]["policies"]["routes"][0], "vod",
        "{health}"
    );
    let metrics = c
        .get(format!("{}/metrics", t.admin()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        metrics.headers()["content-type"],
        "text/plain; version=0.0.4"
    );
    t.edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_viewers_cause_one_origin_read_per_object() {
    let t = TestEdge::start("").await.unwrap();
    let url = format!(
        "{}/vod/movies/demo/v0/seg_003.ts?token={}",
        t.http(),
        token("/vod/movies/demo/", 60)
    );
    let c = client();
    let responses = futures::future::join_all((0..64).map(|_| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            let r = c.get(url).send().await.unwrap();
            (
                r.status().as_u16(),
                r.headers().get("x-cache").map_or_else(
                    || format!("{:?}", r.headers().get("x-edge-reason")),
                    |v| v.to_str().unwrap().to_owned(),
                ),
                r.bytes().await.unwrap().len(),
            )
        }
    }))
    .await;
    let sizes: std::collections::HashSet<_> = responses.iter().map(|r| r.2).collect();
    assert_eq!(
        sizes.len(),
        1,
        "every viewer got the same bytes: {responses:?}"
    );
    assert!(responses.iter().all(|r| r.0 == 200), "{responses:?}");
    assert_eq!(
        responses.iter().filter(|r| r.1 == "MISS origin").count(),
        1,
        "{responses:?}"
    );
    let metrics = t.metrics().await;
    assert!(
        metrics.contains(r#"edge_cache_lookups_total{result="miss",tier="memory"} 1"#),
        "{metrics}"
    );
    t.edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_stops_accepting_and_reports_readiness() {
    let t = TestEdge::start("").await.unwrap();
    let (http, admin) = (t.edge.addrs().http[0], t.edge.addrs().admin);
    assert_eq!(t.edge.shutdown().await, 0);
    assert!(
        tokio::net::TcpStream::connect(http).await.is_err(),
        "still accepting after drain"
    );
    assert!(
        tokio::net::TcpStream::connect(admin).await.is_err(),
        "admin still accepting after drain"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_not_read_where_none_is_taken_and_browsers_get_cors() {
    let t = TestEdge::start("").await.unwrap();
    let c = client();
    // Objects take no body: a 2 MiB POST is answered 405 without reading it, and the
    // connection (with the body still on it) is not reused.
    let r = c
        .post(format!("{}/vod/movies/demo/index.m3u8", t.http()))
        .body(vec![b'x'; 2 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["x-edge-reason"], "method_not_allowed");
    assert_eq!(
        r.headers().get("connection").map(|v| v.to_str().unwrap()),
        Some("close")
    );

    let pre = c
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/vod/movies/demo/v0/seg_000.ts", t.http()),
        )
        .header("origin", "https://player.example")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "range")
        .send()
        .await
        .unwrap();
    assert_eq!(pre.status(), 204);
    assert_eq!(pre.headers()["access-control-allow-origin"], "*");
    let denied = c
        .get(format!("{}{MASTER}", t.http()))
        .header("origin", "https://player.example")
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
    assert_eq!(denied.headers()["access-control-allow-origin"], "*");
    t.edge.shutdown().await;
}

/// Purging needs the admin token; it removes one path or a whole prefix from every tier.
#[tokio::test]
async fn purge_is_authenticated_and_reaches_the_disk_tier() {
    let disk = tempfile::tempdir().unwrap();
    let untokened = TestEdge::start("").await.unwrap();
    let c = client();
    let purge = |admin: String, auth: Option<&'static str>, body: &'static str| {
        let mut r = c.post(format!("{admin}/admin/purge")).body(body);
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send()
    };
    let r = purge(untokened.admin(), None, r#"{"path":"/vod/a.ts"}"#)
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "no token configured: purging is off");

    let t = TestEdge::start_with_env(
        &edge_integration::repo_root().join("policies/default.toml"),
        &format!("[disk_cache]\npath = {:?}\n", disk.path()),
        &[("EDGE_ADMIN_TOKEN", "purge-token-0123456789")],
    )
    .await
    .unwrap();
    let seg = format!(
        "{}/vod/movies/demo/v0/seg_000.ts?token={}",
        t.http(),
        token("/vod/movies/demo/", 60)
    );
    // Its own client: a connection kept open would hold the old edge (and its disk tier).
    let first = client().get(&seg).send().await.unwrap();
    assert_eq!(first.headers()["x-cache"], "MISS origin");
    drop(first);
    // A restart keeps the cache: the drain writes the memory tier to the disk tier.
    let t = t.restart().await.unwrap();
    let seg = format!(
        "{}/vod/movies/demo/v0/seg_000.ts?token={}",
        t.http(),
        token("/vod/movies/demo/", 60)
    );
    assert_eq!(
        c.get(&seg).send().await.unwrap().headers()["x-cache"],
        "HIT disk"
    );
    assert_eq!(
        c.get(&seg).send().await.unwrap().headers()["x-cache"],
        "HIT memory"
    );

    for auth in [
        None,
        Some("Bearer wrong-token-0123456789"),
        Some("Basic purge-token-0123456789"),
    ] {
        let r = purge(
            t.admin(),
            auth,
            r#"{"path":"/vod/movies/demo/v0/seg_000.ts"}"#,
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 401, "{auth:?}");
    }
    let r = c
        .post(format!("{}/admin/purge", t.admin()))
        .header("authorization", "Bearer purge-token-0123456789")
        .header("origin", "https://evil.example")
        .body(r#"{"prefix":"/vod/"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "cross-site requests are refused");
    const AUTH: Option<&str> = Some("Bearer purge-token-0123456789");
    for bad in [
        r#"{"path":"/a","prefix":"/b"}"#,
        r#"{"prefix":"/"}"#,
        r#"{"paths":"/a"}"#,
        "nope",
    ] {
        assert_eq!(
            purge(t.admin(), AUTH, bad).await.unwrap().status(),
            400,
            "{bad}"
        );
    }
    let r = purge(t.admin(), AUTH, r#"{"prefix":"/vod/movies/demo/"}"#)
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(
        (body["memory"].as_u64(), body["disk"].as_u64()),
        (Some(1), Some(1)),
        "{body}"
    );
    assert_eq!(
        c.get(&seg).send().await.unwrap().headers()["x-cache"],
        "MISS origin"
    );
}
