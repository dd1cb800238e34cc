//! The tracker against the replies the npm `bittorrent-tracker` 11.2.3 server gave to the same
//! sequence (recorded with its server and the `ws` client, 2026-12-03).

use super::*;
use serde_json::json;

const H: &str = "aaaaaaaaaaaaaaaaaaaa";
const P1: &str = "11111111111111111111";
const P2: &str = "22222222222222222222";

fn tracker() -> Tracker {
    Tracker::new(TrackerConfig::default(), &Metrics::unregistered().unwrap())
}

/// The tracker without a cluster never waits: its futures finish at the first poll.
fn handle(t: &Tracker, conn: ConnId, text: &str) {
    futures::executor::block_on(t.handle(conn, text));
}

fn disconnect(t: &Tracker, conn: ConnId) {
    futures::executor::block_on(t.disconnect(conn));
}

fn drain(rx: &mut Outbox) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(m) = rx.try_recv() {
        out.push(m.to_string());
    }
    out
}

#[test]
fn announce_offer_answer_scrape_and_close_as_the_reference_answers_them() {
    let t = tracker();
    let (a, mut ra) = t.connect();
    let (b, mut rb) = t.connect();
    // Raw text: the offers and answers are relayed as sent, key order included.
    handle(
        &t,
        a,
        r#"{"action":"announce","info_hash":"aaaaaaaaaaaaaaaaaaaa","peer_id":"11111111111111111111","numwant":5,"uploaded":0,"downloaded":0,"left":100,"event":"started","offers":[{"offer_id":"oooooooooooooooooooo","offer":{"type":"offer","sdp":"v=0 a"}}]}"#,
    );
    handle(
        &t,
        b,
        r#"{"action":"announce","info_hash":"aaaaaaaaaaaaaaaaaaaa","peer_id":"22222222222222222222","numwant":5,"uploaded":0,"downloaded":0,"left":0,"event":"started","offers":[{"offer_id":"pppppppppppppppppppp","offer":{"type":"offer","sdp":"v=0 b"}}]}"#,
    );
    handle(
        &t,
        a,
        r#"{"action":"announce","info_hash":"aaaaaaaaaaaaaaaaaaaa","peer_id":"11111111111111111111","to_peer_id":"22222222222222222222","answer":{"type":"answer","sdp":"v=0 ans"},"offer_id":"pppppppppppppppppppp"}"#,
    );
    handle(&t, b, &json!({"action":"scrape","info_hash":H}).to_string());
    handle(
        &t,
        b,
        &json!({"action":"scrape","info_hash":[H,"bbbbbbbbbbbbbbbbbbbb"]}).to_string(),
    );
    handle(&t, b, &json!({"action":"scrape"}).to_string());
    handle(
        &t,
        b,
        &json!({"action":"announce","info_hash":"short","peer_id":P2}).to_string(),
    );
    handle(&t, b, &json!({"action":"nope"}).to_string());
    assert_eq!(
        drain(&mut ra),
        [
            r#"{"complete":0,"incomplete":1,"action":"announce","interval":120,"info_hash":"aaaaaaaaaaaaaaaaaaaa"}"#,
            r#"{"action":"announce","offer":{"type":"offer","sdp":"v=0 b"},"offer_id":"pppppppppppppppppppp","peer_id":"22222222222222222222","info_hash":"aaaaaaaaaaaaaaaaaaaa"}"#,
        ]
    );
    assert_eq!(
        drain(&mut rb),
        [
            r#"{"complete":1,"incomplete":1,"action":"announce","interval":120,"info_hash":"aaaaaaaaaaaaaaaaaaaa"}"#,
            r#"{"action":"announce","answer":{"type":"answer","sdp":"v=0 ans"},"offer_id":"pppppppppppppppppppp","peer_id":"11111111111111111111","info_hash":"aaaaaaaaaaaaaaaaaaaa"}"#,
            r#"{"action":"scrape","files":{"aaaaaaaaaaaaaaaaaaaa":{"complete":1,"incomplete":1,"downloaded":1}},"flags":{"min_request_interval":600}}"#,
            r#"{"action":"scrape","files":{"aaaaaaaaaaaaaaaaaaaa":{"complete":1,"incomplete":1,"downloaded":1},"bbbbbbbbbbbbbbbbbbbb":{"complete":0,"incomplete":0,"downloaded":0}},"flags":{"min_request_interval":600}}"#,
            r#"{"action":"scrape","files":{"aaaaaaaaaaaaaaaaaaaa":{"complete":1,"incomplete":1,"downloaded":1}},"flags":{"min_request_interval":600}}"#,
            r#"{"failure reason":"invalid info_hash"}"#,
            r#"{"failure reason":"invalid action in WS request: nope"}"#,
        ]
    );
    // a's socket closes: a synthetic `stopped` in its swarm, nothing sent.
    disconnect(&t, a);
    handle(&t, b, &json!({"action":"scrape","info_hash":H}).to_string());
    assert_eq!(
        drain(&mut rb),
        [
            r#"{"action":"scrape","files":{"aaaaaaaaaaaaaaaaaaaa":{"complete":1,"incomplete":0,"downloaded":1}},"flags":{"min_request_interval":600}}"#
        ]
    );
    disconnect(&t, b);
    assert_eq!(t.stats(), (0, 0), "empty swarms go");
}

#[test]
fn every_field_is_checked_and_a_bad_message_harms_nobody_else() {
    let t = tracker();
    let (a, mut ra) = t.connect();
    let cases: &[(serde_json::Value, &str)] = &[
        (
            json!({"action":"announce","info_hash":H}),
            r#"{"failure reason":"invalid peer_id"}"#,
        ),
        (
            json!({"action":"announce","info_hash":"\u{100}aaaaaaaaaaaaaaaaaaa","peer_id":P1}),
            r#"{"failure reason":"invalid info_hash"}"#,
        ),
        (
            json!({"action":"announce","info_hash":H,"peer_id":P1,"answer":{"type":"answer"}}),
            r#"{"failure reason":"invalid `to_peer_id` (required with `answer`)"}"#,
        ),
        (
            json!({"action":"announce","info_hash":H,"peer_id":P1,"event":"bogus"}),
            r#"{"action":"announce","failure reason":"invalid event","info_hash":"aaaaaaaaaaaaaaaaaaaa"}"#,
        ),
        (
            json!({"action":"announce","info_hash":H,"peer_id":P1,"offers":[{"offer":{}}]}),
            r#"{"action":"announce","failure reason":"invalid offer_id","info_hash":"aaaaaaaaaaaaaaaaaaaa"}"#,
        ),
        (
            json!({"action":"announce","info_hash":H,"peer_id":P1,"offers":[{"offer_id":P2,"offer":"x"}]}),
            r#"{"action":"announce","failure reason":"invalid offer","info_hash":"aaaaaaaaaaaaaaaaaaaa"}"#,
        ),
        (
            json!({"action":"scrape","info_hash":5}),
            r#"{"failure reason":"invalid info_hash"}"#,
        ),
        (
            json!({"action":"scrape","info_hash":[H, "x"]}),
            r#"{"failure reason":"invalid info_hash"}"#,
        ),
        (
            json!({}),
            r#"{"failure reason":"invalid action in WS request: undefined"}"#,
        ),
        (
            json!({"action":7}),
            r#"{"failure reason":"invalid action in WS request: 7"}"#,
        ),
    ];
    for (msg, want) in cases {
        handle(&t, a, &msg.to_string());
        assert_eq!(drain(&mut ra), [*want], "{msg}");
    }
    for garbage in ["not json", "null", "5", "[1,2]", "{\"action\":"] {
        handle(&t, a, garbage);
        let got = drain(&mut ra);
        assert_eq!(got.len(), 1, "{garbage}");
        assert!(
            got[0].starts_with(r#"{"failure reason":""#),
            "{garbage}: {got:?}"
        );
    }
    assert_eq!(t.stats(), (0, 0), "no refused announce created a swarm");
}

#[test]
fn counts_follow_the_events_and_a_peer_id_belongs_to_its_connection() {
    let t = tracker();
    let (a, mut ra) = t.connect();
    let (b, mut rb) = t.connect();
    let announce = |peer: &str, event: &str, left: serde_json::Value| {
        json!({"action":"announce","info_hash":H,"peer_id":peer,"event":event,"left":left})
            .to_string()
    };
    let last = |rx: &mut Outbox| -> serde_json::Value {
        let got = drain(rx);
        serde_json::from_str(got.last().unwrap()).unwrap()
    };
    let counts = |v: serde_json::Value| {
        (
            v["complete"].as_u64().unwrap(),
            v["incomplete"].as_u64().unwrap(),
        )
    };
    handle(&t, a, &announce(P1, "started", json!(5)));
    assert_eq!(counts(last(&mut ra)), (0, 1));
    handle(&t, a, &announce(P1, "update", json!("0")));
    assert_eq!(counts(last(&mut ra)), (1, 0), "left \"0\" is complete");
    handle(&t, a, &announce(P1, "update", json!(10)));
    assert_eq!(counts(last(&mut ra)), (1, 0), "never back to incomplete");
    handle(&t, a, &announce(P2, "started", json!(null)));
    assert_eq!(
        counts(last(&mut ra)),
        (2, 0),
        "left null is 0 in JavaScript"
    );
    handle(&t, a, &announce(P2, "stopped", json!(null)));
    assert_eq!(counts(last(&mut ra)), (1, 0));
    // Another connection can neither take P1 (its offers and answers) nor stop it.
    handle(&t, b, &announce(P1, "update", json!(0)));
    assert_eq!(
        last(&mut rb)["failure reason"],
        "peer_id in use by another connection"
    );
    handle(&t,
        b,
        &json!({"action":"announce","info_hash":H,"peer_id":P1,"to_peer_id":P2,"answer":{"type":"answer"},"offer_id":P2}).to_string(),
    );
    assert_eq!(
        last(&mut rb)["failure reason"],
        "peer_id in use by another connection"
    );
    handle(&t, b, &announce(P1, "stopped", json!(0)));
    assert_eq!(counts(last(&mut rb)), (1, 0), "not stopped by b");
    assert_eq!(t.stats(), (1, 1));
    // Once a's connection is gone, the id is free.
    disconnect(&t, a);
    assert_eq!(t.stats(), (0, 0));
    handle(&t, b, &announce(P1, "started", json!(0)));
    assert_eq!(counts(last(&mut rb)), (1, 0));
    handle(&t, b, &announce(P1, "stopped", json!(0)));
    assert_eq!(counts(last(&mut rb)), (0, 0));
    assert_eq!(t.stats(), (0, 0));
}

#[test]
fn one_connection_cannot_fill_the_tracker() {
    let cfg = TrackerConfig {
        max_per_connection: 3,
        ..TrackerConfig::default()
    };
    let t = Tracker::new(cfg, &Metrics::unregistered().unwrap());
    let (a, mut ra) = t.connect();
    for i in 0..5 {
        let hash = format!("{i}").repeat(20);
        handle(
            &t,
            a,
            &json!({"action":"announce","info_hash":hash,"peer_id":P1}).to_string(),
        );
    }
    let got = drain(&mut ra);
    assert_eq!(got.len(), 5);
    assert!(got[..3].iter().all(|m| m.contains("\"incomplete\":1")));
    assert!(
        got[3..]
            .iter()
            .all(|m| m.contains("too many swarms on this connection"))
    );
    // Stopping one frees a place.
    handle(
        &t,
        a,
        &json!({"action":"announce","info_hash":"0".repeat(20),"peer_id":P1,"event":"stopped"})
            .to_string(),
    );
    handle(
        &t,
        a,
        &json!({"action":"announce","info_hash":"9".repeat(20),"peer_id":P1}).to_string(),
    );
    let got = drain(&mut ra);
    assert!(got[1].contains("\"incomplete\":1"), "{got:?}");
    assert_eq!(t.stats(), (3, 3));
}

#[test]
fn bounds_refuse_with_a_reason_and_a_slow_connection_is_cut() {
    let cfg = TrackerConfig {
        max_swarm_peers: 2,
        max_swarms: 1,
        outbox: 4,
        ..TrackerConfig::default()
    };
    let metrics = Metrics::unregistered().unwrap();
    let t = Tracker::new(cfg, &metrics);
    let (a, mut ra) = t.connect();
    for peer in ["a", "b", "c"] {
        let id = peer.repeat(20);
        handle(
            &t,
            a,
            &json!({"action":"announce","info_hash":H,"peer_id":id,"event":"started"}).to_string(),
        );
    }
    let got = drain(&mut ra);
    assert_eq!(
        got[2],
        r#"{"action":"announce","failure reason":"swarm full","info_hash":"aaaaaaaaaaaaaaaaaaaa"}"#
    );
    handle(
        &t,
        a,
        &json!({"action":"announce","info_hash":"bbbbbbbbbbbbbbbbbbbb","peer_id":P1}).to_string(),
    );
    assert_eq!(
        drain(&mut ra),
        [
            r#"{"action":"announce","failure reason":"too many swarms","info_hash":"bbbbbbbbbbbbbbbbbbbb"}"#
        ]
    );
    // Each refusal counts once, under its own reason (not also as "invalid").
    let drops = |reason: &str| metrics.drops.with_label_values(&["tracker", reason]).get();
    assert_eq!(
        (drops("swarm_full"), drops("swarms"), drops("invalid")),
        (1, 1, 0)
    );
    // Nobody reads a's outbox: after 4 queued messages the connection is cut, its session
    // told to stop, and its peers leave their swarms at once.
    assert_eq!(t.stats(), (1, 2));
    for _ in 0..6 {
        handle(&t, a, &json!({"action":"scrape"}).to_string());
    }
    assert!(ra.cut.try_recv().is_ok(), "the session is told to stop");
    assert_eq!(t.stats(), (0, 0));
    // Frames its session still hands over before it stops change nothing (no peer left behind
    // by a connection the tracker no longer knows).
    handle(
        &t,
        a,
        &json!({"action":"announce","info_hash":H,"peer_id":P1,"event":"started"}).to_string(),
    );
    assert_eq!(t.stats(), (0, 0));
    disconnect(&t, a);
    // The same by bytes: 1 KiB queued at most.
    let t = Tracker::new(
        TrackerConfig {
            max_queued: 1024,
            ..TrackerConfig::default()
        },
        &Metrics::unregistered().unwrap(),
    );
    let (b, mut rb) = t.connect();
    let long = "l".repeat(20);
    let mut cut = false;
    for _ in 0..20 {
        handle(
            &t,
            b,
            &json!({"action":"scrape","info_hash":[H, long]}).to_string(),
        );
        if rb.cut.try_recv().is_ok() {
            cut = true;
            break;
        }
    }
    assert!(cut, "cut by bytes before 20 messages");
    let queued = rb.queued.load(std::sync::atomic::Ordering::Relaxed);
    assert!(queued <= 1024, "{queued}");
    assert!(drain(&mut rb).len() < 20);
}

#[test]
fn offers_go_to_distinct_other_peers_one_each() {
    let t = tracker();
    let peers: Vec<(ConnId, Outbox)> = (0..5).map(|_| t.connect()).collect();
    for (i, (conn, _)) in peers.iter().enumerate() {
        let id = format!("{i}").repeat(20);
        handle(
            &t,
            *conn,
            &json!({"action":"announce","info_hash":H,"peer_id":id,"event":"started"}).to_string(),
        );
    }
    let (x, mut rx) = t.connect();
    let offers: Vec<serde_json::Value> = (0..3)
        .map(|i| json!({"offer_id": format!("{i}").repeat(20), "offer": {"type":"offer","sdp":i}}))
        .collect();
    handle(&t,
        x,
        &json!({"action":"announce","info_hash":H,"peer_id":"x".repeat(20),"event":"started","offers":offers}).to_string(),
    );
    assert_eq!(
        drain(&mut rx).len(),
        1,
        "the reply only, no offer to itself"
    );
    let mut got_offer = Vec::new();
    for (_, mut rx) in peers {
        let relayed: Vec<String> = drain(&mut rx)
            .into_iter()
            .filter(|m| m.contains("\"offer\""))
            .collect();
        assert!(relayed.len() <= 1);
        got_offer.extend(relayed);
    }
    assert_eq!(got_offer.len(), 3, "three offers, three distinct peers");
    let mut ids: Vec<String> = got_offer
        .iter()
        .map(|m| serde_json::from_str::<serde_json::Value>(m).unwrap()["offer_id"].to_string())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "each offer once");
}
