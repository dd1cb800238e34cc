use async_trait::async_trait;
use edge_contract::{
    Body, BodyError, BodySender, EdgeRequest, EdgeResponse, Handler, Protocol, RequestBody,
};
use futures::StreamExt;
use http::{Method, StatusCode, header};
use pingora_core::{
    apps::{HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream},
    protocols::http::ServerSession,
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

/// Idle keep-alive timeout of HTTP/1.1 connections, seconds.
const KEEPALIVE_SECS: u64 = 60;

/// Requests being handled by one app.
pub(crate) struct InFlight(pub(crate) AtomicUsize);

/// Pingora application that serves every request with a [`Handler`].
pub struct HttpApp<H> {
    handler: Arc<H>,
    options: HttpServerOptions,
    in_flight: Arc<InFlight>,
}

impl<H: Handler> HttpApp<H> {
    /// An app for `handler`; plain-text listeners also accept HTTP/2 with prior knowledge (h2c).
    pub fn new(handler: Arc<H>) -> Self {
        let mut options = HttpServerOptions::default();
        options.h2c = true;
        Self {
            handler,
            options,
            in_flight: Arc::new(InFlight(AtomicUsize::new(0))),
        }
    }

    pub(crate) fn in_flight(&self) -> Arc<InFlight> {
        self.in_flight.clone()
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
        match session.read_request().await {
            Ok(true) => {}
            Ok(false) | Err(_) => return None,
        }
        self.in_flight.0.fetch_add(1, Ordering::SeqCst);
        let _busy = Busy(&self.in_flight.0);
        let draining = *shutdown.borrow();
        session.set_keepalive(if draining { None } else { Some(KEEPALIVE_SECS) });

        let (req, body) = request_head(&mut session);
        let head = req.method == Method::HEAD;
        let failed = AtomicBool::new(false);
        let response = match body {
            // Most requests (GET, HEAD) have no body: nothing to pump.
            None => self.handler.handle(req).await,
            Some(body) => {
                // The body is read from the connection only while the handler asks for it.
                let handle = self.handler.handle(req);
                let pump = pump_body(&mut session, body, &failed);
                tokio::pin!(handle, pump);
                tokio::select! {
                    r = &mut handle => r,
                    () = &mut pump => handle.await,
                }
            }
        };
        // A body the handler did not read to the end (or that broke) may leave bytes on the
        // wire: the connection is not reused for another request.
        let unread = failed.load(Ordering::SeqCst) || !session.is_body_done();
        if unread {
            session.set_keepalive(None);
        }
        write_response(&mut session, response, head).await?;
        if unread && !session.is_http2() {
            linger(&mut session).await;
            return None;
        }
        let persistent = HttpPersistentSettings::for_session(&session);
        match session.finish().await {
            Ok(Some(stream)) => Some(ReusedHttpStream::from_reusable_stream(stream, persistent)),
            _ => None,
        }
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        Some(&self.options)
    }
}

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

/// How long the listener waits for the next piece of a request body the handler asked for
/// (pingora's HTTP/2 body reads have no timeout of their own; HTTP/1.1 reads have 60 s).
const BODY_IDLE: Duration = Duration::from_secs(30);

/// Moves the request body from the connection to the handler, one chunk per demand. Answers
/// `Expect: 100-continue` only when the handler first asks for the body. Sets `failed` when the
/// body broke (the connection must not be reused).
async fn pump_body(session: &mut ServerSession, tx: BodySender, failed: &AtomicBool) {
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
                    .map_err(|e| e.to_string())?;
            }
            session.read_request_body().await.map_err(|e| e.to_string())
        };
        match tokio::time::timeout(BODY_IDLE, read).await {
            Ok(Ok(Some(chunk))) => {
                if !tx.send(Ok(chunk)).await {
                    return;
                }
            }
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                failed.store(true, Ordering::SeqCst);
                tx.send(Err(BodyError::Interrupted(e))).await;
                return;
            }
            Err(_) => {
                failed.store(true, Ordering::SeqCst);
                tx.send(Err(BodyError::Interrupted(
                    "request body idle timeout".into(),
                )))
                .await;
                return;
            }
        }
    }
}

async fn write_response(
    session: &mut ServerSession,
    response: EdgeResponse,
    head: bool,
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
            None if !session.is_http2() => resp
                .insert_header(header::TRANSFER_ENCODING, "chunked")
                .ok()?,
            None => {}
        }
    }
    session.write_response_header(Box::new(resp)).await.ok()?;
    if head || bodyless {
        return Some(());
    }
    match body {
        Body::Full(bytes) if bytes.is_empty() => Some(()),
        Body::Full(bytes) => session.write_response_body(bytes, true).await.ok(),
        Body::Stream { len, mut chunks } => {
            let mut sent = 0u64;
            while let Some(chunk) = chunks.next().await {
                let chunk = match chunk {
                    Ok(c) => c,
                    Err(e) => {
                        // Cut the response (h1: close, h2: reset) so that the client cannot
                        // take what it got for the whole body.
                        tracing::debug!(error = %e, sent, "response body failed; cut");
                        session.shutdown().await;
                        return None;
                    }
                };
                sent += chunk.len() as u64;
                if len.is_some_and(|n| sent > n) {
                    session.shutdown().await;
                    return None;
                }
                session.write_response_body(chunk, false).await.ok()?;
            }
            if len.is_some_and(|n| sent != n) {
                session.shutdown().await;
                return None;
            }
            session.finish_body().await.ok()
        }
    }
}
