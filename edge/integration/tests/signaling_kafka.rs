//! The signaling role and Kafka (a real tansu broker, real librdkafka clients on both sides):
//! events another service publishes to `stream.<id>.events` reach the stream's peers on both
//! edges of a cluster sharing a real redis-server, and the peers that joined and left each
//! stream come out as `edge.signaling.peers` events.

use edge_integration::{TestEdge, repo_root};
use edge_testinfra::{Redis, Tansu, consume, produce};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::{
    connect_async,
    tungstenite::{Message, client::IntoClientRequest},
};

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const SECRET: &str = "two-edges-share-this-secret-32-bytes!";

async fn edge(redis: u16, kafka: &str, node: &str) -> TestEdge {
    let redis = redis.to_string();
    TestEdge::start_with_env(
        &repo_root().join("policies/default.toml"),
        "[signaling]\npeer_counts_interval = \"1s\"\n",
        &[
            ("EDGE_ROLES", "edge,signaling"),
            ("JWT_SECRET_KEY", SECRET),
            ("REDIS_HOST", "127.0.0.1"),
            ("REDIS_PORT", &redis),
            ("KAFKA_BOOTSTRAP_SERVERS", kafka),
            ("KAFKA_CONSUMER_GROUP", "signaling-test"),
            ("NODE_ID", node),
        ],
    )
    .await
    .expect("edge starts")
}

async fn connect(edge: &TestEdge, sub: &str) -> Client {
    let url = format!("ws://{}/ws/signaling", edge.edge.addrs().http[0]);
    let mut req = url.into_client_request().unwrap();
    let token = edge_integration::jwt(SECRET, sub, 600);
    let offered = format!("signaling, access_token.{token}");
    req.headers_mut()
        .insert("sec-websocket-protocol", offered.parse().unwrap());
    connect_async(req).await.expect("101").0
}

/// The next text message within `wait`, as JSON; `None` if none came.
async fn next(ws: &mut Client, wait: Duration) -> Option<Value> {
    tokio::time::timeout(wait, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected a text message, got {other:?}"),
            }
        }
    })
    .await
    .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_events_from_kafka_reach_peers_on_every_edge_and_peer_counts_go_out() {
    let broker = Tansu::start();
    let bootstrap = broker.bootstrap();
    tokio::task::block_in_place(|| broker.create_topics(&["stream.demo.events"], 2));
    let redis = Redis::start();
    let a = edge(redis.port(), &bootstrap, "edge-a").await;
    let b = edge(redis.port(), &bootstrap, "edge-b").await;
    let (mut on_a, mut on_b) = (connect(&a, "alice").await, connect(&b, "bob").await);
    for (ws, peer) in [(&mut on_a, "pa"), (&mut on_b, "pb")] {
        let join = json!({"type":"join","streamId":"demo","peerId":peer});
        ws.send(Message::text(join.to_string())).await.unwrap();
        let list = next(ws, Duration::from_secs(5)).await.expect("a peer list");
        assert_eq!(list["type"], "peer-list");
    }
    // A new consumer group starts at the newest events and joins in a few seconds: publish
    // until the edges are reading (each event numbered), then every later one reaches both.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut seq = 0;
    let first = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no stream event within 90 s"
        );
        seq += 1;
        let payload = json!({"type":"rendition-added","rendition":"1080p","seq":seq}).to_string();
        tokio::task::block_in_place(|| produce(&bootstrap, "stream.demo.events", "demo", &payload));
        if let Some(m) = next(&mut on_a, Duration::from_secs(1)).await {
            break m;
        }
    };
    assert_eq!(
        (&first["type"], &first["streamId"], &first["event"]["type"]),
        (
            &json!("stream-event"),
            &json!("demo"),
            &json!("rendition-added")
        )
    );
    let got = first["event"]["seq"].as_i64().unwrap();
    // The same event on the other edge (whichever edge read it from Kafka, fanned out through
    // Redis), and the next one on both.
    let mut on_b_seen = Vec::new();
    while let Some(m) = next(&mut on_b, Duration::from_secs(2)).await {
        on_b_seen.push(m["event"]["seq"].as_i64().unwrap());
    }
    assert!(on_b_seen.contains(&got), "{on_b_seen:?} has {got}");
    let ended = json!({"type":"stream-ended","seq":seq + 1}).to_string();
    tokio::task::block_in_place(|| produce(&bootstrap, "stream.demo.events", "demo", &ended));
    for ws in [&mut on_a, &mut on_b] {
        loop {
            let m = next(ws, Duration::from_secs(30))
                .await
                .expect("the stream-ended event");
            if m["event"]["type"] == "stream-ended" {
                assert_eq!(m["streamId"], "demo");
                break;
            }
        }
        // Once: the edge that read it does not also get it back through Redis.
        if let Some(m) = next(ws, Duration::from_secs(1)).await {
            assert_ne!(m["event"]["type"], "stream-ended", "twice: {m}");
        }
    }
    // Not JSON: skipped and counted, the others still flow.
    tokio::task::block_in_place(|| produce(&bootstrap, "stream.demo.events", "demo", "{oops"));
    // Peer counts: one joined on each edge.
    let records = tokio::task::block_in_place(|| {
        consume(
            &bootstrap,
            &["edge.signaling.peers"],
            2,
            Duration::from_secs(60),
        )
    });
    let mut by_node: Vec<(String, u64)> = records
        .iter()
        .map(|r| {
            let v: Value = serde_json::from_slice(&r.payload).unwrap();
            assert_eq!(v["stream_id"], "demo", "{v}");
            (
                v["node_id"].as_str().unwrap().to_owned(),
                v["joined"].as_u64().unwrap(),
            )
        })
        .collect();
    by_node.sort();
    assert_eq!(by_node, [("edge-a".into(), 1), ("edge-b".into(), 1)]);
    // The record that is not JSON was skipped and counted by the edge that read it.
    let series = r#"edge_signaling_drops_total{protocol="signaling",reason="not_json"} 1"#;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = format!("{}\n{}", a.metrics().await, b.metrics().await);
        if metrics.lines().any(|l| l == series) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series}: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
