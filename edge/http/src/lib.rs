//! HTTP/1.1 and HTTP/2 listeners on pingora, in front of any [`Handler`].
//!
//! [`HttpApp`] implements pingora's `HttpServerApp`: it turns each pingora session (h1, h2c or
//! h2 over TLS with ALPN) into an [`EdgeRequest`], awaits the handler, and writes the
//! [`EdgeResponse`] back without copying its body. [`Listeners`] binds sockets itself (so port 0
//! works and the bound address is known before anything is served), hands them to pingora's
//! listening service, and drains on shutdown.
//!
//! Pingora's `Server` is deliberately not used: it owns signals and process exit, sleeps its whole
//! grace period on shutdown, and cannot report bound ports; the edge runs pingora's services on its
//! own runtime instead and drains by counting requests in flight.

mod app;
mod conn;
mod tls;

pub use app::HttpApp;
pub use conn::{ConnectionMetrics, Limits};
pub use tls::{TlsError, tls_settings};

use pingora_core::{
    listeners::{L4BufferSettings, ListenerConfig, tls::TlsSettings},
    server::{Fds, ListenFds},
    services::{Service as _, listening::Service},
};
use std::{
    net::SocketAddr,
    os::fd::IntoRawFd,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};
use tokio::{sync::watch, task::JoinHandle};

/// Per-connection write buffer. Pingora's default (1460 bytes) sends the head and the body of
/// any response over ~1.4 KB in two `send`s; with 8 KiB a token-rewritten manifest goes out in one,
/// which measured +25 % requests/s on a 2.3 KB manifest (bench/RESULTS.md). Larger bodies are
/// written straight from their `Bytes`, past the buffer.
pub const WRITE_BUFFER: usize = 8 * 1024;

/// Per-connection read buffer of plain listeners (see [`Listeners::serve`]).
pub const PLAIN_READ_BUFFER: usize = 0;

/// Per-connection read buffer of TLS listeners, under OpenSSL's reads of a record's 5-byte
/// header and then its body: one `recv` brings a request's records whole. Pingora's default
/// (64 KiB) was 70 % of an idle `wss://` connection's memory (bench/RESULTS.md); what clients
/// send is small (request heads, HTTP/2 control frames, signaling messages).
pub const TLS_READ_BUFFER: usize = 4 * 1024;

/// The per-connection buffers of a listener set, allocated at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffers {
    /// Read buffer under a plain connection.
    pub plain_read: usize,
    /// Read buffer under a TLS connection.
    pub tls_read: usize,
    /// Write buffer.
    pub write: usize,
}

impl Buffers {
    /// For HTTP: [`WRITE_BUFFER`], [`PLAIN_READ_BUFFER`], [`TLS_READ_BUFFER`].
    pub const HTTP: Self = Self {
        plain_read: PLAIN_READ_BUFFER,
        tls_read: TLS_READ_BUFFER,
        write: WRITE_BUFFER,
    };
    /// For listeners of long-lived WebSocket connections: no write buffer (the WebSocket
    /// session gathers a burst of messages into one write and keeps nothing while idle), so an
    /// idle connection holds no buffer but the TLS read one.
    pub const WEBSOCKET: Self = Self {
        plain_read: 0,
        tls_read: TLS_READ_BUFFER,
        write: 0,
    };
}

/// A socket bound by the edge, with its TLS settings if it is a TLS listener.
pub struct BoundListener {
    listener: std::net::TcpListener,
    tls: Option<TlsSettings>,
}

impl BoundListener {
    /// Binds `addr` (port 0 picks a free port). `tls` makes it a TLS listener.
    pub fn bind(addr: SocketAddr, tls: Option<TlsSettings>) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(Self { listener, tls })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound socket has an address")
    }

    /// Whether this is a TLS listener.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}

/// Running listening services and the switch that drains them.
pub struct Listeners {
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    apps: Vec<Arc<app::InFlight>>,
    limits: Limits,
    metrics: ConnectionMetrics,
}

impl Default for Listeners {
    /// The default [`Limits`], metrics registered nowhere.
    fn default() -> Self {
        Self::new(Limits::default(), ConnectionMetrics::unregistered())
    }
}

impl Listeners {
    /// Listener sets served with `limits` (each set its own connection counts), reporting to
    /// `metrics`.
    pub fn new(limits: Limits, metrics: ConnectionMetrics) -> Self {
        Self {
            shutdown: watch::channel(false).0,
            tasks: Vec::new(),
            apps: Vec::new(),
            limits,
            metrics,
        }
    }

    /// Serves `app` on `listeners` (on the current tokio runtime) until [`Listeners::drain`];
    /// `name` labels its connection metrics.
    pub fn serve<H: edge_contract::Handler>(
        &mut self,
        name: &str,
        app: HttpApp<H>,
        listeners: Vec<BoundListener>,
    ) {
        self.serve_with(name, app, listeners, Buffers::HTTP);
    }

    /// [`serve`](Self::serve) with other per-connection buffers.
    pub fn serve_with<H: edge_contract::Handler>(
        &mut self,
        name: &str,
        app: HttpApp<H>,
        listeners: Vec<BoundListener>,
        buffers: Buffers,
    ) {
        self.apps.push(app.in_flight());
        let shared = Arc::new(conn::Shared::new(name, self.limits, self.metrics.clone()));
        let app = conn::Guarded::new(app.limited_by(shared.clone()), shared);
        let mut service = Service::new(name.to_owned(), app);
        let mut fds = Fds::new();
        for l in listeners {
            let key = l.local_addr().to_string();
            let tls = l.tls;
            fds.add(key.clone(), l.listener.into_raw_fd());
            let l4 = L4BufferSettings::default().write(buffers.write);
            let endpoint = match tls {
                Some(settings) => ListenerConfig::tcp(key)
                    .l4_buffer(l4.read(buffers.tls_read))
                    .tls(settings),
                // No read buffer under plain HTTP: pingora's session reads heads and bodies into
                // buffers of its own, an upgraded protocol (tungstenite) too; pingora's default
                // (64 KiB per connection) was most of an idle WebSocket's memory.
                None => ListenerConfig::tcp(key).l4_buffer(l4.read(buffers.plain_read)),
            };
            service.add_listener(endpoint);
        }
        let fds: ListenFds = Arc::new(parking_lot::Mutex::new(fds));
        let shutdown = self.shutdown.subscribe();
        self.tasks.push(tokio::spawn(async move {
            service.start_service(Some(fds), shutdown, 1).await;
        }));
    }

    /// Stops accepting connections, waits until no request is in flight or `timeout` passes, and
    /// returns how many requests were still running when it gave up (0 after a clean drain).
    pub async fn drain(self, timeout: Duration) -> usize {
        let _ = self.shutdown.send(true);
        let deadline = Instant::now() + timeout;
        let busy = || {
            self.apps
                .iter()
                .map(|a| a.0.load(Ordering::SeqCst))
                .sum::<usize>()
        };
        while busy() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = busy();
        // The services return once their accept loops have seen the shutdown and closed their
        // sockets; whatever is still running at the deadline is aborted.
        let remaining = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100));
        let mut tasks = self.tasks;
        if tokio::time::timeout(remaining, futures::future::join_all(tasks.iter_mut()))
            .await
            .is_err()
        {
            for t in &tasks {
                t.abort();
            }
        }
        left
    }
}
