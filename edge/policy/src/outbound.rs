//! Outbound HTTP for guests: the allow-list check (in the host, before any connection) and the
//! transport behind it, which the author kit replaces with a script.

use futures::future::BoxFuture;
use std::time::Duration;

/// One request a guest asked for, after the allow-list check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundRequest {
    /// `GET` or `POST`.
    pub method: http::Method,
    /// Absolute URL on an allowed origin.
    pub url: String,
    /// Request headers.
    pub headers: Vec<(String, String)>,
    /// Request body.
    pub body: Option<Vec<u8>>,
    /// Bound on the whole exchange.
    pub timeout: Duration,
    /// Largest body accepted.
    pub max_body: usize,
}

/// A complete response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundResponse {
    /// Status code.
    pub status: u16,
    /// Lower-case header names.
    pub headers: Vec<(String, String)>,
    /// The body (at most the request's `max_body` bytes).
    pub body: Vec<u8>,
}

/// Why an exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboundError {
    /// Not on the allow-list, or not an http(s) URL.
    #[error("denied: {0}")]
    Denied(String),
    /// No complete answer in time.
    #[error("timed out")]
    Timeout,
    /// The body was larger than allowed.
    #[error("response body too large")]
    TooLarge,
    /// Anything else (refused, reset, malformed).
    #[error("failed: {0}")]
    Failed(String),
}

/// Carries allowed outbound requests. The edge uses [`HttpOutbound`]; tests and the author kit
/// use scripted answers.
pub trait Outbound: Send + Sync + 'static {
    /// Performs `request`, honouring its timeout and body cap.
    fn send(
        &self,
        request: OutboundRequest,
    ) -> BoxFuture<'static, Result<OutboundResponse, OutboundError>>;
}

/// Real HTTP/1.1 and HTTP/2 (reqwest, rustls). Redirects are never followed (a redirect could
/// leave the allow-list), and no proxy from the environment is used.
#[derive(Debug, Clone)]
pub struct HttpOutbound {
    client: reqwest::Client,
}

impl HttpOutbound {
    /// A client with connection pooling shared by every policy.
    pub fn new() -> Result<Self, OutboundError> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| OutboundError::Failed(e.to_string()))?;
        Ok(Self { client })
    }
}

impl Outbound for HttpOutbound {
    fn send(
        &self,
        request: OutboundRequest,
    ) -> BoxFuture<'static, Result<OutboundResponse, OutboundError>> {
        let client = self.client.clone();
        Box::pin(async move {
            let exchange = async {
                let mut builder = client.request(request.method, &request.url);
                for (k, v) in &request.headers {
                    builder = builder.header(k, v);
                }
                if let Some(body) = request.body {
                    builder = builder.body(body);
                }
                let mut resp = builder.send().await.map_err(failed)?;
                if resp
                    .content_length()
                    .is_some_and(|n| n > request.max_body as u64)
                {
                    return Err(OutboundError::TooLarge);
                }
                let status = resp.status().as_u16();
                let headers = resp
                    .headers()
                    .iter()
                    .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                    .collect();
                let mut body = Vec::new();
                while let Some(chunk) = resp.chunk().await.map_err(failed)? {
                    if body.len() + chunk.len() > request.max_body {
                        return Err(OutboundError::TooLarge);
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(OutboundResponse {
                    status,
                    headers,
                    body,
                })
            };
            tokio::time::timeout(request.timeout, exchange)
                .await
                .unwrap_or(Err(OutboundError::Timeout))
        })
    }
}

fn failed(e: reqwest::Error) -> OutboundError {
    if e.is_timeout() {
        OutboundError::Timeout
    } else {
        OutboundError::Failed(edge_wasm::one_line(&format!("{e:#}")))
    }
}

/// An origin on an allow-list: scheme, lower-case host, port (default ports made explicit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AllowedOrigin {
    scheme: String,
    host: String,
    port: u16,
}

impl AllowedOrigin {
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let url = reqwest::Url::parse(text).map_err(|e| format!("{text:?}: {e}"))?;
        Self::of(&url).ok_or_else(|| format!("{text:?} is not an http(s) origin"))
    }

    fn of(url: &reqwest::Url) -> Option<Self> {
        if !matches!(url.scheme(), "http" | "https") || !url.username().is_empty() {
            return None;
        }
        if url.password().is_some() {
            return None;
        }
        Some(Self {
            scheme: url.scheme().to_owned(),
            host: url.host_str()?.to_ascii_lowercase(),
            port: url.port_or_known_default()?,
        })
    }
}

/// Checks `url` against `allowed`; returns the parsed URL text to use.
pub(crate) fn check(url: &str, allowed: &[AllowedOrigin]) -> Result<String, OutboundError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| OutboundError::Denied(format!("not a valid URL: {e}")))?;
    let origin = AllowedOrigin::of(&parsed).ok_or_else(|| {
        OutboundError::Denied("only http(s) URLs without credentials are allowed".into())
    })?;
    if allowed.contains(&origin) {
        Ok(parsed.into())
    } else {
        Err(OutboundError::Denied(format!(
            "{}://{}:{} is not on this policy's outbound allow-list",
            origin.scheme, origin.host, origin.port
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list() {
        let allowed = vec![
            AllowedOrigin::parse("http://users.internal:8081").unwrap(),
            AllowedOrigin::parse("https://keys.example").unwrap(),
        ];
        assert!(check("http://USERS.internal:8081/api/v1/users/1", &allowed).is_ok());
        assert!(check("https://keys.example:443/jwks.json", &allowed).is_ok());
        for bad in [
            "http://users.internal:8082/",
            "http://users.internal/",
            "https://users.internal:8081/",
            "http://user:pw@users.internal:8081/",
            "http://169.254.169.254/latest/meta-data",
            "file:///etc/passwd",
            "gopher://users.internal:8081/",
            "not a url",
        ] {
            assert!(
                matches!(check(bad, &allowed), Err(OutboundError::Denied(_))),
                "{bad} allowed"
            );
        }
    }
}
