//! tracker-load: announce/relay load on a WebTorrent tracker (the edge's `/ws/tracker`, or the
//! npm `bittorrent-tracker` server), as aquatic_ws's load test drives one: CONNS WebSocket
//! connections, each one peer of one of SWARMS swarms, each keeping one announce in flight.
//!
//! A connection announces with one offer; the tracker answers the announce (one message to the
//! announcer) and relays the offer to another peer of the swarm (one message), whose client
//! answers it at once; the tracker relays the answer back (one message). Every message a
//! client reads is one response of the tracker; the next announce goes out when the reply to
//! the last one came. Runs SECS seconds after a warm-up and prints one JSON line with what the
//! clients read, by kind, and the failures.
//!
//!   tracker-load URL [CONNS=1000] [SWARMS=100] [SECS=10] [WARMUP=2]

use futures::{SinkExt, StreamExt};
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};
use tokio_tungstenite::tungstenite::Message;

#[derive(Default)]
struct Counts {
    replies: AtomicU64,
    offers: AtomicU64,
    answers: AtomicU64,
    failures: AtomicU64,
    other: AtomicU64,
}

/// A 20-character id from a number (ids are "binary strings"; plain ASCII here).
fn id(prefix: char, n: usize) -> String {
    format!("{prefix}{n:019}")
}

const SDP: &str = "v=0\\r\\no=- 4611731400430051336 2 IN IP4 127.0.0.1\\r\\ns=-\\r\\nt=0 0\\r\\n\
a=group:BUNDLE 0\\r\\na=msid-semantic: WMS\\r\\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\\r\\n\
c=IN IP4 0.0.0.0\\r\\na=ice-ufrag:abcd\\r\\na=ice-pwd:abcdefghijklmnopqrstuvwx\\r\\n\
a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\\r\\n\
a=setup:actpass\\r\\na=mid:0\\r\\na=sctp-port:5000\\r\\na=max-message-size:262144\\r\\n";

fn announce(info_hash: &str, peer_id: &str, seq: u64, first: bool) -> String {
    let event = if first { r#","event":"started""# } else { "" };
    let offer_id = format!("{seq:020}");
    format!(
        r#"{{"action":"announce","info_hash":"{info_hash}","peer_id":"{peer_id}","numwant":1,"uploaded":0,"downloaded":0,"left":1{event},"offers":[{{"offer_id":"{offer_id}","offer":{{"type":"offer","sdp":"{SDP}"}}}}]}}"#
    )
}

fn answer(info_hash: &str, peer_id: &str, to: &str, offer_id: &str) -> String {
    format!(
        r#"{{"action":"announce","info_hash":"{info_hash}","peer_id":"{peer_id}","to_peer_id":"{to}","offer_id":"{offer_id}","answer":{{"type":"answer","sdp":"{SDP}"}}}}"#
    )
}

async fn client(url: String, n: usize, swarms: usize, counts: Arc<Counts>, stop: Arc<AtomicBool>) {
    let (mut ws, _) = match tokio_tungstenite::connect_async(url.as_str()).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tracker-load: connection {n}: {e}");
            counts.failures.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let info_hash = id('h', n % swarms);
    let peer_id = id('p', n);
    let mut seq = (n as u64) << 32;
    if ws
        .send(Message::text(announce(&info_hash, &peer_id, seq, true)))
        .await
        .is_err()
    {
        return;
    }
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Text(text) = msg else { continue };
        let text = text.as_str();
        let reply = if text.contains("\"failure reason\"") {
            counts.failures.fetch_add(1, Ordering::Relaxed);
            None
        } else if text.contains("\"interval\"") {
            counts.replies.fetch_add(1, Ordering::Relaxed);
            if stop.load(Ordering::Relaxed) {
                break;
            }
            seq += 1;
            Some(announce(&info_hash, &peer_id, seq, false))
        } else if text.contains("\"answer\"") {
            counts.answers.fetch_add(1, Ordering::Relaxed);
            None
        } else if text.contains("\"offer\"") {
            counts.offers.fetch_add(1, Ordering::Relaxed);
            let v: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
            match (v["peer_id"].as_str(), v["offer_id"].as_str()) {
                (Some(from), Some(offer_id)) => Some(answer(&info_hash, &peer_id, from, offer_id)),
                _ => None,
            }
        } else {
            counts.other.fetch_add(1, Ordering::Relaxed);
            None
        };
        if let Some(out) = reply
            && ws.send(Message::text(out)).await.is_err()
        {
            break;
        }
    }
    let _ = ws.close(None).await;
}

fn snapshot(c: &Counts) -> [u64; 5] {
    [
        c.replies.load(Ordering::Relaxed),
        c.offers.load(Ordering::Relaxed),
        c.answers.load(Ordering::Relaxed),
        c.failures.load(Ordering::Relaxed),
        c.other.load(Ordering::Relaxed),
    ]
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: u64| -> anyhow::Result<u64> {
        Ok(match args.get(i) {
            Some(a) => a.parse()?,
            None => default,
        })
    };
    let url = args.first().cloned().ok_or_else(|| {
        anyhow::anyhow!("usage: tracker-load URL [CONNS] [SWARMS] [SECS] [WARMUP]")
    })?;
    let (conns, swarms) = (arg(1, 1000)? as usize, arg(2, 100)? as usize);
    let (secs, warmup) = (arg(3, 10)?, arg(4, 2)?);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let counts = Arc::new(Counts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::with_capacity(conns);
        for n in 0..conns {
            tasks.push(tokio::spawn(client(
                url.clone(),
                n,
                swarms.max(1),
                counts.clone(),
                stop.clone(),
            )));
            if n % 100 == 99 {
                // Connections in batches: a burst of handshakes is not what is measured.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        tokio::time::sleep(Duration::from_secs(warmup)).await;
        let (start, before) = (Instant::now(), snapshot(&counts));
        println!("measuring");
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let (elapsed, after) = (start.elapsed().as_secs_f64(), snapshot(&counts));
        stop.store(true, Ordering::Relaxed);
        let d: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
        let responses = d[0] + d[1] + d[2];
        println!(
            "{}",
            serde_json::json!({
                "conns": conns, "swarms": swarms, "secs": elapsed,
                "replies": d[0], "offers": d[1], "answers": d[2], "failures": d[3], "other": d[4],
                "responses": responses, "responses_per_s": responses as f64 / elapsed,
            })
        );
        let _ =
            tokio::time::timeout(Duration::from_secs(2), futures::future::join_all(tasks)).await;
    });
    Ok(())
}
