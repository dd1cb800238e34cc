//! The WebTorrent tracker on two nodes sharing a real redis-server: a swarm's counts are every
//! node's peers, offers and answers cross nodes, a peer id is one connection's across the
//! cluster, a dead node's peers leave the counts, and without Redis each node serves its own
//! peers and writes them back when it returns.

use edge_kv::{RedisSettings, RedisStore};
use edge_signaling::{
    Cluster, ConnId, Hub, Metrics, Outbox, SignalingConfig, Tracker, TrackerConfig,
};
use edge_testinfra::Redis;
use serde_json::{Value, json};
use std::{sync::Arc, time::Duration};

const H: &str = "aaaaaaaaaaaaaaaaaaaa";
const P1: &str = "11111111111111111111";
const P2: &str = "22222222222222222222";
const H2: &str = "h2h2h2h2h2h2h2h2h2h2";
/// A peer id with characters above U+007F: hex in Redis, the same string back.
const P3: &str = "\u{e9}\u{ff}333333333333333333";

/// A node: the hub owns the cluster's tasks, the tracker shares its cluster.
struct Node {
    hub: Arc<Hub>,
    tracker: Arc<Tracker>,
}

fn node(port: u16, name: &str) -> Node {
    let store = Arc::new(
        RedisStore::new(RedisSettings::loopback(port, Duration::from_millis(500))).unwrap(),
    );
    let metrics = Metrics::unregistered().unwrap();
    let cluster = Arc::new(Cluster::new(store, name));
    let tracker = Tracker::clustered(TrackerConfig::default(), &metrics, cluster.clone());
    let hub = Hub::clustered(SignalingConfig::default(), &metrics, cluster);
    Node { hub, tracker }
}

async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what} within 15 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn up(nodes: &[&Node]) {
    until("every node subscribed", async || {
        nodes.iter().all(|n| n.hub.cluster_up() == Some(true))
    })
    .await;
}

async fn send(n: &Node, conn: ConnId, v: Value) {
    n.tracker.handle(conn, &v.to_string()).await;
}

/// The next message of `rx` (within 5 s).
async fn recv(rx: &mut Outbox) -> Value {
    let m = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a message within 5 s")
        .expect("open");
    serde_json::from_str(&m).unwrap()
}

/// The next message of `rx` if one arrives within 300 ms.
async fn maybe(rx: &mut Outbox) -> Option<Value> {
    let m = tokio::time::timeout(Duration::from_millis(300), rx.recv())
        .await
        .ok()??;
    Some(serde_json::from_str(&m).unwrap())
}

/// Nothing more arrives on `rx` for 200 ms.
async fn quiet(rx: &mut Outbox) {
    if let Ok(m) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
        panic!("nothing more expected, got {m:?}");
    }
}

fn announce(peer: &str, left: u64, event: Option<&str>, offer: Option<&str>) -> Value {
    let mut v = json!({
        "action": "announce", "info_hash": H, "peer_id": peer,
        "numwant": 50, "uploaded": 0, "downloaded": 0, "left": left,
    });
    if let Some(event) = event {
        v["event"] = json!(event);
    }
    if let Some(id) = offer {
        v["offers"] =
            json!([{"offer_id": id, "offer": {"type": "offer", "sdp": format!("v=0 {id}")}}]);
    }
    v
}

fn counts(reply: &Value) -> (u64, u64) {
    (
        reply["complete"].as_u64().unwrap(),
        reply["incomplete"].as_u64().unwrap(),
    )
}

async fn scrape(n: &Node, conn: ConnId, rx: &mut Outbox, hashes: Value) -> Value {
    send(n, conn, json!({"action": "scrape", "info_hash": hashes})).await;
    recv(rx).await["files"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swarm_spans_two_nodes_counts_offers_answers_scrapes_and_closes() {
    let redis = Redis::start();
    let (a, b) = (node(redis.port(), "node-a"), node(redis.port(), "node-b"));
    up(&[&a, &b]).await;
    let (a1, mut ra1) = a.tracker.connect();
    let (b1, mut rb1) = b.tracker.connect();
    let (b2, mut rb2) = b.tracker.connect();

    send(
        &a,
        a1,
        announce(P1, 1000, Some("started"), Some("o1o1o1o1o1o1o1o1o1o1")),
    )
    .await;
    assert_eq!(counts(&recv(&mut ra1).await), (0, 1));
    quiet(&mut ra1).await;

    // P2 on node b: counted with a's peer, its offer goes to P1 on node a.
    send(
        &b,
        b1,
        announce(P2, 1000, Some("started"), Some("o2o2o2o2o2o2o2o2o2o2")),
    )
    .await;
    assert_eq!(counts(&recv(&mut rb1).await), (0, 2));
    let offer = recv(&mut ra1).await;
    assert_eq!(offer["peer_id"], P2);
    assert_eq!(offer["offer_id"], "o2o2o2o2o2o2o2o2o2o2");
    assert_eq!(offer["offer"]["sdp"], "v=0 o2o2o2o2o2o2o2o2o2o2");

    // P1 answers: the answer reaches P2 on node b, nothing comes back to P1.
    send(
        &a,
        a1,
        json!({"action": "announce", "info_hash": H, "peer_id": P1, "to_peer_id": P2,
               "offer_id": "o2o2o2o2o2o2o2o2o2o2", "answer": {"type": "answer", "sdp": "v=0 ans"}}),
    )
    .await;
    let answer = recv(&mut rb1).await;
    assert_eq!(answer["peer_id"], P1);
    assert_eq!(answer["answer"]["sdp"], "v=0 ans");
    quiet(&mut ra1).await;

    // Completed on b: a's scrape counts it; a scrape of every swarm lists the swarm once.
    send(&b, b1, announce(P2, 0, Some("completed"), None)).await;
    assert_eq!(counts(&recv(&mut rb1).await), (1, 1));
    let files = scrape(&a, a1, &mut ra1, json!(H)).await;
    assert_eq!(
        files[H],
        json!({"complete": 1, "incomplete": 1, "downloaded": 1})
    );
    send(&a, a1, json!({"action": "scrape"})).await;
    let all = recv(&mut ra1).await;
    assert_eq!(all["files"].as_object().unwrap().len(), 1, "{all}");

    // P1 is a1's on node a: another connection on node b cannot announce it.
    send(&b, b2, announce(P1, 10, Some("started"), None)).await;
    let refused = recv(&mut rb2).await;
    assert_eq!(
        refused["failure reason"],
        "peer_id in use by another connection"
    );
    // A latin-1 peer id on b, its id the same string on a.
    send(
        &b,
        b2,
        announce(P3, 10, Some("started"), Some("o3o3o3o3o3o3o3o3o3o3")),
    )
    .await;
    assert_eq!(counts(&recv(&mut rb2).await), (1, 2));
    // One offer, to one of the two other peers (a random pick across both nodes).
    let offered = [maybe(&mut ra1).await, maybe(&mut rb1).await];
    let offered: Vec<&Value> = offered.iter().flatten().collect();
    assert_eq!(offered.len(), 1, "{offered:?}");
    assert_eq!(offered[0]["peer_id"], P3);

    // b1 closes: its peer leaves the swarm on every node (the synthetic stop).
    b.tracker.disconnect(b1).await;
    let files = scrape(&a, a1, &mut ra1, json!([H])).await;
    assert_eq!(
        files[H],
        json!({"complete": 0, "incomplete": 2, "downloaded": 0})
    );
    // P1 stops on a: the swarm is b2's P3 alone.
    send(&a, a1, announce(P1, 10, Some("stopped"), None)).await;
    assert_eq!(counts(&recv(&mut ra1).await), (0, 1));
    b.tracker.disconnect(b2).await;
    let files = scrape(&a, a1, &mut ra1, json!([H])).await;
    assert_eq!(
        files[H],
        json!({"complete": 0, "incomplete": 0, "downloaded": 0})
    );
    send(&a, a1, json!({"action": "scrape"})).await;
    assert_eq!(recv(&mut ra1).await["files"], json!({}));
    drop((rb1, rb2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_leaves_the_counts_and_redis_back_gets_every_peer_back() {
    let mut redis = Redis::start();
    let port = redis.port();
    let (a, b) = (node(port, "node-a"), node(port, "node-b"));
    up(&[&a, &b]).await;
    let (a1, mut ra1) = a.tracker.connect();
    let (b1, mut rb1) = b.tracker.connect();
    send(&a, a1, announce(P1, 1000, Some("started"), None)).await;
    recv(&mut ra1).await;
    send(&b, b1, announce(P2, 1000, Some("started"), None)).await;
    assert_eq!(counts(&recv(&mut rb1).await), (0, 2));
    // A swarm of b's alone.
    let mut other = announce(P2, 1000, Some("started"), None);
    other["info_hash"] = json!(H2);
    send(&b, b1, other).await;
    assert_eq!(counts(&recv(&mut rb1).await), (0, 1));

    // Node b dies (its tasks end with it) and was last seen long ago: a counts it out, and
    // offers go to nobody of b's.
    drop((b, rb1));
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("ZADD")
        .arg("signaling:nodes")
        .arg(0)
        .arg("node-b")
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    send(
        &a,
        a1,
        announce(P1, 900, None, Some("o1o1o1o1o1o1o1o1o1o1")),
    )
    .await;
    assert_eq!(counts(&recv(&mut ra1).await), (0, 1));
    // b's own swarm leaves the cluster's swarm list (node a's sweep), unasked.
    until("b's swarm swept", async || {
        redis::cmd("ZSCORE")
            .arg("tracker:swarms")
            .arg(hex(H2))
            .query_async::<Option<f64>>(&mut c)
            .await
            .unwrap()
            .is_none()
    })
    .await;
    assert!(
        redis::cmd("ZSCORE")
            .arg("tracker:swarms")
            .arg(hex(H))
            .query_async::<Option<f64>>(&mut c)
            .await
            .unwrap()
            .is_some(),
        "a's swarm stays"
    );

    // Redis goes: node a goes on with its own peers.
    redis.stop();
    until("node a sees redis gone", async || {
        a.hub.cluster_up() == Some(false)
    })
    .await;
    let (a2, mut ra2) = a.tracker.connect();
    send(
        &a,
        a2,
        announce(P3, 0, Some("started"), Some("o3o3o3o3o3o3o3o3o3o3")),
    )
    .await;
    assert_eq!(counts(&recv(&mut ra2).await), (1, 1));
    assert_eq!(recv(&mut ra1).await["peer_id"], P3);

    // Redis returns empty: a writes its peers back, and a new node counts them.
    let _redis = Redis::start_on(port);
    let c = node(port, "node-c");
    up(&[&a, &c]).await;
    let (c1, mut rc1) = c.tracker.connect();
    until("a's peers back in redis", async || {
        let files = scrape(&c, c1, &mut rc1, json!(H)).await;
        files[H] == json!({"complete": 1, "incomplete": 1, "downloaded": 1})
    })
    .await;
    drop(ra2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_redis_missed_and_a_ghost_entry_are_made_good_by_the_next_renewal() {
    let redis = Redis::start();
    let port = redis.port();
    let (a, b) = (node(port, "node-a"), node(port, "node-b"));
    up(&[&a, &b]).await;
    let (a1, mut ra1) = a.tracker.connect();
    let (a2, mut ra2) = a.tracker.connect();
    let (b1, mut rb1) = b.tracker.connect();
    send(&a, a1, announce(P1, 1000, Some("started"), None)).await;
    recv(&mut ra1).await;
    // A second swarm of a1's alone: a1's close empties it on node a.
    let mut other = announce(P1, 1000, Some("started"), None);
    other["info_hash"] = json!(H2);
    send(&a, a1, other).await;
    assert_eq!(counts(&recv(&mut ra1).await), (0, 1));
    send(&a, a2, announce(P3, 1000, Some("started"), None)).await;
    assert_eq!(counts(&recv(&mut ra2).await), (0, 2));
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    // A ghost: an entry of node a's for a peer it does not hold (a leave that never landed).
    let key = format!("tracker:{}:peers", hex(H));
    redis::cmd("HSET")
        .arg(&key)
        .arg(hex(P2))
        .arg("node-a\t1")
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    // Redis takes no writes for 6 s: a1's close does not reach it.
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(6000)
        .arg("WRITE")
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    a.tracker.disconnect(a1).await;
    drop(ra1);
    tokio::time::sleep(Duration::from_secs(6)).await;
    // Within a keep-alive of Redis taking writes again, node a's view is what it holds: P3.
    until("node a's view renewed", async || {
        let files = scrape(&b, b1, &mut rb1, json!(H)).await;
        files[H] == json!({"complete": 0, "incomplete": 1, "downloaded": 0})
    })
    .await;
    until("node a out of the swarm it left", async || {
        let files = scrape(&b, b1, &mut rb1, json!(H2)).await;
        files[H2] == json!({"complete": 0, "incomplete": 0, "downloaded": 0})
    })
    .await;
    until("the ghost gone", async || {
        !redis::cmd("HEXISTS")
            .arg(&key)
            .arg(hex(P2))
            .query_async::<bool>(&mut c)
            .await
            .unwrap()
    })
    .await;
    // P2 is free for b's viewer, and P1 too.
    send(&b, b1, announce(P2, 1000, Some("started"), None)).await;
    assert_eq!(counts(&recv(&mut rb1).await), (0, 2));
    send(&b, b1, announce(P1, 1000, Some("started"), None)).await;
    assert_eq!(counts(&recv(&mut rb1).await), (0, 3));
    drop(ra2);
}

/// An id as Redis keys name it.
fn hex(id: &str) -> String {
    id.chars()
        .map(|c| format!("{:02x}", u32::from(c)))
        .collect()
}
