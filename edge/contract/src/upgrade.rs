//! Upgraded connections (HTTP/1.1 `Upgrade`, `101 Switching Protocols`): after the 101 the
//! connection is a byte stream in both directions, handed to the handler as [`Upgraded`]
//! (tokio's `AsyncRead + AsyncWrite`, what WebSocket libraries take). It is the connection's
//! own stream (TCP or TLS), not a copy through buffers: an idle upgraded connection costs what
//! its socket and the handler's protocol state cost, nothing more.

use http::{HeaderMap, header};
use std::{
    fmt,
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::watch,
};

/// What runs once the 101 is sent: it owns the connection until it returns (then the listener
/// closes it).
pub type OnUpgrade = Box<dyn FnOnce(Upgraded) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// A connection's byte stream, as the listener hands it over.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + ?Sized> Io for T {}

/// Both directions of an upgraded connection: reading gives what the client sends (EOF when it
/// closed its side), writing sends to the client; dropping it closes the connection.
///
/// No timeouts apply any more (the listener's read and send timeouts were for HTTP): the
/// handler keeps its own time (WebSocket pings, a bound on each write to a client that stops
/// reading). Writes may sit in the connection's write buffer until flushed (WebSocket libraries
/// flush each message). The connection counts as in flight (drain, connection caps) while
/// `on_upgrade`'s future runs: a handler must not hand the stream to a task that outlives it.
pub struct Upgraded {
    io: Box<dyn Io>,
    draining: watch::Receiver<bool>,
}

impl fmt::Debug for Upgraded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upgraded").finish_non_exhaustive()
    }
}

impl Upgraded {
    /// The connection's stream after the 101 (written and flushed), with the listener's drain
    /// signal.
    pub fn new(io: Box<dyn Io>, draining: watch::Receiver<bool>) -> Self {
        Self { io, draining }
    }

    /// Resolves when the process starts draining: close the connection soon (a WebSocket
    /// server sends a close frame, "going away"). The drain waits for upgraded connections up
    /// to its deadline like for any request; one still open then ends when the process exits.
    /// Independent of `self`, so that it can be awaited after the stream was handed to a
    /// protocol library.
    pub fn draining(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.draining.clone();
        async move {
            let _ = rx.wait_for(|d| *d).await;
        }
    }
}

impl AsyncRead for Upgraded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Whether an HTTP/1.1 request asks to upgrade to `protocol` (`Connection: upgrade` and
/// `protocol` among the comma-separated protocols of `Upgrade`, RFC 9110 §7.8; names compared
/// without case, a `/version` part kept: `websocket` is not `websocket/2`).
pub(crate) fn requested(headers: &HeaderMap, protocol: &str) -> bool {
    let listed = |name: header::HeaderName, wanted: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(wanted))
    };
    listed(header::CONNECTION, "upgrade") && listed(header::UPGRADE, protocol)
}

#[cfg(test)]
mod tests {
    use super::requested;
    use http::{HeaderMap, HeaderValue, header};

    fn headers(pairs: &[(header::HeaderName, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(n.clone(), HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn any_listed_protocol_counts_and_connection_upgrade_is_required() {
        let up = |upgrade: &'static str| {
            headers(&[
                (header::CONNECTION, "keep-alive, Upgrade"),
                (header::UPGRADE, upgrade),
            ])
        };
        assert!(requested(&up("websocket"), "websocket"));
        assert!(requested(&up("WebSocket"), "websocket"));
        assert!(requested(&up("h2c, websocket"), "websocket"));
        assert!(!requested(&up("h2c"), "websocket"));
        assert!(!requested(&up("websocket/2"), "websocket"));
        assert!(!requested(
            &headers(&[(header::UPGRADE, "websocket")]),
            "websocket"
        ));
        let two_lines = headers(&[
            (header::CONNECTION, "upgrade"),
            (header::UPGRADE, "h2c"),
            (header::UPGRADE, "websocket"),
        ]);
        assert!(requested(&two_lines, "websocket"));
    }
}
