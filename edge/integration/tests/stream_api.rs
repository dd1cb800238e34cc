//! The streaming API on the embedded default (no Redis, no Kafka, no user service): the replaced
//! service's JSON, validation, the development JWT, events in the spool, progress surviving a
//! restart.

use edge_integration::{TestEdge, client, jwt};
use serde_json::{Value, json};

async fn call(
    edge: &TestEdge,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    let mut req = client().request(method, format!("{}{path}", edge.http()));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_owned());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn spooled(edge: &TestEdge) -> Vec<Value> {
    spooled_raw(edge)
        .await
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn spooled_raw(edge: &TestEdge) -> Vec<String> {
    let mut out = Vec::new();
    let opts = edge_events::TailOptions {
        last: None,
        follow: false,
        kind: None,
    };
    edge_events::tail(&edge.data.path().join("events"), opts, &mut out)
        .await
        .unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The payload's fields appear exactly in this order (what the replaced service's consumers see).
fn assert_fields_in_order(line: &str, fields: &[&str]) {
    let payload = &line[line.find("\"payload\":").unwrap()..];
    let at: Vec<usize> = fields
        .iter()
        .map(|f| {
            payload
                .find(&format!("\"{f}\":"))
                .unwrap_or_else(|| panic!("{f} in {payload}"))
        })
        .collect();
    assert!(
        at.windows(2).all(|w| w[0] < w[1]),
        "{fields:?} in {payload}"
    );
    assert_eq!(
        payload.matches("\":").count() - 1,
        fields.len(),
        "no other fields: {payload}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_streaming_api_on_the_embedded_default() {
    let edge = TestEdge::start("").await.unwrap();
    let secret = std::fs::read_to_string(edge.data.path().join("dev-jwt-secret")).unwrap();
    let user = "6f1c2d3e-4b5a-4c6d-8e7f-901234567890";
    let token = jwt(secret.trim(), user, 600);
    let t = Some(token.as_str());
    use reqwest::Method;

    // Start: a signed edge URL for the movie's directory that plays.
    let (status, body) = call(
        &edge,
        Method::POST,
        "/api/v1/stream/demo",
        t,
        Some(r#"{"manifest_type": "hls"}"#),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let obj = body.as_object().unwrap();
    assert_eq!(obj.len(), 3, "{body}");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["manifest_type"], "hls");
    let url = body["manifest_url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!(
            "{}/vod/movies/demo/index.m3u8?token=",
            edge.http()
        )),
        "{url}"
    );
    let manifest = client().get(url).send().await.unwrap();
    assert_eq!(manifest.status(), 200);
    let text = manifest.text().await.unwrap();
    let variant = text
        .lines()
        .find(|l| l.ends_with(".m3u8") || l.contains(".m3u8?"))
        .unwrap();
    assert!(variant.contains("token="), "token propagated: {variant}");

    let (status, body) = call(
        &edge,
        Method::POST,
        "/api/v1/stream/no-such-movie",
        t,
        Some("{}"),
    )
    .await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (404, Some("manifest_not_found"))
    );

    // Progress: stored, readable, coalesced within the interval but never lost.
    let (status, body) = call(
        &edge,
        Method::POST,
        "/api/v1/stream/demo/progress",
        t,
        Some(r#"{"position_seconds": 120}"#),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"success": true, "position_seconds": 120, "message": "Progress updated successfully"})
    );
    let (_, body) = call(
        &edge,
        Method::POST,
        "/api/v1/stream/demo/progress",
        t,
        Some(r#"{"position_seconds": 130}"#),
    )
    .await;
    assert_eq!(body["position_seconds"], 130);
    let (status, body) = call(&edge, Method::GET, "/api/v1/stream/demo/progress", t, None).await;
    assert_eq!(status, 200);
    assert_eq!(body["user_id"], user);
    assert_eq!(body["movie_id"], "demo");
    assert_eq!(body["position_seconds"], 130);
    assert_eq!(body.as_object().unwrap().len(), 4);
    assert!(
        body["last_watched_at"].as_str().unwrap().len() == 26,
        "{body}"
    );

    let (status, body) = call(
        &edge,
        Method::POST,
        "/api/v1/stream/demo/stop",
        t,
        Some(r#"{"position_seconds": 1800}"#),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"success": true, "message": "Stream stopped successfully"})
    );

    // Validation: JSON errors with a reason, never a 500.
    for (method, path, body, status, reason) in [
        (
            Method::POST,
            "/api/v1/stream/demo/progress",
            r#"{"position_seconds": 1, "x": 2}"#,
            400,
            "invalid_body",
        ),
        (
            Method::POST,
            "/api/v1/stream/demo/progress",
            r#"{"position_seconds": -5}"#,
            400,
            "invalid_position",
        ),
        (
            Method::POST,
            "/api/v1/stream/demo/progress",
            r#"{"position_seconds": 99999999}"#,
            400,
            "invalid_position",
        ),
        (
            Method::POST,
            "/api/v1/stream/demo/progress",
            r#"{"position_seconds": "ten"}"#,
            400,
            "invalid_body",
        ),
        (
            Method::POST,
            "/api/v1/stream/demo/progress",
            "position=10",
            400,
            "invalid_json",
        ),
        (
            Method::POST,
            "/api/v1/stream/demo",
            r#"{"manifest_type": "mp4"}"#,
            400,
            "invalid_body",
        ),
        (
            Method::POST,
            "/api/v1/stream/de.mo",
            "{}",
            400,
            "invalid_movie_id",
        ),
        (
            Method::GET,
            "/api/v1/stream/demo",
            "",
            405,
            "method_not_allowed",
        ),
        (
            Method::POST,
            "/api/v1/stream/demo/rewind",
            "{}",
            404,
            "not_found",
        ),
    ] {
        let (got, b) = call(&edge, method.clone(), path, t, Some(body)).await;
        assert_eq!(
            (got, b["reason"].as_str()),
            (status, Some(reason)),
            "{method} {path} {body}: {b}"
        );
        assert!(b["detail"].is_string(), "{b}");
    }
    let big = format!(
        r#"{{"position_seconds": 1, "pad": "{}"}}"#,
        "x".repeat(5000)
    );
    let (status, _) = call(
        &edge,
        Method::POST,
        "/api/v1/stream/demo/progress",
        t,
        Some(&big),
    )
    .await;
    assert_eq!(status, 413);

    // Authentication: 401 without or with a bad token; the chain is the policies file's.
    let (status, _) = call(&edge, Method::POST, "/api/v1/stream/demo", None, Some("{}")).await;
    assert_eq!(status, 401);
    let forged = jwt("not-the-secret-not-the-secret-00", user, 600);
    let (status, _) = call(
        &edge,
        Method::POST,
        "/api/v1/stream/demo",
        Some(&forged),
        Some("{}"),
    )
    .await;
    assert_eq!(status, 401);
    let expired = jwt(secret.trim(), user, -3600);
    let (status, _) = call(
        &edge,
        Method::GET,
        "/api/v1/stream/demo/progress",
        Some(&expired),
        None,
    )
    .await;
    assert_eq!(status, 401);

    // /health on the viewer listener, as the replaced service answered it.
    let (status, body) = call(&edge, Method::GET, "/health", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(
        (&body["status"], &body["s3"], &body["redis"], &body["kafka"]),
        (
            &json!("healthy"),
            &json!("ok"),
            &json!("disabled"),
            &json!("disabled")
        ),
        "{body}"
    );

    // The spool holds every event, the streaming ones byte for byte as the replaced service wrote them.
    edge.edge.flush_events().await;
    let events = spooled(&edge).await;
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    let streaming: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"].as_str().unwrap().starts_with("stream."))
        .collect();
    assert_eq!(
        streaming
            .iter()
            .map(|e| (e["kind"].as_str().unwrap(), e["publish"].as_bool().unwrap()))
            .collect::<Vec<_>>(),
        [
            ("stream.start", true),
            ("stream.progress", true),
            ("stream.progress", false),
            ("stream.stop", true)
        ],
        "{kinds:?}"
    );
    let raw = spooled_raw(&edge).await;
    let raw_of = |kind: &str| {
        raw.iter()
            .find(|l| l.contains(&format!("\"kind\":\"{kind}\"")))
            .unwrap()
            .clone()
    };
    assert_fields_in_order(
        &raw_of("stream.start"),
        &["user_id", "movie_id", "action", "timestamp"],
    );
    assert_fields_in_order(
        &raw_of("stream.progress"),
        &[
            "user_id",
            "movie_id",
            "action",
            "position_seconds",
            "timestamp",
        ],
    );
    assert_fields_in_order(
        &raw_of("stream.stop"),
        &[
            "user_id",
            "movie_id",
            "action",
            "position_seconds",
            "timestamp",
        ],
    );
    let start = &streaming[0]["payload"];
    assert_eq!(
        (&start["user_id"], &start["action"]),
        (&json!(user), &json!("stream_start"))
    );
    let progress = &streaming[1]["payload"];
    assert_eq!(progress.as_object().unwrap().len(), 5);
    assert_eq!(
        (&progress["action"], &progress["position_seconds"]),
        (&json!("progress_update"), &json!(120))
    );
    assert_eq!(streaming[3]["payload"]["action"], "stream_stop");
    let session = streaming[0]["key"].as_str().unwrap();
    assert_eq!(session.len(), 36, "a session UUID keys the events");
    assert!(
        streaming.iter().all(|e| e["key"] == session),
        "one key for the session"
    );
    assert!(kinds.contains(&"cache.fill"), "{kinds:?}");
    assert!(kinds.contains(&"policy.denied"), "{kinds:?}");

    // A restart (no Redis) loses nothing.
    let edge = edge.restart().await.unwrap();
    let (status, body) = call(&edge, Method::GET, "/api/v1/stream/demo/progress", t, None).await;
    assert_eq!(
        (status, &body["position_seconds"]),
        (200, &json!(1800)),
        "{body}"
    );
    edge.edge.shutdown().await;
}
