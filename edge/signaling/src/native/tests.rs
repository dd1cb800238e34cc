use super::*;
use serde_json::{Value, json};

fn hub(cfg: SignalingConfig) -> Hub {
    Hub::new(cfg, &Metrics::unregistered().unwrap())
}

fn anonymous() -> Viewer {
    Viewer::default()
}

fn as_sub(sub: &str) -> Viewer {
    Viewer {
        sub: Some(sub.into()),
        ..Viewer::default()
    }
}

fn drain(rx: &mut Outbox) -> Vec<Value> {
    let mut out = Vec::new();
    while let Ok(m) = rx.try_recv() {
        out.push(serde_json::from_str(&m).unwrap());
    }
    out
}

/// Handles a message of `conn` (a hub without a cluster answers without waiting).
fn handle(h: &Hub, conn: ConnId, text: &str) {
    use futures::FutureExt;
    h.handle(conn, text)
        .now_or_never()
        .expect("a local hub never waits");
}

fn send(h: &Hub, conn: ConnId, v: Value) {
    handle(h, conn, &v.to_string());
}

fn peer_ids(v: &Value) -> Vec<String> {
    let mut ids: Vec<String> = v["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["peerId"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

#[test]
fn join_answers_with_the_other_peers_and_relays_carry_the_senders_peer_id() {
    let h = hub(SignalingConfig::default());
    let (a, mut ra) = h.connect(&anonymous());
    let (b, mut rb) = h.connect(&anonymous());
    send(
        &h,
        a,
        json!({"type":"join","streamId":"s1","peerId":"pa","rendition":"720p"}),
    );
    assert_eq!(
        drain(&mut ra),
        [json!({"type":"peer-list","streamId":"s1","peers":[]})]
    );
    send(&h, b, json!({"type":"join","streamId":"s1","peerId":"pb"}));
    assert_eq!(
        drain(&mut rb),
        [json!({"type":"peer-list","streamId":"s1","peers":[{"peerId":"pa","rendition":"720p"}]})]
    );
    // Nothing is broadcast on a join: the newcomer makes the offers.
    assert!(drain(&mut ra).is_empty());
    send(
        &h,
        b,
        json!({"type":"offer","streamId":"s1","to":"pa","sdp":{"type":"offer","sdp":"v=0 b"}}),
    );
    assert_eq!(
        drain(&mut ra),
        [json!({"type":"offer","streamId":"s1","from":"pb","sdp":{"type":"offer","sdp":"v=0 b"}})]
    );
    send(
        &h,
        a,
        json!({"type":"answer","streamId":"s1","to":"pb","sdp":{"type":"answer","sdp":"v=0 a"}}),
    );
    send(
        &h,
        a,
        json!({"type":"ice","streamId":"s1","to":"pb","candidate":{"candidate":"candidate:1 1 udp 1 127.0.0.1 9 typ host"}}),
    );
    assert_eq!(
        drain(&mut rb),
        [
            json!({"type":"answer","streamId":"s1","from":"pa","sdp":{"type":"answer","sdp":"v=0 a"}}),
            json!({"type":"ice","streamId":"s1","from":"pa","candidate":{"candidate":"candidate:1 1 udp 1 127.0.0.1 9 typ host"}}),
        ]
    );
    // Leaving, and closing, take the peer out of the stream.
    send(&h, a, json!({"type":"leave","streamId":"s1"}));
    send(&h, b, json!({"type":"peers","streamId":"s1"}));
    assert_eq!(
        drain(&mut rb),
        [json!({"type":"peer-list","streamId":"s1","peers":[]})]
    );
    assert_eq!(h.stats(), (1, 1, 0));
    h.disconnect(b);
    assert_eq!(h.stats(), (0, 0, 0));
}

#[test]
fn peer_lists_prefer_the_same_rendition_follow_have_and_are_bounded() {
    let h = hub(SignalingConfig {
        max_peer_list: 3,
        max_have: 2,
        ..SignalingConfig::default()
    });
    let mut conns = Vec::new();
    for (i, rendition) in ["720p", "720p", "480p", "480p", "480p"].iter().enumerate() {
        let (c, mut rx) = h.connect(&anonymous());
        send(
            &h,
            c,
            json!({"type":"join","streamId":"s","peerId":format!("p{i}"),"rendition":rendition}),
        );
        drain(&mut rx);
        conns.push((c, rx));
    }
    let (me, mut rme) = h.connect(&anonymous());
    send(
        &h,
        me,
        json!({"type":"join","streamId":"s","peerId":"me","rendition":"720p"}),
    );
    let list = drain(&mut rme).remove(0);
    let ids = peer_ids(&list);
    assert_eq!(ids.len(), 3, "{list}");
    assert!(
        ids.contains(&"p0".into()) && ids.contains(&"p1".into()),
        "{list}"
    );
    // `have` keeps the most recent `max_have` segments; `peers` with a segment lists holders.
    send(
        &h,
        conns[3].0,
        json!({"type":"have","streamId":"s","segments":["seg1.ts","seg2.ts","seg3.ts"]}),
    );
    send(
        &h,
        conns[4].0,
        json!({"type":"have","streamId":"s","segments":["seg3.ts"]}),
    );
    send(
        &h,
        me,
        json!({"type":"peers","streamId":"s","segment":"seg3.ts"}),
    );
    let list = drain(&mut rme).remove(0);
    assert_eq!(list["segment"], "seg3.ts");
    assert_eq!(peer_ids(&list), ["p3", "p4"]);
    send(
        &h,
        me,
        json!({"type":"peers","streamId":"s","segment":"seg1.ts"}),
    );
    assert_eq!(peer_ids(&drain(&mut rme).remove(0)), Vec::<String>::new());
}

#[test]
fn every_bad_message_is_refused_with_a_code_and_harms_nobody() {
    let h = hub(SignalingConfig {
        max_swarm_peers: 2,
        max_per_connection: 2,
        ..SignalingConfig::default()
    });
    let (a, mut ra) = h.connect(&anonymous());
    let (b, mut rb) = h.connect(&anonymous());
    send(&h, a, json!({"type":"join","streamId":"s","peerId":"pa"}));
    drain(&mut ra);
    let cases: Vec<(String, &str)> = vec![
        ("{not json".into(), "bad_json"),
        (json!({"streamId":"s"}).to_string(), "bad_message"),
        (json!({"type":"dance"}).to_string(), "unknown_type"),
        (
            json!({"type":"join","streamId":"s"}).to_string(),
            "bad_message",
        ),
        (
            json!({"type":"join","streamId":"","peerId":"x"}).to_string(),
            "invalid_stream_id",
        ),
        (
            json!({"type":"join","streamId":"s","peerId":"x".repeat(129)}).to_string(),
            "invalid_peer_id",
        ),
        (
            json!({"type":"join","streamId":"s","peerId":"a\u{7}b"}).to_string(),
            "invalid_peer_id",
        ),
        (
            json!({"type":"join","streamId":"m1:segment:x","peerId":"x"}).to_string(),
            "invalid_stream_id",
        ),
        (
            json!({"type":"join","streamId":"s","peerId":"pa"}).to_string(),
            "peer_id_taken",
        ),
        (
            json!({"type":"offer","streamId":"s","to":"pa","sdp":{}}).to_string(),
            "not_joined",
        ),
        (
            json!({"type":"have","streamId":"s","segments":["x"]}).to_string(),
            "not_joined",
        ),
        (
            json!({"type":"sync","roomId":"r"}).to_string(),
            "not_in_room",
        ),
        (
            json!({"type":"join-room","roomId":"r"}).to_string(),
            "invalid_user_id",
        ),
    ];
    for (text, code) in &cases {
        handle(&h, b, text);
        let got = drain(&mut rb);
        assert_eq!(got.len(), 1, "{text}: {got:?}");
        assert_eq!(got[0]["type"], "error", "{text}");
        assert_eq!(got[0]["code"], *code, "{text}: {}", got[0]);
    }
    send(&h, b, json!({"type":"join","streamId":"s","peerId":"pb"}));
    drain(&mut rb);
    for (v, code) in [
        (
            json!({"type":"offer","streamId":"s","to":"nobody","sdp":{}}),
            "no_peer",
        ),
        (
            json!({"type":"offer","streamId":"s","to":"pb","sdp":{}}),
            "no_peer",
        ),
        (
            json!({"type":"ice","streamId":"s","to":"pa"}),
            "bad_message",
        ),
        (
            json!({"type":"join","streamId":"s","peerId":"other"}),
            "already_joined",
        ),
        (
            json!({"type":"have","streamId":"s","segments":vec!["x"; 65]}),
            "invalid_segment",
        ),
    ] {
        send(&h, b, v.clone());
        let got = drain(&mut rb);
        assert_eq!(got[0]["code"], code, "{v}: {got:?}");
    }
    // Bounds: the stream is full for a third peer; a connection is in at most 2 things.
    let (c, mut rc) = h.connect(&anonymous());
    send(&h, c, json!({"type":"join","streamId":"s","peerId":"pc"}));
    assert_eq!(drain(&mut rc)[0]["code"], "swarm_full");
    send(&h, b, json!({"type":"join","streamId":"t","peerId":"pb"}));
    send(&h, b, json!({"type":"join","streamId":"u","peerId":"pb"}));
    let got = drain(&mut rb);
    assert_eq!(got[0]["type"], "peer-list");
    assert_eq!(got[1]["code"], "connection_full");
    // The other connection saw none of it and still works.
    assert!(drain(&mut ra).is_empty());
    send(&h, a, json!({"type":"heartbeat"}));
    let hb = drain(&mut ra);
    assert_eq!(hb[0]["type"], "heartbeat");
    assert!(hb[0]["serverTime"].as_u64().unwrap() > 1_700_000_000_000);
}

#[test]
fn a_connection_that_does_not_read_is_cut_and_leaves() {
    let h = hub(SignalingConfig {
        outbox: 4,
        ..SignalingConfig::default()
    });
    let (a, _ra) = h.connect(&anonymous());
    let (b, mut rb) = h.connect(&anonymous());
    send(&h, a, json!({"type":"join","streamId":"s","peerId":"pa"}));
    send(&h, b, json!({"type":"join","streamId":"s","peerId":"pb"}));
    let mut got = Vec::new();
    for _ in 0..10 {
        send(
            &h,
            b,
            json!({"type":"offer","streamId":"s","to":"pa","sdp":{"x":1}}),
        );
        got.extend(drain(&mut rb));
    }
    // b's peer list; a's outbox holds its own peer list and 3 offers, the 4th cuts a, and
    // the 6 after it find no peer.
    assert_eq!(got[0]["type"], "peer-list");
    assert!(got[1..].iter().all(|m| m["code"] == "no_peer"), "{got:?}");
    assert_eq!(got.len(), 1 + 6, "{got:?}");
    assert_eq!(h.stats(), (1, 1, 0));
}

fn room_states(rx: &mut Outbox) -> Vec<Value> {
    drain(rx)
        .into_iter()
        .inspect(|m| assert_eq!(m["type"], "room-state", "{m}"))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn the_host_controls_the_room_and_every_member_gets_the_state_with_the_servers_time() {
    let h = hub(SignalingConfig::default());
    let (a, mut ra) = h.connect(&as_sub("alice"));
    let (b, mut rb) = h.connect(&as_sub("bob"));
    send(
        &h,
        a,
        json!({"type":"join-room","roomId":"r","url":"https://cdn/movie.m3u8"}),
    );
    let s = room_states(&mut ra).remove(0);
    assert_eq!(s["hostUserId"], "alice");
    assert_eq!(s["currentUrl"], "https://cdn/movie.m3u8");
    assert_eq!(s["event"], "join");
    send(&h, b, json!({"type":"join-room","roomId":"r"}));
    let (sa, sb) = (room_states(&mut ra), room_states(&mut rb));
    assert_eq!(sa, sb);
    assert_eq!(
        sa[0]["members"],
        json!([{"userId":"alice","online":true},{"userId":"bob","online":true}])
    );
    // Only the host controls playback.
    send(&h, b, json!({"type":"pause","roomId":"r"}));
    let err = drain(&mut rb).remove(0);
    assert_eq!(err["code"], "not_host");
    send(&h, a, json!({"type":"play","roomId":"r","position":10.0}));
    let play = room_states(&mut rb).remove(0);
    assert_eq!(
        (&play["event"], &play["isPlaying"], &play["currentTime"]),
        (&json!("play"), &json!(true), &json!(10.0))
    );
    // The position advances while playing: a sync 2.5 s later says 12.5.
    tokio::time::advance(Duration::from_millis(2500)).await;
    send(&h, b, json!({"type":"sync","roomId":"r"}));
    let sync = room_states(&mut rb).remove(0);
    assert_eq!(sync["currentTime"], 12.5);
    assert!(room_states(&mut ra).len() == 1, "the play only");
    send(&h, a, json!({"type":"pause","roomId":"r"}));
    send(&h, a, json!({"type":"seek","roomId":"r","position":60.5}));
    send(&h, a, json!({"type":"seek","roomId":"r","position":-1}));
    let got = drain(&mut ra);
    assert_eq!(got[0]["currentTime"], 12.5);
    assert_eq!(got[0]["isPlaying"], false);
    assert_eq!(got[1]["currentTime"], 60.5);
    assert_eq!(got[2]["code"], "invalid_position");
    assert_eq!(room_states(&mut rb).len(), 2);
    // The host leaves: bob is host now.
    send(&h, a, json!({"type":"leave-room","roomId":"r"}));
    let left = room_states(&mut rb).remove(0);
    assert_eq!(
        (&left["event"], &left["by"], &left["hostUserId"]),
        (&json!("leave"), &json!("alice"), &json!("bob"))
    );
    send(&h, b, json!({"type":"pause","roomId":"r"}));
    assert_eq!(room_states(&mut rb)[0]["by"], "bob");
    send(&h, b, json!({"type":"leave-room","roomId":"r"}));
    assert_eq!(h.stats(), (0, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_member_who_reconnects_within_the_grace_keeps_its_place_and_host_role() {
    let grace = Duration::from_secs(30);
    let h = hub(SignalingConfig {
        room_grace: grace,
        ..SignalingConfig::default()
    });
    let (a, mut ra) = h.connect(&as_sub("alice"));
    let (b, mut rb) = h.connect(&as_sub("bob"));
    send(&h, a, json!({"type":"join-room","roomId":"r"}));
    send(&h, b, json!({"type":"join-room","roomId":"r"}));
    send(&h, a, json!({"type":"play","roomId":"r","position":5}));
    drain(&mut ra);
    drain(&mut rb);
    // The host's connection drops (a drain, a network change): offline, still host.
    h.disconnect(a);
    let off = room_states(&mut rb).remove(0);
    assert_eq!(off["event"], "offline");
    assert_eq!(off["hostUserId"], "alice");
    assert_eq!(off["members"][0], json!({"userId":"alice","online":false}));
    tokio::time::advance(grace / 2).await;
    h.sweep();
    assert!(drain(&mut rb).is_empty());
    let (a2, mut ra2) = h.connect(&as_sub("alice"));
    send(&h, a2, json!({"type":"join-room","roomId":"r"}));
    let back = room_states(&mut ra2).remove(0);
    assert_eq!(
        (&back["event"], &back["hostUserId"], &back["isPlaying"]),
        (&json!("rejoin"), &json!("alice"), &json!(true))
    );
    assert_eq!(back["currentTime"], 20.0);
    assert_eq!(room_states(&mut rb).len(), 1);
    // Gone for longer than the grace: bob becomes host, the room lives on.
    h.disconnect(a2);
    drain(&mut rb);
    tokio::time::advance(grace).await;
    h.sweep();
    let gone = room_states(&mut rb).remove(0);
    assert_eq!(
        (&gone["event"], &gone["hostUserId"]),
        (&json!("leave"), &json!("bob"))
    );
    assert_eq!(gone["members"], json!([{"userId":"bob","online":true}]));
    // The last member's grace ends: the room is gone.
    h.disconnect(b);
    tokio::time::advance(grace).await;
    h.sweep();
    assert_eq!(h.stats(), (0, 0, 0));
}

#[test]
fn a_user_id_is_the_tokens_subject_and_cannot_be_taken_without_one() {
    let h = hub(SignalingConfig::default());
    let (a, mut ra) = h.connect(&as_sub("alice"));
    send(
        &h,
        a,
        json!({"type":"join-room","roomId":"r","userId":"mallory"}),
    );
    assert_eq!(drain(&mut ra)[0]["code"], "user_mismatch");
    // Without a token, the message's userId; a connected member cannot be taken over.
    let (x, mut rx) = h.connect(&anonymous());
    let (y, mut ry) = h.connect(&anonymous());
    send(
        &h,
        x,
        json!({"type":"join-room","roomId":"q","userId":"u1"}),
    );
    assert_eq!(room_states(&mut rx)[0]["hostUserId"], "u1");
    send(
        &h,
        y,
        json!({"type":"join-room","roomId":"q","userId":"u1"}),
    );
    assert_eq!(drain(&mut ry)[0]["code"], "user_in_room");
    // With a token, the same viewer on a new connection takes its membership over.
    send(&h, a, json!({"type":"join-room","roomId":"r"}));
    drain(&mut ra);
    let (a2, mut ra2) = h.connect(&as_sub("alice"));
    send(&h, a2, json!({"type":"join-room","roomId":"r"}));
    assert_eq!(room_states(&mut ra2)[0]["event"], "rejoin");
    // The old connection is no longer in the room: closing it changes nothing.
    drain(&mut ra);
    h.disconnect(a);
    send(&h, a2, json!({"type":"sync","roomId":"r"}));
    let s = room_states(&mut ra2).remove(0);
    assert_eq!(s["members"], json!([{"userId":"alice","online":true}]));
    // A client-chosen id never becomes a token's member, even offline (host role included),
    // and a token never takes over a client-chosen member.
    h.disconnect(a2);
    let (m, mut rm) = h.connect(&anonymous());
    send(
        &h,
        m,
        json!({"type":"join-room","roomId":"r","userId":"alice"}),
    );
    assert_eq!(drain(&mut rm)[0]["code"], "user_in_room");
    let (u, mut ru) = h.connect(&as_sub("u1"));
    send(&h, u, json!({"type":"join-room","roomId":"q"}));
    assert_eq!(drain(&mut ru)[0]["code"], "user_in_room");
}
