use crate::conn::{self, ConnectionMetrics, Limits};
use async_trait::async_trait;
use edge_contract::{
    Body, BodyError, BodySender, EdgeRequest, EdgeResponse, Handler, Protocol, RequestBody,
    Upgraded,
};
use futures::{FutureExt, StreamExt};
use http::{Method, StatusCode, header};
use pingora_core::{
    apps::{HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream},
    protocols::http::{
        ServerSession,
        v2::server::{H2Options, default_h2_options},
    },
    server::ShutdownWatch,
};
use pingora_http::ResponseHeader;
use std::{
    net::{IpAddr, Ipv4Addr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

/// Requests being handled by one app.
pub(crate) struct InFlight(pub(crate) AtomicUsize);

/// Pingora application that serves every request with a [`Handler`].
pub struct HttpApp<H> {
    handler: Arc<H>,
    options: HttpServerOptions,
    in_flight: Arc<InFlight>,
    conn: Arc<conn::Shared>,
}

impl<H: Handler> HttpApp<H> {
    /// An app for `handler`; plain-text listeners also accept HTTP/2 with prior knowledge (h2c).
    /// Its limits are those of the [`crate::Listeners`] that serves it.
    pub fn new(handler: Arc<H>) -> Self {
        let mut options = HttpServerOptions::default();
        options.h2c = true;
        Self {
            handler,
            options,
            in_flight: Arc::new(InFlight(AtomicUsize::new(0))),
            conn: Arc::new(conn::Shared::new(
                "",
                Limits::default(),
                ConnectionMetrics::unregistered(),
            )),
        }
    }

    pub(crate) fn in_flight(&self) -> Arc<InFlight> {
        self.in_flight.clone()
    }

    /// Takes the limits and metrics of the listener set that serves it.
    pub(crate) fn limited_by(mut self, conn: Arc<conn::Shared>) -> Self {
        self.options.h2_idle_timeout = Some(conn.limits.keepalive_timeout);
        self.conn = conn;
        self
    }

    /// The same app over the same handler, speaking only HTTP/1.1 on plain connections.
    pub(crate) fn h1_only(&self) -> Self {
        let mut options = self.options.clone();
        options.h2c = false;
        Self {
            handler: self.handler.clone(),
            options,
            in_flight: self.in_flight.clone(),
            conn: self.conn.clone(),
        }
    }

    /// Reads the request head within its deadline (see [`Limits::header_timeout`]). `false`: the
    /// connection is done (closed, broken, idle past keep-alive, or cut).
    async fn read_head(&self, session: &mut ServerSession) -> bool {
        let limits = &self.conn.limits;
        if session.is_http2() {
            // The h2 connection has parsed the head already (bounded by max_header_list_size).
            self.conn.h2_stream(session);
            return session.read_request().await.unwrap_or(false);
        }
        let reused = session.take_connection_user_context().is_some();
        let budget = if reused {
            limits.keepalive_timeout + limits.header_timeout
        } else {
            // From the accept (TLS handshake and the first bytes' wait included).
            let since_accept = session
                .digest()
                .and_then(|d| d.timing_digest.first().cloned().flatten())
                .and_then(|t| t.established_ts.elapsed().ok())
                .unwrap_or_default();
            limits.header_timeout.saturating_sub(since_accept)
        };
        match tokio::time::timeout(budget, session.read_request()).await {
            Ok(r) => r.unwrap_or(false),
            Err(_) => {
                self.conn.metrics.cut(&self.conn.name, "header_timeout");
                false
            }
        }
    }

    /// Whether an HTTP/1.1 head is larger than [`Limits::max_header_bytes`] (pingora reads up
    /// to 1 MiB of it); answers 431 and closes when it is.
    async fn refuse_large_head(&self, session: &mut ServerSession) -> bool {
        if session.is_http2() {
            return false;
        }
        let head = session.req_header();
        let size = head.method.as_str().len()
            + head.raw_path().len()
            + head
                .headers
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len() + 4)
                .sum::<usize>();
        if size <= self.conn.limits.max_header_bytes {
            return false;
        }
        self.conn.metrics.cut(&self.conn.name, "header_too_large");
        session.set_keepalive(None);
        let response = EdgeResponse::error(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "header_too_large",
        );
        let _ = write_response(session, response, false, self.conn.limits.send_timeout).await;
        // A body may follow the head: read some of it, so that closing does not reset the
        // connection before the client saw the answer.
        linger(session).await;
        true
    }
}

struct Busy<'a>(&'a AtomicUsize);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl<H: Handler> HttpServerApp for HttpApp<H> {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if !self.read_head(&mut session).await {
            return None;
        }
        self.in_flight.0.fetch_add(1, Ordering::SeqCst);
        let _busy = Busy(&self.in_flight.0);
        if self.refuse_large_head(&mut session).await {
            return None;
        }
        // Each body read waits body_timeout at most (pingora's default is 60 s per read); each
        // write send_timeout (a client that stops reading is cut, as nginx's send_timeout).
        session.set_read_timeout(Some(self.conn.limits.body_timeout));
        session.set_write_timeout(Some(self.conn.limits.send_timeout));
        let draining = *shutdown.borrow();
        let keepalive = self.conn.limits.keepalive_timeout.as_secs().max(1);
        session.set_keepalive(if draining { None } else { Some(keepalive) });

        let (req, body) = request_head(&mut session);
        let head = req.method == Method::HEAD;
        let failed = AtomicBool::new(false);
        let response = match body {
            // Most requests (GET, HEAD) have no body: nothing to pump.
            None => self.handler.handle(req).await,
            Some(body) => {
                // The body is read from the connection only while the handler asks for it.
                let handle = self.handler.handle(req);
                let pump = pump_body(&mut session, body, &failed, &self.conn);
                tokio::pin!(handle, pump);
                tokio::select! {
                    r = &mut handle => r,
                    () = &mut pump => handle.await,
                }
            }
        };
        if matches!(response.body, Body::Upgrade(_)) {
            let send_timeout = self.conn.limits.send_timeout;
            upgrade(session, response, shutdown, send_timeout, &self.in_flight).await;
            return None;
        }
        // A body the handler did not read to the end (or that broke) may leave bytes on the
        // wire: the connection is not reused for another request.
        let unread = failed.load(Ordering::SeqCst) || !session.is_body_done();
        if unread {
            session.set_keepalive(None);
        }
        let send_timeout = self.conn.limits.send_timeout;
        write_response(&mut session, response, head, send_timeout).await?;
        if unread && !session.is_http2() {
            linger(&mut session).await;
            return None;
        }
        let mut persistent = HttpPersistentSettings::for_session(&session);
        // Tells the next request's head it comes on a reused connection.
        persistent.set_user_context(Box::new(Reused));
        let finished = tokio::time::timeout(send_timeout, session.finish()).await;
        match finished.unwrap_or(Ok(None)) {
            Ok(Some(stream)) => Some(ReusedHttpStream::from_reusable_stream(stream, persistent)),
            _ => None,
        }
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        Some(&self.options)
    }

    fn h2_options(&self) -> Option<H2Options> {
        let mut options = default_h2_options();
        options.max_header_list_size(
            u32::try_from(self.conn.limits.max_header_bytes).unwrap_or(u32::MAX),
        );
        Some(options)
    }
}

/// Marks an HTTP/1.1 connection that served a request already.
struct Reused;

/// After answering a request whose body was not read: how long, and how many body bytes, the
/// listener reads and discards before closing. Closing with unread data makes the kernel reset
/// the connection, and a client still sending its body could lose the answer (nginx's
/// `lingering_close` for the same reason); the bound keeps a stalled or endless upload from
/// holding the connection.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 4 << 20;

async fn linger(session: &mut ServerSession) {
    let drain = async {
        let mut read = 0;
        while read < LINGER_BYTES {
            match session.read_request_body().await {
                Ok(Some(chunk)) => read += chunk.len(),
                Ok(None) | Err(_) => break,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

/// The request head as an [`EdgeRequest`] whose body the listener streams through the returned
/// sender (`None`: the request has no body). pingora has validated the head (framing,
/// `Content-Length`) before this.
fn request_head(session: &mut ServerSession) -> (EdgeRequest, Option<BodySender>) {
    let head = session.req_header();
    let method = head.method.clone();
    let path = head.uri.path().to_owned();
    let query = head.uri.query().unwrap_or_default().to_owned();
    let mut headers = head.headers.clone();
    // HTTP/1.0 has no upgrade (RFC 9110 §7.8: ignore `Upgrade` there); pingora would not switch.
    if head.version == http::Version::HTTP_10 {
        headers.remove(header::UPGRADE);
    }
    if !headers.contains_key(http::header::HOST)
        && let Some(v) = head
            .uri
            .authority()
            .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
    {
        headers.insert(http::header::HOST, v);
    }
    // `Content-Length: 5, 5` is valid (RFC 9110 §8.6): the first value.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.trim().parse::<u64>().ok());
    let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
    let client_addr = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
    let protocol = if session.is_http2() {
        Protocol::Http2
    } else {
        Protocol::Http1
    };
    let (sender, body) = if session.is_body_empty() {
        (None, RequestBody::empty())
    } else {
        let (sender, body) = RequestBody::channel(declared);
        (Some(sender), body)
    };
    (
        EdgeRequest {
            method,
            path,
            query,
            headers,
            client_addr,
            protocol,
            tls,
            body,
        },
        sender,
    )
}

/// Moves the request body from the connection to the handler, one chunk per demand. Answers
/// `Expect: 100-continue` only when the handler first asks for the body. Sets `failed` when the
/// body broke (the connection must not be reused). Waits [`Limits::body_timeout`] at most for
/// each piece (pingora's HTTP/2 body reads have no timeout of their own; HTTP/1.1 reads 60 s).
async fn pump_body(
    session: &mut ServerSession,
    tx: BodySender,
    failed: &AtomicBool,
    conn: &conn::Shared,
) {
    if session.is_body_done() {
        return; // dropping `tx` ends the body
    }
    let expects_continue = session
        .req_header()
        .headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let mut first = true;
    loop {
        if !tx.wanted().await {
            return;
        }
        let read = async {
            if std::mem::take(&mut first) && expects_continue {
                session
                    .write_continue_response()
                    .await
                    .map_err(|e| (e.to_string(), false))?;
            }
            session.read_request_body().await.map_err(|e| {
                // Pingora's own read timeout (set to body_timeout too) may fire first.
                let timed_out = *e.etype() == pingora_core::ErrorType::ReadTimedout;
                (e.to_string(), timed_out)
            })
        };
        match tokio::time::timeout(conn.limits.body_timeout, read).await {
            Ok(Ok(Some(chunk))) => {
                if !tx.send(Ok(chunk)).await {
                    return;
                }
            }
            Ok(Ok(None)) => return,
            Ok(Err((e, false))) => {
                failed.store(true, Ordering::SeqCst);
                tx.send(Err(BodyError::Interrupted(e))).await;
                return;
            }
            Err(_) | Ok(Err((_, true))) => {
                failed.store(true, Ordering::SeqCst);
                conn.metrics.cut(&conn.name, "body_timeout");
                tx.send(Err(BodyError::Interrupted(
                    "request body idle timeout".into(),
                )))
                .await;
                return;
            }
        }
    }
}

/// Sends a handler's `101` and hands the connection's own stream to the handler's
/// [`Body::Upgrade`] in a task of its own; a 500 `upgrade_unavailable` when the request cannot be
/// upgraded (HTTP/2, no `Upgrade` asked for, a status other than 101).
///
/// The task takes the connection's admission and counts as a request in flight until it ends,
/// so drain and the connection caps see it as before; the listener's task, the request's
/// future and the HTTP session end here. They were most of an idle WebSocket's memory
/// (bench/RESULTS.md: 6.4 KiB request future, 3.8 KiB connection future, 2.5 KiB task).
async fn upgrade(
    mut session: ServerSession,
    response: EdgeResponse,
    shutdown: &ShutdownWatch,
    send_timeout: Duration,
    in_flight: &Arc<InFlight>,
) {
    let EdgeResponse {
        status,
        headers,
        body,
    } = response;
    let Body::Upgrade(on_upgrade) = body else {
        return;
    };
    session.set_keepalive(None);
    if status != StatusCode::SWITCHING_PROTOCOLS || session.is_http2() || !session.is_upgrade_req()
    {
        tracing::error!(%status, "a handler upgraded a request that cannot be upgraded");
        let refused = EdgeResponse::error(StatusCode::INTERNAL_SERVER_ERROR, "upgrade_unavailable");
        let _ = write_response(&mut session, refused, false, send_timeout).await;
        return;
    }
    let Ok(mut head) = ResponseHeader::build(status, Some(headers.len() + 1)) else {
        return;
    };
    for (name, value) in &headers {
        if matches!(
            name,
            &header::CONTENT_LENGTH | &header::TRANSFER_ENCODING | &header::CONNECTION
        ) {
            continue;
        }
        if head.append_header(name.clone(), value.clone()).is_err() {
            return;
        }
    }
    let head_ok = head.insert_header(header::CONNECTION, "upgrade");
    let written = tokio::time::timeout(send_timeout, session.write_response_header(Box::new(head)));
    if head_ok.is_err() || !matches!(written.await, Ok(Ok(()))) || !session.was_upgraded() {
        return;
    }
    // pingora flushed the 1xx head. What it read past the request head (a client that sent its
    // first frame with the handshake, against RFC 6455 4.1 but seen) is handed out as the start
    // of the upgraded body, without I/O: it goes in front of the stream.
    let mut early = bytes::BytesMut::new();
    while let Some(Ok(Some(chunk))) = session.read_request_body().now_or_never() {
        early.extend_from_slice(&chunk);
    }
    let ServerSession::H1(h1) = session else {
        return;
    };
    let stream: Box<dyn edge_contract::Io> = Box::new(Prefixed {
        early: early.freeze(),
        stream: h1.into_inner(),
    });
    let admission = conn::take_admission();
    in_flight.0.fetch_add(1, Ordering::SeqCst);
    let busy = OwnedBusy(in_flight.clone());
    let run = on_upgrade(Upgraded::new(stream, shutdown.clone()));
    tokio::spawn(async move {
        let _held = (admission, busy);
        run.await;
    });
}

/// A request in flight as long as it lives (the task of an upgraded connection).
struct OwnedBusy(Arc<InFlight>);

impl Drop for OwnedBusy {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An upgraded connection's stream with the bytes read before the upgrade in front.
struct Prefixed {
    early: bytes::Bytes,
    stream: pingora_core::protocols::Stream,
}

impl tokio::io::AsyncRead for Prefixed {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.early.is_empty() {
            let n = self.early.len().min(buf.remaining());
            let head = self.early.split_to(n);
            buf.put_slice(&head);
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Prefixed {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Most bytes of one write to the client: `send_timeout` bounds each write, so it measures
/// progress (a slow reader that keeps reading is not cut in the middle of a 4 MiB slice).
const WRITE_PIECE: usize = 256 * 1024;

/// How long a connection being closed may take to flush what is buffered for the client.
const CLOSE_FLUSH: Duration = Duration::from_secs(2);

/// Closes the connection (h1: flush and close, h2: reset the stream); a client that does not
/// read cannot hold it.
async fn close(session: &mut ServerSession) {
    let _ = tokio::time::timeout(CLOSE_FLUSH, session.shutdown()).await;
}

/// Writes `bytes` in pieces of at most [`WRITE_PIECE`].
async fn write_pieces(session: &mut ServerSession, mut bytes: bytes::Bytes) -> Option<()> {
    while bytes.len() > WRITE_PIECE {
        let piece = bytes.split_to(WRITE_PIECE);
        session.write_response_body(piece, false).await.ok()?;
    }
    session.write_response_body(bytes, false).await.ok()
}

async fn write_response(
    session: &mut ServerSession,
    response: EdgeResponse,
    head: bool,
    send_timeout: Duration,
) -> Option<()> {
    let EdgeResponse {
        status,
        headers,
        body,
    } = response;
    let mut resp = ResponseHeader::build(status, Some(headers.len() + 2)).ok()?;
    for (name, value) in &headers {
        // Framing is the listener's: whatever a handler set, the body decides it.
        if matches!(
            name,
            &header::CONTENT_LENGTH | &header::TRANSFER_ENCODING | &header::CONNECTION
        ) {
            continue;
        }
        resp.append_header(name.clone(), value.clone()).ok()?;
    }
    let bodyless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    if !bodyless {
        match body.len() {
            Some(n) => resp.insert_header(header::CONTENT_LENGTH, n).ok()?,
            // HTTP/1.0 has no chunked encoding: the body ends when the connection does (and a
            // cut body is then indistinguishable from a complete one, as HTTP/1.0 has it).
            None if session.req_header().version == http::Version::HTTP_10 => {
                session.set_keepalive(None);
            }
            None if !session.is_http2() => resp
                .insert_header(header::TRANSFER_ENCODING, "chunked")
                .ok()?,
            None => {}
        }
    }
    // pingora bounds body writes (send_timeout), not the head's.
    tokio::time::timeout(send_timeout, session.write_response_header(Box::new(resp)))
        .await
        .ok()?
        .ok()?;
    if head || bodyless {
        return Some(());
    }
    match body {
        Body::Full(bytes) if bytes.is_empty() => Some(()),
        Body::Full(bytes) => {
            write_pieces(session, bytes).await?;
            session.finish_body().await.ok()
        }
        // Handled before (`upgrade`): never reaches here.
        Body::Upgrade(_) => None,
        Body::Stream { len, mut chunks } => {
            let mut sent = 0u64;
            while let Some(chunk) = chunks.next().await {
                let chunk = match chunk {
                    Ok(c) => c,
                    Err(e) => {
                        // Cut the response (h1: close, h2: reset) so that the client cannot
                        // take what it got for the whole body.
                        tracing::debug!(error = %e, sent, "response body failed; cut");
                        close(session).await;
                        return None;
                    }
                };
                sent += chunk.len() as u64;
                if len.is_some_and(|n| sent > n) {
                    close(session).await;
                    return None;
                }
                write_pieces(session, chunk).await?;
            }
            if len.is_some_and(|n| sent != n) {
                close(session).await;
                return None;
            }
            session.finish_body().await.ok()
        }
    }
}
