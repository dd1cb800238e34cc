//! The native signaling protocol (`/ws/signaling`) on a whole edge with the repository's default
//! policies: the JWT in `Sec-WebSocket-Protocol` as a browser sends it, swarms and relays
//! between two viewers, a watch room controlled by its host, kept across a reconnect, and two
//! edges sharing a real redis-server.

use edge_integration::{CLUSTER_SECRET as SECRET, TestEdge, clustered, clustered_as, repo_root};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::{
    connect_async,
    tungstenite::{Message, client::IntoClientRequest, protocol::frame::coding::CloseCode},
};

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn edge() -> TestEdge {
    TestEdge::start_with_env(
        &repo_root().join("policies/default.toml"),
        "",
        &[("EDGE_ROLES", "edge,signaling")],
    )
    .await
    .expect("edge starts")
}

/// Connects as a browser does: `new WebSocket(url, ["signaling", "access_token." + jwt])`.
async fn connect(edge: &TestEdge, sub: &str) -> Client {
    connect_with(edge, &edge.dev_jwt(sub)).await
}

async fn connect_with(edge: &TestEdge, token: &str) -> Client {
    let url = format!("ws://{}/ws/signaling", edge.edge.addrs().http[0]);
    let mut req = url.into_client_request().unwrap();
    let offered = format!("signaling, access_token.{token}");
    req.headers_mut()
        .insert("sec-websocket-protocol", offered.parse().unwrap());
    let (ws, resp) = connect_async(req).await.expect("101");
    assert_eq!(resp.headers()["sec-websocket-protocol"], "signaling");
    ws
}

async fn send(ws: &mut Client, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// The close frame the server sends (within 5 s), frames before it skipped.
async fn close_frame(ws: &mut Client) -> tokio_tungstenite::tungstenite::protocol::CloseFrame {
    tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(m) = ws.next().await {
            if let Ok(Message::Close(frame)) = m {
                return frame;
            }
        }
        None
    })
    .await
    .expect("a close within 5 s")
    .expect("a close frame")
}

/// The next text message (within 5 s), as JSON.
async fn recv(ws: &mut Client) -> Value {
    let m = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return t,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected a text message, got {other:?}"),
            }
        }
    })
    .await
    .expect("a message within 5 s");
    serde_json::from_str(m.as_str()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_rides_in_the_subprotocol_and_is_never_echoed() {
    let edge = edge().await;
    let url = format!("ws://{}/ws/signaling", edge.edge.addrs().http[0]);
    let status = |r: Result<_, tokio_tungstenite::tungstenite::Error>| match r {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("{e}"),
        Ok(_) => 101,
    };
    assert_eq!(status(connect_async(url.as_str()).await.map(|_| ())), 401);
    let offer = |v: String| {
        let mut req = url.as_str().into_client_request().unwrap();
        req.headers_mut()
            .insert("sec-websocket-protocol", v.parse().unwrap());
        req
    };
    let token = edge.dev_jwt("alice");
    // Only the token offered: nothing could be echoed but the token, so it is refused.
    assert_eq!(
        status(
            connect_async(offer(format!("access_token.{token}")))
                .await
                .map(|_| ())
        ),
        400
    );
    assert_eq!(
        status(
            connect_async(offer("signaling, access_token.a.b.c".into()))
                .await
                .map(|_| ())
        ),
        401
    );
    let mut ws = connect(&edge, "alice").await;
    send(&mut ws, json!({"type":"heartbeat"})).await;
    assert_eq!(recv(&mut ws).await["type"], "heartbeat");
}

/// Only a subprotocol the endpoint speaks is answered (offers of others alone are refused with a
/// reason, not a 101 a browser would drop); the connection ends when its token does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_subprotocol_is_refused_and_the_socket_closes_when_its_token_expires() {
    let edge = edge().await;
    let url = format!("ws://{}/ws/signaling", edge.edge.addrs().http[0]);
    let secret = std::fs::read_to_string(edge.data.path().join("dev-jwt-secret")).unwrap();
    // Expired 28 s ago: still admitted for 2 s by the policy's 30 s leeway.
    let token = edge_integration::jwt(secret.trim(), "carol", -28);
    let offered = format!("chat, access_token.{token}");
    // The raw handshake (with an `Upgrade` list) shows what the edge answered.
    let mut raw = tokio::net::TcpStream::connect(edge.edge.addrs().http[0])
        .await
        .unwrap();
    let head = format!(
        "GET /ws/signaling HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c, websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Protocol: {offered}\r\n\r\n"
    );
    tokio::io::AsyncWriteExt::write_all(&mut raw, head.as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut raw, &mut buf),
    )
    .await
    .unwrap()
    .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 400"), "{answer}");
    assert!(answer.contains("websocket_protocol"), "{answer}");
    assert!(!answer.contains("sec-websocket-protocol"), "{answer}");
    drop(raw);
    let mut req = url.as_str().into_client_request().unwrap();
    let offered = format!("signaling, access_token.{token}");
    req.headers_mut()
        .insert("sec-websocket-protocol", offered.parse().unwrap());
    let (mut ws, resp) = connect_async(req).await.expect("101");
    assert_eq!(resp.headers()["sec-websocket-protocol"], "signaling");
    let frame = close_frame(&mut ws).await;
    assert_eq!(frame.code, CloseCode::Policy);
    assert_eq!(frame.reason.as_str(), "token expired");
    let metrics = edge.metrics().await;
    assert!(
        metrics.contains(
            r#"edge_signaling_drops_total{protocol="signaling",reason="token_expired"} 1"#
        ),
        "{metrics}"
    );
}

/// `signaling.listen`: a port of its own serving the endpoints (through the same policies) and
/// `/health`, nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signaling_listener_serves_the_endpoints_and_health_only() {
    let edge = TestEdge::start_with_env(
        &repo_root().join("policies/default.toml"),
        "[signaling]\nlisten = [\"127.0.0.1:0\"]\n",
        &[("EDGE_ROLES", "edge,signaling")],
    )
    .await
    .expect("edge starts");
    let own = edge.edge.addrs().signaling_http[0];
    assert_ne!(own, edge.edge.addrs().http[0]);
    let url = format!("ws://{own}/ws/signaling");
    let status = |r: Result<_, tokio_tungstenite::tungstenite::Error>| match r {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("{e}"),
        Ok(_) => 101,
    };
    // The route's policies apply there too.
    assert_eq!(status(connect_async(url.as_str()).await.map(|_| ())), 401);
    let mut req = url.as_str().into_client_request().unwrap();
    let offered = format!("signaling, access_token.{}", edge.dev_jwt("dave"));
    req.headers_mut()
        .insert("sec-websocket-protocol", offered.parse().unwrap());
    let (mut ws, _) = connect_async(req).await.expect("101");
    send(&mut ws, json!({"type":"heartbeat"})).await;
    assert_eq!(recv(&mut ws).await["type"], "heartbeat");
    let get = |path: &str| {
        let url = format!("http://{own}{path}");
        async move {
            edge_integration::client()
                .get(url)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(get("/health").await, 200);
    assert_eq!(get("/vod/demo/index.m3u8").await, 404);
    assert_eq!(get("/api/v1/streams").await, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_viewers_find_each_other_and_relay_offers_answers_and_candidates() {
    let edge = edge().await;
    let mut a = connect(&edge, "alice").await;
    let mut b = connect(&edge, "bob").await;
    send(
        &mut a,
        json!({"type":"join","streamId":"demo","peerId":"pa","rendition":"720p"}),
    )
    .await;
    assert_eq!(
        recv(&mut a).await,
        json!({"type":"peer-list","streamId":"demo","peers":[]})
    );
    send(
        &mut b,
        json!({"type":"join","streamId":"demo","peerId":"pb","rendition":"720p"}),
    )
    .await;
    assert_eq!(
        recv(&mut b).await,
        json!({"type":"peer-list","streamId":"demo","peers":[{"peerId":"pa","rendition":"720p"}]})
    );
    // The operator's view, in the signaling seed's `/status` shape.
    let status = edge_integration::client()
        .get(format!("{}/status", edge.admin()))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let status: Value = serde_json::from_slice(&status).unwrap();
    assert!(
        status["nodeId"].as_str().is_some_and(|n| !n.is_empty()),
        "{status}"
    );
    assert_eq!(status["localConnections"], 2, "{status}");
    assert_eq!(status["localSwarms"], 1, "{status}");
    assert!(status["memory"]["rss"].as_u64().unwrap() > 0, "{status}");
    assert!(status["uptime"].as_f64().unwrap() > 0.0, "{status}");
    assert!(status["timestamp"].as_str().is_some(), "{status}");
    let sdp = json!({"type":"offer","sdp":"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"});
    send(
        &mut b,
        json!({"type":"offer","streamId":"demo","to":"pa","sdp":sdp}),
    )
    .await;
    assert_eq!(
        recv(&mut a).await,
        json!({"type":"offer","streamId":"demo","from":"pb","sdp":sdp})
    );
    send(
        &mut a,
        json!({"type":"answer","streamId":"demo","to":"pb","sdp":{"type":"answer","sdp":"v=0"}}),
    )
    .await;
    assert_eq!(recv(&mut b).await["from"], "pa");
    send(
        &mut a,
        json!({"type":"ice","streamId":"demo","to":"pb","candidate":{"candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host"}}),
    )
    .await;
    assert_eq!(recv(&mut b).await["type"], "ice");
    // Segments: b asks who holds one (once a's heartbeat reply says its `have` was read).
    send(
        &mut a,
        json!({"type":"have","streamId":"demo","segments":["720p/seg-1.ts"]}),
    )
    .await;
    send(&mut a, json!({"type":"heartbeat"})).await;
    assert_eq!(recv(&mut a).await["type"], "heartbeat");
    send(
        &mut b,
        json!({"type":"peers","streamId":"demo","segment":"720p/seg-1.ts"}),
    )
    .await;
    let list = recv(&mut b).await;
    assert_eq!(list["peers"], json!([{"peerId":"pa","rendition":"720p"}]));
    // A bad message gets an error; the socket stays open.
    b.send(Message::text("{nope")).await.unwrap();
    assert_eq!(recv(&mut b).await["code"], "bad_json");
    // a leaves by closing: b's next peer list is empty.
    a.close(None).await.unwrap();
    drop(a);
    let empty = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            send(&mut b, json!({"type":"peers","streamId":"demo"})).await;
            if recv(&mut b).await["peers"] == json!([]) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(empty.is_ok(), "a's peer left the stream");
    let metrics = edge.metrics().await;
    for line in [
        r#"edge_signaling_relays_total{kind="offer",protocol="signaling"} 1"#,
        r#"edge_signaling_relays_total{kind="answer",protocol="signaling"} 1"#,
        r#"edge_signaling_relays_total{kind="ice",protocol="signaling"} 1"#,
        r#"edge_signaling_drops_total{protocol="signaling",reason="bad_json"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_runs_the_room_and_keeps_it_across_a_reconnect() {
    let edge = edge().await;
    let mut host = connect(&edge, "alice").await;
    let mut guest = connect(&edge, "bob").await;
    send(
        &mut host,
        json!({"type":"join-room","roomId":"movie-night","url":"https://cdn.example/vod/movies/m1/index.m3u8"}),
    )
    .await;
    assert_eq!(recv(&mut host).await["hostUserId"], "alice");
    // A userId other than the token's subject is refused.
    send(
        &mut guest,
        json!({"type":"join-room","roomId":"movie-night","userId":"alice"}),
    )
    .await;
    assert_eq!(recv(&mut guest).await["code"], "user_mismatch");
    send(
        &mut guest,
        json!({"type":"join-room","roomId":"movie-night"}),
    )
    .await;
    let joined = recv(&mut guest).await;
    assert_eq!(joined["members"].as_array().unwrap().len(), 2);
    assert_eq!(recv(&mut host).await["event"], "join");
    send(
        &mut host,
        json!({"type":"play","roomId":"movie-night","position":42.0}),
    )
    .await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    send(
        &mut host,
        json!({"type":"pause","roomId":"movie-night","position":43.5}),
    )
    .await;
    let play = recv(&mut guest).await;
    assert_eq!(
        (play["event"].as_str(), play["isPlaying"].as_bool()),
        (Some("play"), Some(true))
    );
    let pause = recv(&mut guest).await;
    assert_eq!(
        (
            pause["event"].as_str(),
            pause["isPlaying"].as_bool(),
            pause["currentTime"].as_f64(),
            pause["by"].as_str()
        ),
        (Some("pause"), Some(false), Some(43.5), Some("alice"))
    );
    let at = pause["serverTime"].as_u64().unwrap();
    assert!(
        at + 1000 >= before && at <= before + 5000,
        "{at} vs {before}"
    );
    // The guest cannot control playback.
    send(
        &mut guest,
        json!({"type":"seek","roomId":"movie-night","position":0}),
    )
    .await;
    assert_eq!(recv(&mut guest).await["code"], "not_host");
    // The host's connection drops; the guest sees it offline; the host comes back on a new
    // connection and is host again, the room as it was.
    drop(host);
    let offline = recv(&mut guest).await;
    assert_eq!(offline["event"], "offline");
    assert_eq!(offline["hostUserId"], "alice");
    let mut again = connect(&edge, "alice").await;
    send(
        &mut again,
        json!({"type":"join-room","roomId":"movie-night"}),
    )
    .await;
    let back = recv(&mut again).await;
    assert_eq!(
        (
            back["event"].as_str(),
            back["hostUserId"].as_str(),
            back["currentTime"].as_f64()
        ),
        (Some("rejoin"), Some("alice"), Some(43.5))
    );
    assert_eq!(recv(&mut guest).await["event"], "rejoin");
    // The host leaves for good: the guest is host.
    send(
        &mut again,
        json!({"type":"leave-room","roomId":"movie-night"}),
    )
    .await;
    assert_eq!(recv(&mut guest).await["hostUserId"], "bob");
    // A drain closes with 1001 and a reconnect hint, as for the tracker.
    let shutdown = tokio::spawn(async move { edge.edge.shutdown().await });
    let frame = close_frame(&mut guest).await;
    assert_eq!(frame.code, CloseCode::Away);
    drop(guest);
    drop(again);
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("the drain ends")
        .unwrap();
}

/// `roles = ["signaling"]`: the viewer listeners serve the endpoints behind their policies and
/// `/health` (no origin in it), nothing else; the node's peers are in the edges' swarms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signaling_node_serves_the_endpoints_alone_in_the_cluster() {
    let redis = edge_testinfra::Redis::start();
    let (edge, node) = (
        clustered(redis.port(), "edge-a").await,
        clustered_as(redis.port(), "signaling-s", "signaling").await,
    );
    let get = |url: String| async move {
        let r = edge_integration::client().get(url).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    let (status, body) = get(format!("{}/health", node.http())).await;
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        (&health["status"], &health["s3"], &health["nodeId"]),
        (&json!("healthy"), &json!("disabled"), &json!("signaling-s")),
        "{health}"
    );
    for path in ["/vod/demo/index.m3u8", "/api/v1/stream/demo", "/"] {
        assert_eq!(get(format!("{}{path}", node.http())).await.0, 404, "{path}");
    }
    let url = format!("ws://{}/ws/signaling", node.edge.addrs().http[0]);
    match connect_async(url.as_str()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 401, "the route's policies apply")
        }
        other => panic!("{other:?}"),
    }
    let token = |sub| edge_integration::jwt(SECRET, sub, 600);
    let mut on_edge = connect_with(&edge, &token("alice")).await;
    let mut on_node = connect_with(&node, &token("bob")).await;
    send(
        &mut on_edge,
        json!({"type":"join","streamId":"demo","peerId":"pa"}),
    )
    .await;
    assert_eq!(recv(&mut on_edge).await["peers"], json!([]));
    send(
        &mut on_node,
        json!({"type":"join","streamId":"demo","peerId":"pb"}),
    )
    .await;
    assert_eq!(recv(&mut on_node).await["peers"], json!([{"peerId":"pa"}]));
    send(
        &mut on_node,
        json!({"type":"offer","streamId":"demo","to":"pa","sdp":{"type":"offer","sdp":"v=0"}}),
    )
    .await;
    assert_eq!(recv(&mut on_edge).await["from"], "pb");
    // The admin listener: healthy without an origin, the node's status.
    let (status, body) = get(format!("{}/health", node.admin())).await;
    assert_eq!(status, 200, "{body}");
    let admin: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(admin["roles"], json!(["signaling"]), "{admin}");
    assert_eq!(admin["components"]["origin"], Value::Null, "{admin}");
    let (_, body) = get(format!("{}/status", node.admin())).await;
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (&status["nodeId"], &status["localConnections"]),
        (&json!("signaling-s"), &json!(1)),
        "{status}"
    );
    // A drain closes the node's sockets with 1001 (clients go to another node).
    let drained = tokio::spawn(node.edge.shutdown());
    assert_eq!(close_frame(&mut on_node).await.code, CloseCode::Away);
    drop(on_node);
    tokio::time::timeout(Duration::from_secs(10), drained)
        .await
        .expect("the drain ends")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_on_two_edges_sharing_redis_find_each_other_and_relay() {
    let redis = edge_testinfra::Redis::start();
    let (a, b) = (
        clustered(redis.port(), "edge-a").await,
        clustered(redis.port(), "edge-b").await,
    );
    let token = |sub| edge_integration::jwt(SECRET, sub, 600);
    let mut on_a = connect_with(&a, &token("alice")).await;
    let mut on_b = connect_with(&b, &token("bob")).await;
    send(
        &mut on_a,
        json!({"type":"join","streamId":"demo","peerId":"pa"}),
    )
    .await;
    assert_eq!(recv(&mut on_a).await["peers"], json!([]));
    send(
        &mut on_b,
        json!({"type":"join","streamId":"demo","peerId":"pb"}),
    )
    .await;
    assert_eq!(recv(&mut on_b).await["peers"], json!([{"peerId":"pa"}]));
    send(
        &mut on_b,
        json!({"type":"offer","streamId":"demo","to":"pa","sdp":{"type":"offer","sdp":"v=0"}}),
    )
    .await;
    let offer = recv(&mut on_a).await;
    assert_eq!(
        (&offer["type"], &offer["from"]),
        (&json!("offer"), &json!("pb"))
    );
    send(
        &mut on_a,
        json!({"type":"answer","streamId":"demo","to":"pb","sdp":{"type":"answer","sdp":"v=0"}}),
    )
    .await;
    assert_eq!(recv(&mut on_b).await["from"], "pa");
    let metrics = b.metrics().await;
    assert!(
        metrics.contains(r#"edge_signaling_cluster_total{event="relay_in"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("edge_signaling_cluster_up 1"), "{metrics}");
}

/// The next `room-state` with `event` (other room states before it skipped).
async fn room_event(ws: &mut Client, event: &str) -> Value {
    loop {
        let m = recv(ws).await;
        assert_eq!(m["type"], "room-state", "{m}");
        if m["event"] == event {
            return m;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_room_spans_two_edges_hands_over_and_survives_a_drain() {
    let redis = edge_testinfra::Redis::start();
    let (a, b) = (
        clustered(redis.port(), "edge-a").await,
        clustered(redis.port(), "edge-b").await,
    );
    let token = |sub| edge_integration::jwt(SECRET, sub, 600);
    let mut alice = connect_with(&a, &token("alice")).await;
    let mut carol = connect_with(&a, &token("carol")).await;
    let mut bob = connect_with(&b, &token("bob")).await;
    let url = "https://cdn.example/movie/master.m3u8";
    let room = |kind: &str| json!({"type": kind, "roomId": "movie-night"});
    send(
        &mut alice,
        json!({"type":"join-room","roomId":"movie-night","url":url}),
    )
    .await;
    room_event(&mut alice, "join").await;
    send(&mut bob, room("join-room")).await;
    assert_eq!(room_event(&mut bob, "join").await["hostUserId"], "alice");
    send(&mut carol, room("join-room")).await;
    room_event(&mut bob, "join").await;
    // The host on edge A plays, then pauses: the member on edge B gets each, with the position
    // and the server's time.
    send(
        &mut alice,
        json!({"type":"play","roomId":"movie-night","position":30.0}),
    )
    .await;
    let playing = room_event(&mut bob, "play").await;
    // Playing: the position is the one at the server's time (a millisecond or so later).
    let at = playing["currentTime"].as_f64().unwrap();
    assert!(
        playing["isPlaying"] == true && (30.0..31.0).contains(&at),
        "{playing}"
    );
    send(
        &mut alice,
        json!({"type":"pause","roomId":"movie-night","position":42.0}),
    )
    .await;
    let paused = room_event(&mut bob, "pause").await;
    assert_eq!(
        (&paused["by"], &paused["isPlaying"], &paused["currentTime"]),
        (&json!("alice"), &json!(false), &json!(42.0))
    );
    // The host leaves: the earliest member left (bob, on B) is host on both edges.
    send(&mut alice, room("leave-room")).await;
    assert_eq!(room_event(&mut carol, "leave").await["hostUserId"], "bob");
    assert_eq!(room_event(&mut bob, "leave").await["hostUserId"], "bob");
    send(
        &mut bob,
        json!({"type":"seek","roomId":"movie-night","position":600.0}),
    )
    .await;
    assert_eq!(room_event(&mut carol, "seek").await["currentTime"], 600.0);
    // Edge A drains (what SIGTERM runs): carol gets 1001, B sees her offline, and she
    // reconnects to B with the room intact.
    let shutdown = tokio::spawn(async move { a.edge.shutdown().await });
    let frame = close_frame(&mut carol).await;
    assert_eq!(frame.code, CloseCode::Away);
    assert_eq!(room_event(&mut bob, "offline").await["by"], "carol");
    drop((alice, carol));
    let mut carol = connect_with(&b, &token("carol")).await;
    send(&mut carol, room("join-room")).await;
    let back = room_event(&mut carol, "rejoin").await;
    assert_eq!(
        (
            &back["hostUserId"],
            &back["currentUrl"],
            &back["currentTime"],
            &back["isPlaying"]
        ),
        (&json!("bob"), &json!(url), &json!(600.0), &json!(false))
    );
    assert_eq!(
        back["members"],
        json!([{"userId":"bob","online":true},{"userId":"carol","online":true}])
    );
    assert_eq!(room_event(&mut bob, "rejoin").await["by"], "carol");
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("the drain ends")
        .unwrap();
}
