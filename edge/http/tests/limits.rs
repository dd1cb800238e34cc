//! Connection hygiene on a real pingora listener, driven over raw TCP while ordinary requests are
//! served: slowloris heads and silent connections cut at `header_timeout` (first and reused
//! connections), a stalled upload cut at `body_timeout`, a head over `max_header_bytes` answered
//! 431, connections over the caps closed at accept, a request shorter than the h2c preface
//! answered. The limits are shortened so that the test takes seconds; the mechanism is the same.

use edge_contract::{EdgeRequest, EdgeResponse, Handler};
use edge_http::{BoundListener, ConnectionMetrics, HttpApp, Limits, Listeners};
use http::StatusCode;
use prometheus::Registry;
use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// `/echo` reads the body (limit 1 MiB); `/big` answers 16 MiB at once; anything else answers at
/// once.
struct Echo;

#[async_trait::async_trait]
impl Handler for Echo {
    async fn handle(&self, req: EdgeRequest) -> EdgeResponse {
        if req.path == "/echo" {
            return match req.body.bytes(1 << 20).await {
                Ok(b) => EdgeResponse::new(StatusCode::OK, b),
                Err(e) => {
                    EdgeResponse::error_detail(StatusCode::BAD_REQUEST, "bad_body", &e.to_string())
                }
            };
        }
        if req.path == "/big" {
            return EdgeResponse::new(StatusCode::OK, vec![7u8; BIG]);
        }
        EdgeResponse::new(StatusCode::OK, "ok")
    }
}

const BIG: usize = 16 << 20;

const LIMITS: Limits = Limits {
    header_timeout: Duration::from_secs(1),
    keepalive_timeout: Duration::from_secs(1),
    body_timeout: Duration::from_secs(1),
    send_timeout: Duration::from_secs(2),
    max_connections: 40,
    max_connections_per_client: 20,
    max_header_bytes: 8 * 1024,
};

fn serve(limits: Limits) -> (SocketAddr, Registry, Listeners) {
    let registry = Registry::new();
    let bound = BoundListener::bind("127.0.0.1:0".parse().unwrap(), None).unwrap();
    let addr = bound.local_addr();
    let mut listeners = Listeners::new(limits, ConnectionMetrics::new(&registry).unwrap());
    listeners.serve("test", HttpApp::new(Arc::new(Echo)), vec![bound]);
    (addr, registry, listeners)
}

/// The value of `name{label="value"}` (summed over other labels), 0 when absent.
fn metric(registry: &Registry, name: &str, label: (&str, &str)) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| {
            m.get_label()
                .iter()
                .any(|l| l.name() == label.0 && l.value() == label.1)
        })
        .map(|m| m.get_counter().get_value() + m.get_gauge().get_value())
        .sum()
}

/// Reads until the server closes (`true`) or `within` passes (`false`).
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline.into(), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, false),
        }
    }
}

/// One complete request on a fresh connection; the response head and body.
async fn get(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let (raw, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(
        closed,
        "the server closes a Connection: close / HTTP/1.0 exchange"
    );
    String::from_utf8_lossy(&raw).into_owned()
}

#[tokio::test]
async fn slow_and_silent_heads_are_cut_while_requests_are_served() {
    let (addr, registry, listeners) = serve(LIMITS);
    let started = Instant::now();
    // Silent; a partial head; a head trickled one byte every 200 ms (each read is quick, the
    // whole head never ends); a partial h2c preface.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut partial = TcpStream::connect(addr).await.unwrap();
    partial
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut preface = TcpStream::connect(addr).await.unwrap();
    preface.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let mut trickle = TcpStream::connect(addr).await.unwrap();
    let trickler = tokio::spawn(async move {
        for b in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ".iter().cycle() {
            if trickle.write_all(&[*b]).await.is_err() {
                return started.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        unreachable!()
    });

    // Meanwhile, ordinary requests are answered at once.
    for _ in 0..5 {
        let r = get(
            addr,
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }
    for s in [&mut silent, &mut partial, &mut preface] {
        let (raw, closed) = read_until_closed(s, Duration::from_secs(5)).await;
        assert!(closed && raw.is_empty(), "cut without an answer");
    }
    let cut_after = started.elapsed();
    assert!(cut_after < Duration::from_secs(3), "{cut_after:?}");
    let trickled = tokio::time::timeout(Duration::from_secs(5), trickler)
        .await
        .expect("the trickled head is cut too")
        .unwrap();
    assert!(trickled < Duration::from_secs(3), "{trickled:?}");
    assert_eq!(
        metric(
            &registry,
            "edge_connections_cut_total",
            ("reason", "header_timeout")
        ),
        4.0
    );
    assert_eq!(
        metric(&registry, "edge_connections_open", ("listener", "test")),
        0.0
    );
    listeners.drain(Duration::from_secs(1)).await;
}

/// An HTTP/2 connection that sends its preface (and SETTINGS) but never a stream is closed at the
/// head deadline too; pingora's h2 handshake has none of its own.
#[tokio::test]
async fn an_h2_connection_without_a_stream_is_cut() {
    // A keep-alive (h2 idle timeout) far longer than the head deadline: only the latter can cut.
    let (addr, registry, listeners) = serve(Limits {
        keepalive_timeout: Duration::from_secs(30),
        ..LIMITS
    });
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    // An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(closed, "closed");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(
        metric(
            &registry,
            "edge_connections_cut_total",
            ("reason", "header_timeout")
        ),
        1.0
    );
    listeners.drain(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_reused_connection_has_keepalive_then_header_timeout() {
    let (addr, registry, listeners) = serve(LIMITS);
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // The next request starts in time, then stalls.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stalled = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
    let (raw, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(closed && raw.is_empty());
    let took = stalled.elapsed();
    assert!(
        took < Duration::from_millis(2500),
        "keepalive (1 s) + header (1 s) at most: {took:?}"
    );
    // (Cut by pingora's keep-alive read timeout or by the head's deadline, whichever is first.)
    assert_eq!(
        metric(&registry, "edge_connections_open", ("listener", "test")),
        0.0
    );
    listeners.drain(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_stalled_upload_is_cut_and_answered() {
    let (addr, registry, listeners) = serve(LIMITS);
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789")
        .await
        .unwrap();
    let (raw, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&raw);
    assert!(closed, "{text}");
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("request body idle timeout"), "{text}");
    assert_eq!(
        metric(
            &registry,
            "edge_connections_cut_total",
            ("reason", "body_timeout")
        ),
        1.0
    );
    // An upload that keeps coming is read whole.
    let r = get(
        addr,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("hello"), "{r}");
    listeners.drain(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_large_head_is_answered_431() {
    let (addr, registry, listeners) = serve(LIMITS);
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(9 * 1024)
    );
    let r = get(addr, big.as_bytes()).await;
    assert!(r.starts_with("HTTP/1.1 431"), "{r}");
    let lower = r.to_ascii_lowercase();
    assert!(lower.contains("x-edge-reason: header_too_large"), "{r}");
    assert!(lower.contains("cache-control: no-store"), "{r}");
    assert_eq!(
        metric(
            &registry,
            "edge_connections_cut_total",
            ("reason", "header_too_large")
        ),
        1.0
    );
    // Just under the limit is served.
    let fits = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
        "a".repeat(7 * 1024)
    );
    let r = get(addr, fits.as_bytes()).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    listeners.drain(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn connections_over_the_caps_are_closed_at_accept() {
    let limits = Limits {
        max_connections: 5,
        max_connections_per_client: 3,
        keepalive_timeout: Duration::from_secs(30),
        ..LIMITS
    };
    let (addr, registry, listeners) = serve(limits);
    // Three keep-alive connections from 127.0.0.1, each served once and held open.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(s);
    }
    assert_eq!(
        metric(&registry, "edge_connections_open", ("listener", "test")),
        3.0
    );
    // A fourth from the same address is closed unanswered.
    let mut fourth = TcpStream::connect(addr).await.unwrap();
    let _ = fourth.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (raw, closed) = read_until_closed(&mut fourth, Duration::from_secs(5)).await;
    assert!(closed && raw.is_empty());
    assert_eq!(
        metric(
            &registry,
            "edge_connections_refused_total",
            ("reason", "max_connections_per_client")
        ),
        1.0
    );
    // One held connection closes: its place is free again.
    drop(held.pop());
    let mut again = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if metric(&registry, "edge_connections_open", ("listener", "test")) == 2.0 {
            again = Some(
                get(
                    addr,
                    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                )
                .await,
            );
            break;
        }
    }
    let again = again.expect("the closed connection's place is given back");
    assert!(again.starts_with("HTTP/1.1 200"), "{again}");
    drop(held);
    listeners.drain(Duration::from_secs(1)).await;
}

/// Pingora's own h2c detection waits for 24 bytes before parsing anything: this request (18
/// bytes) would never be answered.
#[tokio::test]
async fn a_request_shorter_than_the_h2_preface_is_answered() {
    let (addr, _, listeners) = serve(LIMITS);
    let r = get(addr, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(
        r.starts_with("HTTP/1.1 200") || r.starts_with("HTTP/1.0 200"),
        "{r}"
    );
    assert!(r.ends_with("ok"), "{r}");
    listeners.drain(Duration::from_secs(1)).await;
}

/// `send_timeout` bounds each wait for the client to take more, not the whole answer: a viewer
/// reading a 16 MiB body steadily at a few MB/s takes longer than the timeout and gets all of it;
/// one that stops reading is cut.
#[tokio::test]
async fn a_slow_reader_is_served_and_a_stopped_one_is_cut() {
    let (addr, _, listeners) = serve(LIMITS);
    let request = b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let connect = || async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(16 * 1024).unwrap();
        let mut s = socket.connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        s
    };

    let mut slow = connect().await;
    let started = Instant::now();
    let mut got = 0usize;
    // At most 16 KiB per 3 ms: about 5 MB/s at most, so more than 3 s for the body.
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = slow.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        got += n;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let took = started.elapsed();
    assert!(got > BIG, "the whole body and its head: {got}");
    assert!(
        took > LIMITS.send_timeout,
        "slower than send_timeout in all ({took:?}), so the bound is per write"
    );

    let mut stopped = connect().await;
    let mut head = [0u8; 1024];
    let _ = stopped.read(&mut head).await.unwrap();
    tokio::time::sleep(LIMITS.send_timeout + Duration::from_secs(2)).await;
    let (rest, closed) = read_until_closed(&mut stopped, Duration::from_secs(10)).await;
    assert!(closed, "the server gave up on it");
    assert!(rest.len() < BIG, "cut: {} bytes", rest.len());
    listeners.drain(Duration::from_secs(1)).await;
}
