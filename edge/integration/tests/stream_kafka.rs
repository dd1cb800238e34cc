//! The streaming API with the real services of a deployment: a JWT secret and a user service
//! (subscription), `redis-server` (progress, sessions), a Kafka-protocol broker (`tansu`, records
//! read back with a real librdkafka consumer). Faults: the broker stopped while events are
//! produced, then restarted — every event arrives exactly once, in order; Redis stopped, the edge
//! restarted while it is down, Redis back — the position is applied.

use edge_integration::{TestEdge, client, repo_root};
use edge_testinfra::{Redis, S3, Tansu, UserService, consume};
use serde_json::{Value, json};
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

const SECRET: &str = "jwt-secret-of-the-auth-service-0123456789";

fn jwt(sub: &str) -> String {
    edge_integration::jwt(SECRET, sub, 600)
}

async fn post(edge: &TestEdge, path: &str, token: &str, body: &str) -> (u16, Value) {
    let resp = client()
        .post(format!("{}{path}", edge.http()))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (
        status,
        serde_json::from_str(&resp.text().await.unwrap()).unwrap_or(Value::Null),
    )
}

async fn position(edge: &TestEdge, token: &str) -> Value {
    let resp = client()
        .get(format!("{}/api/v1/stream/demo/progress", edge.http()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    v["position_seconds"].clone()
}

fn redis_position(port: u16) -> Option<(u64, i64)> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?;
    let mut c = client.get_connection().ok()?;
    let pos: Option<u64> = redis::cmd("HGET")
        .arg("watch_progress:alice:demo")
        .arg("position_seconds")
        .query(&mut c)
        .ok()?;
    let ttl: i64 = redis::cmd("TTL")
        .arg("watch_progress:alice:demo")
        .query(&mut c)
        .ok()?;
    pos.map(|p| (p, ttl))
}

async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_kafka_exactly_once_and_progress_survives_redis_and_restarts() {
    let s3 = S3::start("tansu");
    let mut broker = Tansu::start_persistent(&s3);
    let mut redis = Redis::start();
    let users = UserService::start().await;
    users.set("alice", Some(true));
    users.set("bob", Some(false));
    let redis_port = redis.port().to_string();
    let bootstrap = broker.bootstrap();
    let users_url = users.url();
    let edge = TestEdge::start_with_env(
        &repo_root().join("policies/default.toml"),
        "[stream_api]\nprogress_min_interval = \"0s\"\n",
        &[
            ("JWT_SECRET_KEY", SECRET),
            ("USER_SERVICE_URL", &users_url),
            ("REDIS_HOST", "127.0.0.1"),
            ("REDIS_PORT", &redis_port),
            ("KAFKA_BOOTSTRAP_SERVERS", &bootstrap),
        ],
    )
    .await
    .unwrap();
    let (alice, bob) = (jwt("alice"), jwt("bob"));

    let (status, body) = post(&edge, "/api/v1/stream/demo", &bob, "{}").await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (403, Some("no_active_subscription")),
        "{body}"
    );
    let (status, body) = post(
        &edge,
        "/api/v1/stream/demo",
        &alice,
        r#"{"manifest_type":"hls"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");

    let (status, _) = post(
        &edge,
        "/api/v1/stream/demo/progress",
        &alice,
        r#"{"position_seconds":10}"#,
    )
    .await;
    assert_eq!(status, 200);
    let (pos, ttl) = eventually("the position in redis", || {
        redis_position(redis.port()).filter(|p| p.0 == 10)
    })
    .await;
    assert!(ttl > 0 && ttl <= 86_400, "ttl {ttl} ({pos})");

    // Kafka down while viewers report: every call is answered, nothing is lost or repeated.
    broker.stop();
    for p in 11..=40 {
        let (status, _) = post(
            &edge,
            "/api/v1/stream/demo/progress",
            &alice,
            &format!(r#"{{"position_seconds":{p}}}"#),
        )
        .await;
        assert_eq!(status, 200);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.restart();

    // Redis down: reports are accepted, readable, and survive an edge restart.
    redis.stop();
    let (status, _) = post(
        &edge,
        "/api/v1/stream/demo/progress",
        &alice,
        r#"{"position_seconds":500}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(position(&edge, &alice).await, json!(500));
    let edge = edge.restart().await.unwrap();
    assert_eq!(position(&edge, &alice).await, json!(500));
    let mut redis = Redis::start_on(redis.port());
    eventually(
        "the spooled position applied to the restarted redis",
        || redis_position(redis.port()).filter(|p| p.0 == 500),
    )
    .await;
    let (status, _) = post(
        &edge,
        "/api/v1/stream/demo/stop",
        &alice,
        r#"{"position_seconds":510}"#,
    )
    .await;
    assert_eq!(status, 200);

    let topics = ["stream.start", "stream.progress", "stream.stop"];
    let expected = 1 + 1 + 30 + 1 + 1;
    let records = tokio::task::spawn_blocking(move || {
        consume(&bootstrap, &topics, expected, Duration::from_secs(60))
    })
    .await
    .unwrap();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in &records {
        *seen
            .entry(r.header("event-id").unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    assert!(seen.values().all(|n| *n == 1), "duplicates: {seen:?}");
    assert_eq!(records.len(), expected, "{records:?}");
    // Keyed by the session while it can be found; the session lived in the Redis that was
    // restarted empty (and in the memory of the edge that restarted), so the stop falls back to
    // `user:movie`; the report made while Redis was down found it in the edge's memory.
    let session = records
        .iter()
        .find(|r| r.topic == "stream.start")
        .unwrap()
        .key
        .clone()
        .unwrap();
    assert_eq!(session.len(), 36);
    let payload =
        |r: &edge_testinfra::Consumed| serde_json::from_slice::<Value>(&r.payload).unwrap();
    for r in &records {
        let want = if r.topic == "stream.stop" {
            "alice:demo"
        } else {
            session.as_str()
        };
        assert_eq!(r.key.as_deref(), Some(want), "{}", payload(r));
    }
    let mut progress: Vec<(i64, u64)> = records
        .iter()
        .filter(|r| r.topic == "stream.progress")
        .map(|r| {
            let v: Value = serde_json::from_slice(&r.payload).unwrap();
            let raw = String::from_utf8_lossy(&r.payload);
            let at: Vec<usize> = [
                "user_id",
                "movie_id",
                "action",
                "position_seconds",
                "timestamp",
            ]
            .iter()
            .map(|f| raw.find(&format!("\"{f}\":")).unwrap())
            .collect();
            assert!(
                at.windows(2).all(|w| w[0] < w[1]),
                "field order as published before: {raw}"
            );
            assert_eq!(v.as_object().unwrap().len(), 5, "{raw}");
            (r.offset, v["position_seconds"].as_u64().unwrap())
        })
        .collect();
    progress.sort();
    let positions: Vec<u64> = progress.iter().map(|p| p.1).collect();
    let want: Vec<u64> = [10].into_iter().chain(11..=40).chain([500]).collect();
    assert_eq!(positions, want, "in order, once each");
    let stop: Value = serde_json::from_slice(
        &records
            .iter()
            .find(|r| r.topic == "stream.stop")
            .unwrap()
            .payload,
    )
    .unwrap();
    assert_eq!(
        (&stop["action"], &stop["position_seconds"], &stop["user_id"]),
        (&json!("stream_stop"), &json!(510), &json!("alice"))
    );

    let health = client()
        .get(format!("{}/health", edge.http()))
        .send()
        .await
        .unwrap();
    let health: Value = serde_json::from_str(&health.text().await.unwrap()).unwrap();
    assert_eq!(
        (&health["redis"], &health["kafka"]),
        (&json!("ok"), &json!("enabled")),
        "{health}"
    );
    edge.edge.shutdown().await;
    redis.stop();
}
