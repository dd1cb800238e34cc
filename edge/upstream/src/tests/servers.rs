//! Seeders and an origin for the tests: a well-behaved HTTP seeder whose faults can be switched
//! on (slow, corrupt), a raw TCP seeder that cuts every transfer halfway, a raw TCP seeder that
//! sends far more than asked, and a counting origin.

use bytes::Bytes;
use edge_origin::{ObjectInfo, Opened, Origin, OriginError, Tier};
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

pub(super) fn sha256(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

#[derive(Debug, Default)]
struct State {
    id: String,
    files: Mutex<HashMap<String, Bytes>>,
    delay: Mutex<Duration>,
    corrupt: AtomicBool,
    pull_fails: AtomicBool,
    hits: AtomicU64,
}

/// A seeder serving its files over HTTP/1 like the real one.
#[derive(Debug)]
pub(super) struct TestSeeder {
    pub(super) id: String,
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestSeeder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestSeeder {
    pub(super) async fn start(id: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            id: id.to_owned(),
            ..State::default()
        });
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(state.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            id: id.to_owned(),
            addr,
            state,
            task,
        }
    }

    pub(super) fn address(&self) -> String {
        self.addr.to_string()
    }

    pub(super) fn put(&self, path: &str, body: &Bytes) {
        self.state
            .files
            .lock()
            .insert(path.to_owned(), body.clone());
    }

    /// Waits this long before answering a segment request.
    pub(super) fn set_delay(&self, d: Duration) {
        *self.state.delay.lock() = d;
    }

    /// Announces a wrong `x-content-sha256`.
    pub(super) fn set_corrupt(&self, corrupt: bool) {
        self.state.corrupt.store(corrupt, Ordering::Relaxed);
    }

    /// Answers what it lacks with 502 and its `x-seeder-id`, as a seeder whose pull-through
    /// from the origin failed.
    pub(super) fn set_pull_fails(&self, fails: bool) {
        self.state.pull_fails.store(fails, Ordering::Relaxed);
    }

    /// Segment requests received (health probes not counted).
    pub(super) fn hits(&self) -> u64 {
        self.state.hits.load(Ordering::Relaxed)
    }
}

async fn answer(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    if path == "/_seeder/health" {
        return Ok(Response::new(Full::new(Bytes::new())));
    }
    state.hits.fetch_add(1, Ordering::Relaxed);
    let delay = *state.delay.lock();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let Some(body) = state.files.lock().get(&path).cloned() else {
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = if state.pull_fails.load(Ordering::Relaxed) {
            resp.headers_mut()
                .insert("x-seeder-id", state.id.parse().unwrap());
            StatusCode::BAD_GATEWAY
        } else {
            StatusCode::NOT_FOUND
        };
        return Ok(resp);
    };
    let checksum = if state.corrupt.load(Ordering::Relaxed) {
        sha256(b"something else")
    } else {
        sha256(&body)
    };
    let resp = Response::builder()
        .header("x-content-sha256", &checksum)
        .header("etag", format!("\"{}\"", &checksum[..16]))
        .header("last-modified", "Wed, 21 Oct 2015 07:28:00 GMT")
        .header("x-seeder-id", &state.id)
        .body(Full::new(body))
        .unwrap();
    Ok(resp)
}

/// A raw TCP seeder: segment requests get a 200 announcing 1 MiB (with the right checksum) and
/// half of it before the connection closes; health answers 503 until switched to 200.
#[derive(Debug)]
pub(super) struct CuttingSeeder {
    addr: SocketAddr,
    healthy: Arc<AtomicBool>,
    hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CuttingSeeder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The body [`CuttingSeeder`] starts to send: 1 MiB.
pub(super) fn mib() -> Bytes {
    (0..1024 * 1024)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into()
}

impl CuttingSeeder {
    pub(super) async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let healthy = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(AtomicU64::new(0));
        let (h, n) = (healthy.clone(), hits.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (h, n) = (h.clone(), n.clone());
                tokio::spawn(async move {
                    let _ = serve_cut(stream, &h, &n).await;
                });
            }
        });
        Self {
            addr,
            healthy,
            hits,
            task,
        }
    }

    pub(super) fn address(&self) -> String {
        self.addr.to_string()
    }

    pub(super) fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    pub(super) fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

async fn serve_cut(
    mut stream: TcpStream,
    healthy: &AtomicBool,
    hits: &AtomicU64,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() > 16 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1).unwrap_or("/");
    if path == "/_seeder/health" {
        let status = if healthy.load(Ordering::Relaxed) {
            "200 OK"
        } else {
            "503 Service Unavailable"
        };
        let resp = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        stream.write_all(resp.as_bytes()).await?;
        return stream.shutdown().await;
    }
    hits.fetch_add(1, Ordering::Relaxed);
    let body = mib();
    let resp = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-content-sha256: {}\r\nx-seeder-id: cutter\r\n\r\n",
        body.len(),
        sha256(&body)
    );
    stream.write_all(resp.as_bytes()).await?;
    stream.write_all(&body[..body.len() / 2]).await?;
    stream.flush().await?;
    stream.shutdown().await
}

/// A raw TCP seeder answering every request with a 64 MiB body, announced by `Content-Length`
/// for paths ending in `announced.ts` and sent chunked otherwise; counts the body bytes it got
/// to write before the client went away.
#[derive(Debug)]
pub(super) struct FloodingSeeder {
    addr: SocketAddr,
    sent: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FloodingSeeder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What [`FloodingSeeder`] sends per request.
pub(super) const FLOOD: u64 = 64 << 20;

impl FloodingSeeder {
    pub(super) async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let counter = counter.clone();
                tokio::spawn(async move {
                    let _ = serve_flood(stream, &counter).await;
                });
            }
        });
        Self { addr, sent, task }
    }

    pub(super) fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Body bytes written so far, over every request.
    pub(super) fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

async fn serve_flood(mut stream: TcpStream, sent: &AtomicU64) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() > 16 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let announced = head
        .split_whitespace()
        .nth(1)
        .is_some_and(|p| p.ends_with("announced.ts"));
    let framing = if announced {
        format!("content-length: {FLOOD}")
    } else {
        "transfer-encoding: chunked".to_owned()
    };
    let resp = format!(
        "HTTP/1.1 200 OK\r\n{framing}\r\nx-content-sha256: {}\r\nconnection: close\r\n\r\n",
        sha256(b"whatever")
    );
    stream.write_all(resp.as_bytes()).await?;
    let chunk = vec![b'x'; 64 * 1024];
    let mut left = FLOOD;
    while left > 0 {
        if announced {
            stream.write_all(&chunk).await?;
        } else {
            stream
                .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await?;
            stream.write_all(&chunk).await?;
            stream.write_all(b"\r\n").await?;
        }
        sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        left -= chunk.len() as u64;
    }
    if !announced {
        stream.write_all(b"0\r\n\r\n").await?;
    }
    stream.shutdown().await
}

/// An origin holding a few objects in memory, counting its reads.
#[derive(Debug, Default)]
pub(super) struct CountingOrigin {
    objects: Mutex<HashMap<String, Bytes>>,
    hits: AtomicU64,
}

impl CountingOrigin {
    pub(super) fn put(&self, path: &str, body: &Bytes) {
        self.objects.lock().insert(path.to_owned(), body.clone());
    }

    pub(super) fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

#[async_trait::async_trait]
impl Origin for CountingOrigin {
    async fn open(
        &self,
        path: &str,
        range: Option<std::ops::Range<u64>>,
        _: Option<&str>,
    ) -> Result<Opened, OriginError> {
        self.hits.fetch_add(1, Ordering::Relaxed);
        let body: bytes::Bytes = self
            .objects
            .lock()
            .get(path)
            .cloned()
            .ok_or(OriginError::NotFound)?;
        let size = body.len() as u64;
        let r = range.unwrap_or(0..size);
        let r = r.start.min(size)..r.end.min(size);
        let info = ObjectInfo {
            size,
            etag: None,
            last_modified: None,
            cache_control: None,
            tier: Tier::Origin,
        };
        Ok(Opened::whole(
            info,
            r.clone(),
            body.slice(r.start as usize..r.end as usize),
        ))
    }

    async fn check(&self) -> Result<(), OriginError> {
        Ok(())
    }

    fn describe(&self) -> String {
        "test-origin".into()
    }
}
