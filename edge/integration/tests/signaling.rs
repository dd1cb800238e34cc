//! The signaling role's WebTorrent tracker on a whole edge (`EDGE_ROLES=edge,signaling`, the
//! repository's default policies: a JWT in `access_token`): the npm `bittorrent-tracker`
//! server as the reference for every reply, the handshake's checks, hostile clients cut off
//! without hurting the others, and "going away" when the edge drains.

use edge_integration::{CLUSTER_SECRET, TestEdge, clustered, clustered_as, jwt, repo_root};
use futures::{SinkExt, StreamExt};
use std::time::Duration;
use tokio_tungstenite::{
    connect_async,
    tungstenite::{Message, client::IntoClientRequest, protocol::frame::coding::CloseCode},
};

async fn edge(extra: &str) -> TestEdge {
    TestEdge::start_with_env(
        &repo_root().join("policies/default.toml"),
        extra,
        &[("EDGE_ROLES", "edge,signaling")],
    )
    .await
    .expect("edge starts")
}

fn url(edge: &TestEdge, token: Option<&str>) -> String {
    let addr = edge.edge.addrs().http[0];
    match token {
        Some(t) => format!("ws://{addr}/ws/tracker?access_token={t}"),
        None => format!("ws://{addr}/ws/tracker"),
    }
}

const H: &str = "aaaaaaaaaaaaaaaaaaaa";

fn announce(peer: &str) -> Message {
    Message::text(format!(
        r#"{{"action":"announce","info_hash":"{H}","peer_id":"{peer}","event":"started","left":1}}"#
    ))
}

/// Runs `compare.mjs` against `urls` (one edge, or two of one cluster); its report.
async fn compare(urls: &[String]) -> serde_json::Value {
    let dir = repo_root().join("edge/signaling/tests/reference");
    assert!(
        dir.join("node_modules/bittorrent-tracker").is_dir(),
        "the reference tracker is not installed: run deploy/dev/setup.sh --test"
    );
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("node")
            .arg("compare.mjs")
            .args(urls)
            .current_dir(&dir)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("compare.mjs within 60 s")
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "replies differ from the reference's:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["same"], true);
    assert!(report["messages"].as_u64().unwrap() >= 17, "{report}");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tracker_answers_as_the_npm_bittorrent_tracker_server_does() {
    let edge = edge("").await;
    compare(&[url(&edge, Some(&edge.dev_jwt("viewer-1")))]).await;
    let metrics = edge.metrics().await;
    assert!(
        metrics.contains(r#"edge_signaling_relays_total{kind="offer",protocol="tracker"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"edge_signaling_relays_total{kind="answer",protocol="tracker"} 1"#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_and_a_signaling_node_sharing_redis_answer_as_one_npm_bittorrent_tracker_server() {
    let redis = edge_testinfra::Redis::start();
    // b runs the signaling role alone (`roles = ["signaling"]`), on its viewer listener.
    let (a, b) = (
        clustered(redis.port(), "edge-a").await,
        clustered_as(redis.port(), "signaling-b", "signaling").await,
    );
    let token = jwt(CLUSTER_SECRET, "viewer-1", 600);
    // Sockets a and c on edge a, b on node b: counts, offers, answers, scrapes and the stop of
    // a closed socket all cross the two nodes.
    compare(&[url(&a, Some(&token)), url(&b, Some(&token))]).await;
    let (ma, mb) = (a.metrics().await, b.metrics().await);
    // b's offer to a's peer went through Redis, and a's answer back.
    for (m, name) in [(&ma, "a"), (&mb, "b")] {
        for event in ["relay_out", "relay_in"] {
            let line = format!(r#"edge_signaling_cluster_total{{event="{event}"}} 1"#);
            assert!(m.contains(&line), "edge {name}: {line}\n{m}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handshake_needs_a_token_an_upgrade_and_an_allowed_origin() {
    let edge = edge("[signaling]\nallowed_origins = [\"https://player.example\"]\n").await;
    let token = edge.dev_jwt("viewer-1");
    let status = |r: Result<_, tokio_tungstenite::tungstenite::Error>| match r {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("{e}"),
        Ok(_) => 101,
    };
    assert_eq!(
        status(connect_async(url(&edge, None)).await.map(|_| ())),
        401
    );
    let bad = format!(
        "ws://{}/ws/tracker?access_token=not.a.jwt",
        edge.edge.addrs().http[0]
    );
    assert_eq!(status(connect_async(bad).await.map(|_| ())), 401);
    let mut req = url(&edge, Some(&token)).into_client_request().unwrap();
    req.headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    assert_eq!(status(connect_async(req).await.map(|_| ())), 403);
    let mut req = url(&edge, Some(&token)).into_client_request().unwrap();
    req.headers_mut()
        .insert("origin", "https://player.example".parse().unwrap());
    assert_eq!(status(connect_async(req).await.map(|_| ())), 101);
    // Not a WebSocket request: 426 in the edge's error shape.
    let http = format!(
        "http://{}/ws/tracker?access_token={token}",
        edge.edge.addrs().http[0]
    );
    let resp = edge_integration::client().get(http).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 426);
    assert_eq!(resp.headers()["x-edge-reason"], "websocket_only");
}

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The code of the close frame the server sends `ws` (within 5 s).
async fn close_code(ws: &mut Client) -> Option<CloseCode> {
    tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(m) = ws.next().await {
            if let Ok(Message::Close(frame)) = m {
                return frame.map(|f| f.code);
            }
        }
        None
    })
    .await
    .expect("closed within 5 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_are_cut_off_and_the_others_served() {
    let edge = edge("[signaling]\nmessages_per_second = 20\n").await;
    let token = edge.dev_jwt("viewer-1");
    let (mut good, _) = connect_async(url(&edge, Some(&token))).await.unwrap();
    good.send(announce("gggggggggggggggggggg")).await.unwrap();
    let reply = good.next().await.unwrap().unwrap();
    assert!(
        reply.to_text().unwrap().contains(r#""incomplete":1"#),
        "{reply}"
    );

    // A 1 MiB frame: closed with 1009 (message too big).
    let (mut big, _) = connect_async(url(&edge, Some(&token))).await.unwrap();
    let _ = big.send(Message::text("x".repeat(1 << 20))).await;
    assert_eq!(close_code(&mut big).await, Some(CloseCode::Size));

    // A flood beyond 20 messages a second: closed with 1008 (policy).
    let (mut flood, _) = connect_async(url(&edge, Some(&token))).await.unwrap();
    let scrape = Message::text(r#"{"action":"scrape"}"#);
    for _ in 0..200 {
        if flood.send(scrape.clone()).await.is_err() {
            break;
        }
    }
    assert_eq!(close_code(&mut flood).await, Some(CloseCode::Policy));

    // Garbage and invalid ids get failure reasons; the socket stays up.
    good.send(Message::text("{not json")).await.unwrap();
    let m = good.next().await.unwrap().unwrap();
    assert!(
        m.to_text().unwrap().starts_with(r#"{"failure reason":"#),
        "{m}"
    );
    // The good client is still served, and its swarm is intact.
    let (mut other, _) = connect_async(url(&edge, Some(&token))).await.unwrap();
    other.send(announce("oooooooooooooooooooo")).await.unwrap();
    let m = other.next().await.unwrap().unwrap();
    assert!(m.to_text().unwrap().contains(r#""incomplete":2"#), "{m}");
    let metrics = edge.metrics().await;
    assert!(
        metrics.contains(r#"edge_signaling_drops_total{protocol="tracker",reason="rate"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"edge_signaling_drops_total{protocol="tracker",reason="size"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_edge_tells_every_client_to_reconnect() {
    let edge = edge("").await;
    let token = edge.dev_jwt("viewer-1");
    let (mut ws, _) = connect_async(url(&edge, Some(&token))).await.unwrap();
    ws.send(announce("dddddddddddddddddddd")).await.unwrap();
    ws.next().await.unwrap().unwrap();
    let shutdown = tokio::spawn(async move { edge.edge.shutdown().await });
    let frame = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(m) = ws.next().await {
            if let Ok(Message::Close(frame)) = m {
                return frame;
            }
        }
        None
    })
    .await
    .expect("a close within 5 s")
    .expect("a close frame");
    assert_eq!(frame.code, CloseCode::Away);
    assert!(frame.reason.contains("reconnect"), "{}", frame.reason);
    drop(ws);
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("the drain ends")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_close_is_answered_with_a_close() {
    let edge = edge("").await;
    let token = edge.dev_jwt("viewer-1");
    let (mut ws, _) = connect_async(url(&edge, Some(&token))).await.unwrap();
    ws.send(announce("cccccccccccccccccccc")).await.unwrap();
    ws.next().await.unwrap().unwrap();
    ws.close(None).await.unwrap();
    // The client reads the server's close reply, then the stream ends cleanly (not 1006).
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        let mut replies = Vec::new();
        while let Some(m) = ws.next().await {
            replies.push(m);
        }
        replies
    })
    .await
    .expect("closed within 5 s");
    assert!(
        end.iter().all(|m| matches!(m, Ok(Message::Close(_)))),
        "{end:?}"
    );
    // Its peer left the swarm.
    let metrics = edge.metrics().await;
    assert!(
        metrics.contains(r#"edge_signaling_swarms{protocol="tracker"} 0"#),
        "{metrics}"
    );
}
