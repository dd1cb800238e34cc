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
    let m = tokio::time::timeout(Duration::from_secs(5), rx.messages.recv())
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
    let m = rx.messages.recv().await.expect("open");
    serde_json::from_str(&m).unwrap()
}
