//! The listener contract on a real pingora listener, driven over raw TCP: streamed response
//! bodies (with and without a known length), a stream that fails mid-body, request bodies read
//! only on demand (the reader's limit, the one error shape), `Expect: 100-continue`.

use bytes::Bytes;
use edge_contract::{Body, BodyError, EdgeRequest, EdgeResponse, Handler};
use edge_http::{BoundListener, HttpApp, Listeners};
use http::StatusCode;
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Paths: `/stream/N` streams N chunks of 1 KiB with a length, `/chunked/N` without,
/// `/cut` fails after one chunk, `/echo` reads the body (limit 1 MiB), anything else answers
/// without reading the body. Counts the body bytes it was handed.
struct TestHandler {
    body_bytes: AtomicU64,
}

fn chunks(n: usize) -> impl futures::Stream<Item = Result<Bytes, BodyError>> + Send {
    futures::stream::unfold(0, move |i| async move {
        if i == n {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        Some((Ok(Bytes::from(vec![b'a' + (i % 26) as u8; 1024])), i + 1))
    })
}

#[async_trait::async_trait]
impl Handler for TestHandler {
    async fn handle(&self, req: EdgeRequest) -> EdgeResponse {
        let path = req.path.clone();
        let mut parts = path.trim_start_matches('/').split('/');
        match (
            parts.next(),
            parts.next().and_then(|n| n.parse::<usize>().ok()),
        ) {
            (Some("stream"), Some(n)) => EdgeResponse::new(
                StatusCode::OK,
                Body::stream(Some(n as u64 * 1024), chunks(n)),
            ),
            (Some("chunked"), Some(n)) => {
                EdgeResponse::new(StatusCode::OK, Body::stream(None, chunks(n)))
            }
            (Some("cut"), _) => {
                let failing = futures::StreamExt::chain(
                    chunks(1),
                    futures::stream::iter([Err(BodyError::Interrupted("upstream died".into()))]),
                );
                EdgeResponse::new(StatusCode::OK, Body::stream(Some(4096), failing))
            }
            (Some("echo"), _) => match req.body.bytes(1 << 20).await {
                Ok(b) => {
                    self.body_bytes.fetch_add(b.len() as u64, Ordering::SeqCst);
                    EdgeResponse::new(StatusCode::OK, b)
                }
                Err(BodyError::TooLarge { .. }) => {
                    EdgeResponse::error(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
                }
                Err(e) => {
                    EdgeResponse::error_detail(StatusCode::BAD_REQUEST, "bad_body", &e.to_string())
                }
            },
            _ => EdgeResponse::new(StatusCode::OK, "no body read"),
        }
    }
}

async fn serve() -> (SocketAddr, Arc<TestHandler>, Listeners) {
    let handler = Arc::new(TestHandler {
        body_bytes: AtomicU64::new(0),
    });
    let bound = BoundListener::bind("127.0.0.1:0".parse().unwrap(), None).unwrap();
    let addr = bound.local_addr();
    let mut listeners = Listeners::default();
    listeners.serve("test", HttpApp::new(handler.clone()), vec![bound]);
    (addr, handler, listeners)
}

/// Sends `request` and reads until the server closes or `idle` passes without a byte.
async fn exchange(addr: SocketAddr, request: &[u8], idle: Duration) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match tokio::time::timeout(idle, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, false),
        }
    }
}

fn split(response: &[u8]) -> (String, Vec<u8>) {
    let at = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    (
        String::from_utf8_lossy(&response[..at]).to_ascii_lowercase(),
        response[at + 4..].to_vec(),
    )
}

#[tokio::test]
async fn streamed_bodies_with_and_without_length() {
    let (addr, _, listeners) = serve().await;
    let idle = Duration::from_millis(500);

    let (raw, _) = exchange(addr, b"GET /stream/64 HTTP/1.1\r\nHost: x\r\n\r\n", idle).await;
    let (head, body) = split(&raw);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-length: 65536"), "{head}");
    assert_eq!(body.len(), 65536);
    assert!(body[..1024].iter().all(|&b| b == b'a'));
    assert!(
        body[65535 - 1023..]
            .iter()
            .all(|&b| b == b'a' + (63 % 26) as u8)
    );

    let (raw, _) = exchange(addr, b"GET /chunked/3 HTTP/1.1\r\nHost: x\r\n\r\n", idle).await;
    let (head, body) = split(&raw);
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    let text = String::from_utf8_lossy(&body);
    assert_eq!(text.matches("400\r\n").count(), 3, "three 1 KiB chunks");
    assert!(
        text.ends_with("0\r\n\r\n"),
        "the chunked body is terminated"
    );

    // HTTP/1.0 knows no chunked encoding: the body ends with the connection.
    let (raw, closed) = exchange(addr, b"GET /chunked/3 HTTP/1.0\r\n\r\n", idle).await;
    let (head, body) = split(&raw);
    assert!(closed, "a close-delimited body ends with the connection");
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    assert_eq!(body.len(), 3 * 1024, "the raw body, no chunk framing");

    // HEAD: the length a GET would get, no body.
    let (raw, _) = exchange(addr, b"HEAD /stream/8 HTTP/1.1\r\nHost: x\r\n\r\n", idle).await;
    let (head, body) = split(&raw);
    assert!(head.contains("content-length: 8192"), "{head}");
    assert!(body.is_empty());
    listeners.drain(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_failing_stream_is_cut_never_completed() {
    let (addr, _, listeners) = serve().await;
    let (raw, closed) = exchange(
        addr,
        b"GET /cut HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    let (head, body) = split(&raw);
    assert!(head.contains("content-length: 4096"), "{head}");
    assert_eq!(
        body.len(),
        1024,
        "what arrived before the failure, and no more"
    );
    assert!(
        closed,
        "the connection is closed, so the client sees a short body"
    );
    listeners.drain(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn bodies_are_read_only_on_demand() {
    let (addr, handler, listeners) = serve().await;
    let idle = Duration::from_millis(500);

    let (raw, _) = exchange(
        addr,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        idle,
    )
    .await;
    let (_, body) = split(&raw);
    assert_eq!(body, b"hello");
    assert_eq!(handler.body_bytes.load(Ordering::SeqCst), 5);

    // A route that takes no body answers at once, without waiting for (or reading) the body the
    // client announced; the connection is then not reused (closed after a bounded linger).
    let started = std::time::Instant::now();
    let (raw, closed) = exchange(
        addr,
        b"POST /other HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\npartial",
        Duration::from_secs(10),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        handler.body_bytes.load(Ordering::SeqCst),
        5,
        "no body reached the handler"
    );
    let (head, body) = split(&raw);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, b"no body read");
    assert!(closed, "an unread body ends the connection");

    // Over the reader's limit: refused from the declared length, before any body byte is read.
    let (raw, _) = exchange(
        addr,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n",
        idle,
    )
    .await;
    let (head, body) = split(&raw);
    assert!(head.starts_with("http/1.1 413"), "{head}");
    assert!(head.contains("x-edge-reason: body_too_large"), "{head}");
    assert!(head.contains("cache-control: no-store"), "{head}");
    assert_eq!(
        body,
        br#"{"error":"payload_too_large","reason":"body_too_large"}"#
    );
    listeners.drain(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn expect_continue_is_answered_when_the_body_is_wanted() {
    let (addr, _, listeners) = serve().await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .expect("100 Continue before the body is sent")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    s.write_all(b"abc").await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(
        text.starts_with("HTTP/1.1 200") && text.ends_with("abc"),
        "{text}"
    );
    listeners.drain(Duration::from_secs(1)).await;
}
