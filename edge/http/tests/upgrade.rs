//! Upgraded connections on a real pingora listener, driven by a WebSocket client nobody here wrote
//! (tokio-tungstenite): the handler answers 101 and owns the connection as a byte stream; large
//! messages in both directions, the client's close, the drain signal ("going away"), a request
//! that cannot be upgraded, and ordinary requests served alongside.

use edge_contract::{EdgeRequest, EdgeResponse, Handler};
use edge_http::{BoundListener, ConnectionMetrics, HttpApp, Limits, Listeners};
use futures::{SinkExt, StreamExt};
use http::{HeaderValue, StatusCode};
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::{
    WebSocketStream, client_async,
    tungstenite::{
        Message,
        handshake::derive_accept_key,
        protocol::{CloseFrame, Role, frame::coding::CloseCode},
    },
};

/// `/ws`: a WebSocket echo that says "going away" when the listener drains; `/bad-upgrade`
/// upgrades whatever it gets (a handler bug the listener must contain); anything else: 200.
struct Echo;

#[async_trait::async_trait]
impl Handler for Echo {
    async fn handle(&self, req: EdgeRequest) -> EdgeResponse {
        match req.path.as_str() {
            "/ws" => {
                let key = req.headers.get("sec-websocket-key").cloned();
                let (true, Some(key)) = (req.upgrades_to("websocket"), key) else {
                    return EdgeResponse::error(StatusCode::UPGRADE_REQUIRED, "websocket_only");
                };
                let mut r = EdgeResponse::upgrade("websocket", |io| Box::pin(echo(io)));
                let accept = derive_accept_key(key.as_bytes());
                r.headers.insert(
                    "sec-websocket-accept",
                    HeaderValue::from_str(&accept).unwrap(),
                );
                r
            }
            "/bad-upgrade" => EdgeResponse::upgrade("websocket", |_| Box::pin(async {})),
            _ => EdgeResponse::new(StatusCode::OK, "ok"),
        }
    }
}

async fn echo(io: edge_contract::Upgraded) {
    let draining = io.draining();
    tokio::pin!(draining);
    let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                    if ws.send(m).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
            () = &mut draining => {
                let away = CloseFrame { code: CloseCode::Away, reason: "draining".into() };
                let _ = ws.close(Some(away)).await;
                // The client answers the close; then the stream ends.
                while let Some(Ok(_)) = ws.next().await {}
                return;
            }
        }
    }
}

fn serve() -> (SocketAddr, Listeners) {
    serve_with(Listeners::default())
}

fn serve_with(mut listeners: Listeners) -> (SocketAddr, Listeners) {
    let bound = BoundListener::bind("127.0.0.1:0".parse().unwrap(), None).unwrap();
    let addr = bound.local_addr();
    listeners.serve("test", HttpApp::new(Arc::new(Echo)), vec![bound]);
    (addr, listeners)
}

async fn connect(addr: SocketAddr) -> WebSocketStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (ws, response) = client_async(format!("ws://{addr}/ws"), tcp).await.unwrap();
    assert_eq!(response.status(), 101);
    ws
}

async fn plain(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_websocket_client_talks_through_an_upgraded_connection() {
    let (addr, listeners) = serve();
    let mut ws = connect(addr).await;
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    // Larger than the socket buffers in between: written and read in many pieces.
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    ws.send(Message::binary(big.clone())).await.unwrap();
    for _ in 0..2 {
        match ws.next().await.unwrap().unwrap() {
            Message::Binary(b) => assert!(b[..] == big[..], "echoed byte for byte"),
            other => panic!("{other:?}"),
        }
    }
    // Ordinary requests meanwhile.
    let r = plain(
        addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    // Closed on both sides: nothing in flight.
    assert_eq!(listeners.drain(Duration::from_secs(2)).await, 0);
}

#[tokio::test]
async fn a_drain_tells_the_handler_which_says_going_away() {
    let (addr, listeners) = serve();
    let mut ws = connect(addr).await;
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("before"));
    let drain = tokio::spawn(listeners.drain(Duration::from_secs(5)));
    let closed = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => {}
                other => panic!("{other:?}"),
            }
        }
    })
    .await
    .expect("the handler closes on drain");
    assert_eq!(closed.unwrap().code, CloseCode::Away);
    while let Some(Ok(_)) = ws.next().await {}
    let cut = tokio::time::timeout(Duration::from_secs(3), drain)
        .await
        .expect("the drain ends once the handler is done, before its deadline")
        .unwrap();
    assert_eq!(cut, 0);
}

/// The upgraded connection runs in a task of its own once the request is done: it still holds
/// its place under the connection caps, and a drain still waits for it.
#[tokio::test]
async fn an_upgraded_connection_keeps_its_place_under_the_caps_and_in_the_drain() {
    let limits = Limits {
        max_connections_per_client: 1,
        ..Limits::default()
    };
    let registry = prometheus::Registry::new();
    let metrics = ConnectionMetrics::new(&registry).unwrap();
    let (addr, listeners) = serve_with(Listeners::new(limits, metrics));
    let mut ws = connect(addr).await;
    ws.send(Message::text("one")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("one"));
    // A second connection from the same address is closed unanswered while the first is open.
    let mut second = TcpStream::connect(addr).await.unwrap();
    let _ = second.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), second.read_to_end(&mut out)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{out:?}");
    // Its place is given back when it closes.
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    let mut served = String::new();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        served = plain(
            addr,
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        if !served.is_empty() {
            break;
        }
    }
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");
    // A drain whose deadline passes while an upgraded connection is open counts it.
    // (The client reads nothing: the handler's close on drain is never answered.)
    let held = connect(addr).await;
    assert_eq!(listeners.drain(Duration::from_millis(300)).await, 1);
    drop(held);
}

#[tokio::test]
async fn a_request_that_cannot_be_upgraded_is_refused() {
    let (addr, listeners) = serve();
    // No Upgrade asked for: the handler's 101 becomes a 500 in the one error shape.
    let r = plain(addr, b"GET /bad-upgrade HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 500"), "{r}");
    assert!(
        r.to_ascii_lowercase()
            .contains("x-edge-reason: upgrade_unavailable"),
        "{r}"
    );
    // The handler sees no upgrade on HTTP/1.0 or without Connection: upgrade.
    let r = plain(
        addr,
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nSec-WebSocket-Key: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 426"), "{r}");
    listeners.drain(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_first_frame_sent_with_the_handshake_is_not_lost() {
    let (addr, _listeners) = serve();
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The handshake and a masked text frame "hi" in one write.
    let mut bytes = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        .to_vec();
    let mask = [1u8, 2, 3, 4];
    bytes.extend_from_slice(&[0x81, 0x82]);
    bytes.extend_from_slice(&mask);
    bytes.extend(b"hi".iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    s.write_all(&bytes).await.unwrap();
    // The 101, then the echo of "hi" (unmasked, from the server).
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let done = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let n = s.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "closed before the echo: {}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
            if got.ends_with(&[0x81, 0x02, b'h', b'i']) {
                return;
            }
        }
    })
    .await;
    assert!(done.is_ok(), "{}", String::from_utf8_lossy(&got));
    assert!(got.starts_with(b"HTTP/1.1 101"));
}
