//! Connection hygiene: what one client, or all of them, may hold of a listener set.
//!
//! [`Guarded`] is the pingora `ServerApp` every listener runs. Before any HTTP is parsed it
//! admits the connection (at most [`Limits::max_connections`] open, at most
//! [`Limits::max_connections_per_client`] from one address; refused connections are closed at
//! once) and, on plain listeners, waits at most [`Limits::header_timeout`] for the first bytes,
//! which say whether the client speaks HTTP/2 with prior knowledge (h2c) or HTTP/1.1. Pingora's
//! own h2c detection waits, without a deadline, for 24 bytes — a client that sends less holds the
//! connection forever, and a short HTTP/1.0 request is never answered. An HTTP/2 connection (h2c,
//! or h2 by ALPN on TLS) must start its first stream by the same deadline — pingora's h2 handshake
//! and SETTINGS wait have no deadline of their own. The rest of the limits apply per request in
//! [`crate::HttpApp`].

use crate::app::HttpApp;
use async_trait::async_trait;
use edge_contract::Handler;
use parking_lot::Mutex;
use pingora_core::{
    apps::ServerApp,
    protocols::{ALPN, Stream, l4::stream::Stream as L4Stream},
    server::ShutdownWatch,
};
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::{io::AsyncReadExt, sync::Notify};

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection and its requests may take. [`Default`] is what `[server]` ships with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// From a connection's accept (TLS handshake included) to the end of its first request's
    /// head; on a reused HTTP/1.1 connection, after [`Limits::keepalive_timeout`] to start the
    /// next request, this long again to finish its head. A connection that misses it is closed.
    pub header_timeout: Duration,
    /// How long an idle HTTP/1.1 connection is kept open between requests, and an HTTP/2
    /// connection without open streams.
    pub keepalive_timeout: Duration,
    /// Longest wait for the next piece of a request body the handler asked for.
    pub body_timeout: Duration,
    /// Longest wait for the client to take the next piece of a response (a client that stops
    /// reading is cut; a paused progressive download resumes with a range request).
    pub send_timeout: Duration,
    /// Open connections of one listener set (a role's listeners) at most; more are closed at
    /// accept.
    pub max_connections: usize,
    /// Open connections from one client address at most.
    pub max_connections_per_client: usize,
    /// Largest request head (request line and headers; HTTP/2: the header list): 431 above it.
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_connections_per_client: 256,
            max_header_bytes: 64 * 1024,
        }
    }
}

/// Connection metrics, labelled by listener set (`edge`, `seeder`, `admin`).
#[derive(Clone)]
pub struct ConnectionMetrics {
    open: IntGaugeVec,
    refused: IntCounterVec,
    cut: IntCounterVec,
}

impl ConnectionMetrics {
    /// Registers `edge_connections_open`, `edge_connections_refused_total{reason}` and
    /// `edge_connections_cut_total{reason}` in `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let open = IntGaugeVec::new(
            Opts::new("edge_connections_open", "Open client connections"),
            &["listener"],
        )?;
        let refused = IntCounterVec::new(
            Opts::new(
                "edge_connections_refused_total",
                "Connections closed at accept (max_connections, max_connections_per_client)",
            ),
            &["listener", "reason"],
        )?;
        let cut = IntCounterVec::new(
            Opts::new(
                "edge_connections_cut_total",
                "Connections closed for a limit (header_timeout, body_timeout, header_too_large)",
            ),
            &["listener", "reason"],
        )?;
        registry.register(Box::new(open.clone()))?;
        registry.register(Box::new(refused.clone()))?;
        registry.register(Box::new(cut.clone()))?;
        Ok(Self { open, refused, cut })
    }

    /// Metrics registered nowhere (tests, tools).
    pub fn unregistered() -> Self {
        Self::new(&Registry::new()).expect("a fresh registry takes every metric")
    }

    pub(crate) fn cut(&self, listener: &str, reason: &str) {
        self.cut.with_label_values(&[listener, reason]).inc();
    }
}

/// Open connections, in all and per client address.
#[derive(Default)]
struct Counts {
    all: usize,
    per_client: HashMap<IpAddr, usize>,
}

/// The address a client's connections are counted under: IPv4 as it is (IPv4-mapped IPv6
/// included), IPv6 by its /64 (one subscriber's network, which hands out the rest freely).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// One admitted connection; dropping it gives its place back.
pub(crate) struct Admitted {
    guard: Arc<Shared>,
    client: Option<IpAddr>,
}

tokio::task_local! {
    /// The admission of the connection a pingora task serves, while it serves it: an upgraded
    /// connection takes it along to the task that runs it past the request
    /// ([`take_admission`]), so it keeps counting against the caps until it closes.
    static ADMISSION: std::cell::RefCell<Option<Admitted>>;
}

/// Takes the admission of the connection being served (`None` outside a listener's task, or
/// taken already).
pub(crate) fn take_admission() -> Option<Admitted> {
    ADMISSION.try_with(|a| a.borrow_mut().take()).ok().flatten()
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut counts = self.guard.counts.lock();
        counts.all -= 1;
        if let Some(ip) = self.client
            && let Some(n) = counts.per_client.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                counts.per_client.remove(&ip);
            }
        }
        drop(counts);
        self.guard
            .metrics
            .open
            .with_label_values(&[&self.guard.name])
            .dec();
    }
}

/// What the admission of one listener set shares.
pub(crate) struct Shared {
    pub(crate) name: String,
    pub(crate) limits: Limits,
    pub(crate) metrics: ConnectionMetrics,
    counts: Mutex<Counts>,
    /// HTTP/2 connections that have not started a stream yet, by their socket digest's address
    /// (the same `Arc` their sessions carry): notified by the first stream.
    h2_waiting: Mutex<HashMap<usize, Arc<Notify>>>,
}

impl Shared {
    pub(crate) fn new(name: &str, limits: Limits, metrics: ConnectionMetrics) -> Self {
        Self {
            name: name.to_owned(),
            limits,
            metrics,
            counts: Mutex::new(Counts::default()),
            h2_waiting: Mutex::new(HashMap::new()),
        }
    }

    /// Called for every HTTP/2 stream: the connection's first one ends its head deadline.
    pub(crate) fn h2_stream(&self, session: &pingora_core::protocols::http::ServerSession) {
        let Some(digest) = session.digest().and_then(|d| d.socket_digest.as_ref()) else {
            return;
        };
        let key = Arc::as_ptr(digest) as usize;
        let mut waiting = self.h2_waiting.lock();
        if waiting.is_empty() {
            return;
        }
        if let Some(started) = waiting.remove(&key) {
            started.notify_one();
        }
    }

    fn admit(self: &Arc<Self>, client: Option<IpAddr>) -> Result<Admitted, &'static str> {
        let mut counts = self.counts.lock();
        if counts.all >= self.limits.max_connections {
            return Err("max_connections");
        }
        let client = client.map(client_key);
        if let Some(ip) = client {
            let n = counts.per_client.get(&ip).copied().unwrap_or(0);
            if n >= self.limits.max_connections_per_client {
                return Err("max_connections_per_client");
            }
            counts.per_client.insert(ip, n + 1);
        }
        counts.all += 1;
        drop(counts);
        self.metrics.open.with_label_values(&[&self.name]).inc();
        Ok(Admitted {
            guard: self.clone(),
            client,
        })
    }
}

/// The pingora app of a listener set: admission and protocol detection in front of two
/// [`HttpApp`]s over the same handler, one that starts HTTP/2 (h2c preface seen, or ALPN h2 on
/// TLS) and one that speaks only HTTP/1.1.
pub(crate) struct Guarded<H> {
    shared: Arc<Shared>,
    h2c: Arc<HttpApp<H>>,
    h1: Arc<HttpApp<H>>,
}

impl<H: Handler> Guarded<H> {
    pub(crate) fn new(app: HttpApp<H>, shared: Arc<Shared>) -> Self {
        let h1 = app.h1_only();
        Self {
            shared,
            h2c: Arc::new(app),
            h1: Arc::new(h1),
        }
    }
}

/// An HTTP/2 connection's entry in `h2_waiting`, removed on drop if it is still this one's.
struct Waiting<'a> {
    shared: &'a Shared,
    key: usize,
    started: Arc<Notify>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut waiting = self.shared.h2_waiting.lock();
        if waiting
            .get(&self.key)
            .is_some_and(|n| Arc::ptr_eq(n, &self.started))
        {
            waiting.remove(&self.key);
        }
    }
}

/// Which protocol a plain connection's first bytes start.
enum Start {
    H2,
    H1,
    /// Closed, failed or timed out before saying.
    Gone(Option<&'static str>),
}

/// Reads a plain connection's first bytes until they are, or cannot be, the h2 preface, and puts
/// them back. Waits until `deadline` at most.
async fn first_bytes(stream: &mut L4Stream, deadline: Instant) -> Start {
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut n = 0;
    let read = async {
        while n < buf.len() && buf[..n] == H2_PREFACE[..n] {
            match stream.read(&mut buf[n..]).await {
                Ok(0) | Err(_) => return false,
                Ok(k) => n += k,
            }
        }
        true
    };
    let read = tokio::time::timeout_at(deadline.into(), read).await;
    let start = match read {
        Ok(true) if buf == *H2_PREFACE => Start::H2,
        Ok(true) => Start::H1,
        Ok(false) => Start::Gone(None),
        Err(_) => Start::Gone(Some("header_timeout")),
    };
    stream.rewind(&buf[..n]);
    start
}

impl<H: Handler> Guarded<H> {
    /// Serves an HTTP/2 connection, closed at `deadline` unless its first stream started.
    async fn serve_h2(
        &self,
        stream: Stream,
        deadline: Instant,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let Some(key) = stream.get_socket_digest().map(|d| Arc::as_ptr(&d) as usize) else {
            return self.h2c.process_new(stream, shutdown).await;
        };
        let started = Arc::new(Notify::new());
        self.shared.h2_waiting.lock().insert(key, started.clone());
        // Taken out again however this ends (cancelled included), and only if still ours: the
        // address may belong to a newer connection once this one's digest is freed.
        let _waiting = Waiting {
            shared: &self.shared,
            key,
            started: started.clone(),
        };
        let serve = self.h2c.process_new(stream, shutdown);
        tokio::pin!(serve);
        let first = tokio::time::timeout_at(deadline.into(), started.notified());
        let in_time = tokio::select! {
            done = &mut serve => return done,
            first = first => first.is_ok(),
        };
        if in_time {
            return serve.await;
        }
        // Dropping the connection's future closes it.
        self.shared.metrics.cut(&self.shared.name, "header_timeout");
        None
    }
}

#[async_trait]
impl<H: Handler> ServerApp for Guarded<H> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let accepted = Instant::now();
        let client = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let shared = &self.shared;
        let admitted = match shared.admit(client) {
            Ok(a) => a,
            Err(reason) => {
                shared
                    .metrics
                    .refused
                    .with_label_values(&[&shared.name, reason])
                    .inc();
                tracing::debug!(?client, reason, listener = %shared.name, "connection refused");
                return None;
            }
        };
        let deadline = accepted + shared.limits.header_timeout;
        let admission = std::cell::RefCell::new(Some(admitted));
        ADMISSION
            .scope(admission, self.serve(stream, deadline, shutdown))
            .await
    }
}

impl<H: Handler> Guarded<H> {
    /// Serves an admitted connection by the protocol it speaks.
    async fn serve(
        self: &Arc<Self>,
        stream: Stream,
        deadline: Instant,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let shared = &self.shared;
        if stream.get_ssl_digest().is_some() {
            // ALPN chose the protocol; an h1 head has its own deadline in `HttpApp`.
            if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
                return self.serve_h2(stream, deadline, shutdown).await;
            }
            return self.h2c.process_new(stream, shutdown).await;
        }
        let mut plain = match stream.into_any().downcast::<L4Stream>() {
            Ok(s) => s,
            Err(_) => {
                tracing::warn!("a plain listener's stream is not a TCP stream; closed");
                return None;
            }
        };
        match first_bytes(&mut plain, deadline).await {
            Start::H2 => self.serve_h2(plain, deadline, shutdown).await,
            Start::H1 => self.h1.process_new(plain, shutdown).await,
            Start::Gone(reason) => {
                if let Some(reason) = reason {
                    shared.metrics.cut(&shared.name, reason);
                }
                None
            }
        }
    }
}
