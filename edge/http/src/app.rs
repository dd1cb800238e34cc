use async_trait::async_trait;
use bytes::Bytes;
use edge_pipeline::{EdgeRequest, EdgeResponse, Handler, Protocol};
use http::{HeaderValue, Method, StatusCode, header};
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
        atomic::{AtomicUsize, Ordering},
    },
};

/// Largest request body read; larger requests get 413.
pub const MAX_REQUEST_BODY: usize = 1 << 20;

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

        let response = match read_request(&mut session).await {
            Ok(req) => {
                let head = req.method == Method::HEAD;
                (self.handler.handle(req).await, head)
            }
            Err(status) => {
                // The rest of a bad or oversized body may still be on the wire: never reuse.
                session.set_keepalive(None);
                (error(status), false)
            }
        };
        write_response(&mut session, response.0, response.1).await?;
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

async fn read_request(session: &mut ServerSession) -> Result<EdgeRequest, StatusCode> {
    let header = session.req_header();
    let method = header.method.clone();
    let path = header.uri.path().to_owned();
    let query = header.uri.query().unwrap_or_default().to_owned();
    let mut headers = header.headers.clone();
    if !headers.contains_key(http::header::HOST)
        && let Some(v) = header
            .uri
            .authority()
            .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
    {
        headers.insert(http::header::HOST, v);
    }
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
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_REQUEST_BODY {
                    return Err(StatusCode::PAYLOAD_TOO_LARGE);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(_) => return Err(StatusCode::BAD_REQUEST),
        }
    }
    Ok(EdgeRequest {
        method,
        path,
        query,
        headers,
        client_addr,
        protocol,
        tls,
        body: Bytes::from(body),
    })
}

fn error(status: StatusCode) -> EdgeResponse {
    let mut headers = http::HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let reason = status
        .canonical_reason()
        .unwrap_or("error")
        .to_ascii_lowercase()
        .replace(' ', "_");
    let body = Bytes::from(format!(
        "{{\"error\":\"{reason}\",\"reason\":\"{reason}\"}}"
    ));
    EdgeResponse {
        status,
        headers,
        body,
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
        resp.append_header(name.clone(), value.clone()).ok()?;
    }
    let bodyless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    if !bodyless {
        resp.insert_header(header::CONTENT_LENGTH, body.len())
            .ok()?;
    }
    session.write_response_header(Box::new(resp)).await.ok()?;
    if !head && !bodyless && !body.is_empty() {
        session.write_response_body(body, true).await.ok()?;
    }
    Some(())
}
