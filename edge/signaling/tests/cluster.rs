//! Two signaling nodes sharing a real redis-server: peers on either node are listed to each
//! other and relays cross nodes through pub/sub; a peer id is one viewer's across the cluster;
//! without Redis each node serves its own peers, and takes them back into Redis when it returns.

use edge_kv::{RedisSettings, RedisStore};
use edge_signaling::{Cluster, ConnId, Hub, Metrics, Outbox, SignalingConfig, Viewer};
use edge_testinfra::Redis;
use serde_json::{Value, json};
use std::{sync::Arc, time::Duration};

fn node(port: u16, name: &str) -> Arc<Hub> {
    let store = Arc::new(
        RedisStore::new(RedisSettings::loopback(port, Duration::from_millis(500))).unwrap(),
    );
    Hub::clustered(
        SignalingConfig::default(),
        &Metrics::unregistered().unwrap(),
        Arc::new(Cluster::new(store, name)),
    )
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "{what} within 15 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until both nodes are subscribed, stops Redis, and waits until both noticed.
async fn redis_goes_away(a: &Hub, b: &Hub, redis: &mut Redis) {
    until("both nodes subscribed", || {
        a.cluster_up() == Some(true) && b.cluster_up() == Some(true)
    })
    .await;
    redis.stop();
    until("both nodes see redis gone", || {
        a.cluster_up() == Some(false) && b.cluster_up() == Some(false)
    })
    .await;
}

async fn send(h: &Hub, conn: ConnId, v: Value) {
    h.handle(conn, &v.to_string()).await;
}

/// The next message of `rx` (within 5 s).
async fn recv(rx: &mut Outbox) -> Value {
    let m = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a message within 5 s")
        .expect("open");
    serde_json::from_str(&m).unwrap()
}

fn ids(list: &Value) -> Vec<String> {
    let mut ids: Vec<String> = list["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["peerId"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_on_two_nodes_see_each_other_and_relay_through_redis() {
    let redis = Redis::start();
    let (a, b) = (node(redis.port(), "node-a"), node(redis.port(), "node-b"));
    until("both nodes subscribed", || {
        a.cluster_up() == Some(true) && b.cluster_up() == Some(true)
    })
    .await;
    let (ca, mut ra) = a.connect(&Viewer::default());
    let (cb, mut rb) = b.connect(&Viewer::default());
    let (cb2, mut rb2) = b.connect(&Viewer::default());
    send(
        &a,
        ca,
        json!({"type":"join","streamId":"s","peerId":"pa","rendition":"720p"}),
    )
    .await;
    assert_eq!(ids(&recv(&mut ra).await), Vec::<String>::new());
    send(&b, cb, json!({"type":"join","streamId":"s","peerId":"pb"})).await;
    let list = recv(&mut rb).await;
    assert_eq!(
        list["peers"],
        json!([{"peerId":"pa","rendition":"720p"}]),
        "a's peer listed on b"
    );
    send(
        &b,
        cb2,
        json!({"type":"join","streamId":"s","peerId":"pb2"}),
    )
    .await;
    assert_eq!(ids(&recv(&mut rb2).await), ["pa", "pb"]);

    // b → a and a → b across nodes, `from` as the sending node saw it.
    let sdp = json!({"type":"offer","sdp":"v=0"});
    send(
        &b,
        cb,
        json!({"type":"offer","streamId":"s","to":"pa","sdp":sdp}),
    )
    .await;
    assert_eq!(
        recv(&mut ra).await,
        json!({"type":"offer","streamId":"s","from":"pb","sdp":sdp})
    );
    send(
        &a,
        ca,
        json!({"type":"answer","streamId":"s","to":"pb","sdp":{"type":"answer"}}),
    )
    .await;
    let answer = recv(&mut rb).await;
    assert_eq!(
        (&answer["type"], &answer["from"]),
        (&json!("answer"), &json!("pa"))
    );
    // A peer nobody holds: no_peer, from either node.
    send(
        &a,
        ca,
        json!({"type":"ice","streamId":"s","to":"ghost","candidate":{}}),
    )
    .await;
    assert_eq!(recv(&mut ra).await["code"], "no_peer");

    // A peer id is one viewer's on the whole cluster.
    let (cx, mut rx) = a.connect(&Viewer::default());
    send(&a, cx, json!({"type":"join","streamId":"s","peerId":"pb"})).await;
    assert_eq!(recv(&mut rx).await["code"], "peer_id_taken");

    // b's first peer closes: a no longer lists it (the leave reaches Redis shortly after).
    b.disconnect(cb);
    let (cy, mut ry) = a.connect(&Viewer::default());
    let mut n = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        send(
            &a,
            cy,
            json!({"type":"join","streamId":"s","peerId":format!("py{n}")}),
        )
        .await;
        let list = recv(&mut ry).await;
        if !ids(&list).contains(&"pb".to_owned()) {
            assert_eq!(ids(&list), ["pa", "pb2"]);
            break;
        }
        send(&a, cy, json!({"type":"leave","streamId":"s"})).await;
        n += 1;
        assert!(tokio::time::Instant::now() < deadline, "pb still listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_each_node_serves_its_own_peers_and_rejoins_when_it_returns() {
    let mut redis = Redis::start();
    let port = redis.port();
    let (a, b) = (node(port, "node-a"), node(port, "node-b"));
    redis_goes_away(&a, &b, &mut redis).await;
    // Local service goes on: two peers of node a find each other and relay.
    let (c1, mut r1) = a.connect(&Viewer::default());
    let (c2, mut r2) = a.connect(&Viewer::default());
    send(&a, c1, json!({"type":"join","streamId":"s","peerId":"p1"})).await;
    assert_eq!(ids(&recv(&mut r1).await), Vec::<String>::new());
    send(&a, c2, json!({"type":"join","streamId":"s","peerId":"p2"})).await;
    assert_eq!(ids(&recv(&mut r2).await), ["p1"]);
    send(
        &a,
        c2,
        json!({"type":"offer","streamId":"s","to":"p1","sdp":{}}),
    )
    .await;
    assert_eq!(recv(&mut r1).await["from"], "p2");
    // Redis returns (empty): node a writes its peers back, and b's viewers see them.
    let _redis = Redis::start_on(port);
    until("both nodes subscribed again", || {
        a.cluster_up() == Some(true) && b.cluster_up() == Some(true)
    })
    .await;
    let (c3, mut r3) = b.connect(&Viewer::default());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for attempt in 0.. {
        send(
            &b,
            c3,
            json!({"type":"join","streamId":"s","peerId":format!("p3-{attempt}")}),
        )
        .await;
        let list = recv(&mut r3).await;
        if ids(&list) == ["p1", "p2"] {
            break;
        }
        send(&b, c3, json!({"type":"leave","streamId":"s"})).await;
        assert!(
            tokio::time::Instant::now() < deadline,
            "a's peers back in redis: {list}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_id_taken_on_two_nodes_while_redis_was_away_ends_with_one_owner() {
    let mut redis = Redis::start();
    let port = redis.port();
    let (a, b) = (node(port, "node-a"), node(port, "node-b"));
    redis_goes_away(&a, &b, &mut redis).await;
    let (ca, mut ra) = a.connect(&Viewer::default());
    let (cb, mut rb) = b.connect(&Viewer::default());
    send(&a, ca, json!({"type":"join","streamId":"s","peerId":"x"})).await;
    send(&b, cb, json!({"type":"join","streamId":"s","peerId":"x"})).await;
    assert_eq!(recv(&mut ra).await["type"], "peer-list");
    assert_eq!(recv(&mut rb).await["type"], "peer-list");
    // Redis returns: both write their peers back; the second finds the first's and evicts its
    // own peer, telling its connection.
    let _redis = Redis::start_on(port);
    let evicted = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::select! {
            m = recv_any(&mut ra) => ("a", m),
            m = recv_any(&mut rb) => ("b", m),
        }
    })
    .await
    .expect("one of the two evicted within 30 s");
    assert_eq!(evicted.1["code"], "peer_id_taken", "{evicted:?}");
    let (loser, winner) = if evicted.0 == "a" { (&a, &b) } else { (&b, &a) };
    assert_eq!(loser.stats().1, 0, "the evicted peer left its node");
    assert_eq!(winner.stats().1, 1);
}

/// The next message of `rx`, however long it takes.
async fn recv_any(rx: &mut Outbox) -> Value {
    let m = rx.recv().await.expect("open");
    serde_json::from_str(&m).unwrap()
}

/// Room states until one with `event` (other members' joins and offline notices come first).
async fn state_of(rx: &mut Outbox, event: &str) -> Value {
    loop {
        let m = recv(rx).await;
        assert_eq!(m["type"], "room-state", "{m}");
        if m["event"] == event {
            return m;
        }
    }
}

fn as_sub(sub: &str) -> Viewer {
    Viewer {
        sub: Some(sub.into()),
        ..Viewer::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_spans_two_nodes_hands_over_and_survives_its_nodes_drain() {
    let redis = Redis::start();
    let (a, b) = (node(redis.port(), "node-a"), node(redis.port(), "node-b"));
    until("both nodes subscribed", || {
        a.cluster_up() == Some(true) && b.cluster_up() == Some(true)
    })
    .await;
    let (alice, mut ra) = a.connect(&as_sub("alice"));
    let (bob, mut rb) = b.connect(&as_sub("bob"));
    let (carol, mut rc) = b.connect(&as_sub("carol"));
    let url = "https://cdn.example/movie/master.m3u8";
    send(
        &a,
        alice,
        json!({"type":"join-room","roomId":"movie-night","url":url}),
    )
    .await;
    assert_eq!(state_of(&mut ra, "join").await["hostUserId"], "alice");
    send(&b, bob, json!({"type":"join-room","roomId":"movie-night"})).await;
    send(
        &b,
        carol,
        json!({"type":"join-room","roomId":"movie-night"}),
    )
    .await;
    let joined = state_of(&mut rb, "join").await;
    assert_eq!(
        (&joined["hostUserId"], &joined["currentUrl"]),
        (&json!("alice"), &json!(url))
    );
    // The host on node A plays and pauses: the member on node B gets it, with the position.
    send(
        &a,
        alice,
        json!({"type":"play","roomId":"movie-night","position":5.0}),
    )
    .await;
    send(
        &a,
        alice,
        json!({"type":"pause","roomId":"movie-night","position":12.5}),
    )
    .await;
    let paused = state_of(&mut rb, "pause").await;
    assert_eq!(
        (&paused["by"], &paused["currentTime"], &paused["isPlaying"]),
        (&json!("alice"), &json!(12.5), &json!(false))
    );
    assert!(paused["serverTime"].as_u64().unwrap() > 1_700_000_000_000);
    // A member on B is not the host: refused there, nothing changes.
    send(&b, bob, json!({"type":"play","roomId":"movie-night"})).await;
    assert_eq!(state_of_error(&mut rb).await, "not_host");
    // The keys the seeds' operators read.
    let mut redis_conn = redis::Client::open(format!("redis://127.0.0.1:{}", redis.port()))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let room: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg("room:movie-night")
        .query_async(&mut redis_conn)
        .await
        .unwrap();
    assert_eq!(room["host_user_id"], "alice");
    assert_eq!(room["current_time"], "12.5");
    assert_eq!(room["is_playing"], "false");
    let users: Vec<String> = redis::cmd("ZRANGE")
        .arg("room:movie-night:users")
        .arg(0)
        .arg(-1)
        .query_async(&mut redis_conn)
        .await
        .unwrap();
    assert_eq!(users, ["alice", "bob", "carol"]);
    let bob_entry: Option<String> = redis::cmd("HGET")
        .arg("user:bob")
        .arg("movie-night")
        .query_async(&mut redis_conn)
        .await
        .unwrap();
    assert_eq!(bob_entry.as_deref(), Some("online:node-b"));
    // The host leaves: the earliest member still there (bob) becomes host, on every node.
    send(
        &a,
        alice,
        json!({"type":"leave-room","roomId":"movie-night"}),
    )
    .await;
    let left = state_of(&mut rc, "leave").await;
    assert_eq!(
        (&left["by"], &left["hostUserId"]),
        (&json!("alice"), &json!("bob"))
    );
    // Alice comes back on A; then A drains (its connections closed as SIGTERM closes them)
    // and she reconnects to B: the room is intact, she is a member again.
    send(
        &a,
        alice,
        json!({"type":"join-room","roomId":"movie-night"}),
    )
    .await;
    assert_eq!(state_of(&mut rb, "join").await["by"], "alice");
    send(
        &b,
        bob,
        json!({"type":"seek","roomId":"movie-night","position":600.0}),
    )
    .await;
    assert_eq!(state_of(&mut ra, "seek").await["currentTime"], 600.0);
    a.close(alice).await;
    let off = state_of(&mut rb, "offline").await;
    assert_eq!(off["by"], "alice");
    drop(a);
    let (alice2, mut ra2) = b.connect(&as_sub("alice"));
    send(
        &b,
        alice2,
        json!({"type":"join-room","roomId":"movie-night"}),
    )
    .await;
    let back = state_of(&mut ra2, "rejoin").await;
    assert_eq!(
        (
            &back["hostUserId"],
            &back["currentUrl"],
            &back["currentTime"],
            &back["isPlaying"]
        ),
        (&json!("bob"), &json!(url), &json!(600.0), &json!(false))
    );
    let online: Vec<bool> = back["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["online"].as_bool().unwrap())
        .collect();
    assert_eq!(online, [true, true, true]);
    // Everybody leaves: the room's keys are gone.
    for (conn, rx) in [(bob, &mut rb), (carol, &mut rc), (alice2, &mut ra2)] {
        send(
            &b,
            conn,
            json!({"type":"leave-room","roomId":"movie-night"}),
        )
        .await;
        let _ = rx;
    }
    let exists: i64 = redis::cmd("EXISTS")
        .arg("room:movie-night:users")
        .query_async(&mut redis_conn)
        .await
        .unwrap();
    assert_eq!(exists, 0);
    until("node B holds no room", || b.stats().2 == 0).await;
    // The room's hash keeps only its version (a tombstone, for the room's TTL): a room made
    // again goes on from it, so a write read before the room went cannot pass the check.
    let room_hash = || {
        let mut c = redis_conn.clone();
        async move {
            let hash: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
                .arg("room:movie-night")
                .query_async(&mut c)
                .await
                .unwrap();
            hash
        }
    };
    let tomb = room_hash().await;
    assert_eq!(tomb.keys().collect::<Vec<_>>(), ["version"], "{tomb:?}");
    let gone: u64 = tomb["version"].parse().unwrap();
    send(&b, bob, json!({"type":"join-room","roomId":"movie-night"})).await;
    until("the room is made again", || b.stats().2 == 1).await;
    let again = room_hash().await;
    assert_eq!(again["version"], (gone + 1).to_string(), "{again:?}");
}

/// The code of the next `error` of `rx`, room states before it skipped.
async fn state_of_error(rx: &mut Outbox) -> Value {
    loop {
        let m = recv(rx).await;
        if m["type"] == "error" {
            return m["code"].clone();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_leave_never_deletes_a_later_join_of_the_same_peer_id() {
    let redis = Redis::start();
    let a = node(redis.port(), "node-a");
    let mut redis_conn = redis::Client::open(format!("redis://127.0.0.1:{}", redis.port()))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for round in 0..20 {
        // A leave's cluster part runs in a task; the join after it is written at once.
        let (c1, mut r1) = a.connect(&Viewer::default());
        send(&a, c1, json!({"type":"join","streamId":"s","peerId":"p"})).await;
        recv(&mut r1).await;
        a.disconnect(c1);
        let (c2, mut r2) = a.connect(&Viewer::default());
        send(&a, c2, json!({"type":"join","streamId":"s","peerId":"p"})).await;
        recv(&mut r2).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        let entry: Option<String> = redis::cmd("HGET")
            .arg("stream:s:peers")
            .arg("p")
            .query_async(&mut redis_conn)
            .await
            .unwrap();
        assert!(
            entry.is_some(),
            "round {round}: the second join's entry is there"
        );
        a.disconnect(c2);
    }
}
