//! One attempt at one seeder: `GET http://<address><path>`, the whole body, verified.

use bytes::{Bytes, BytesMut};
use edge_origin::{ObjectInfo, Opened, Tier};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use reqwest::{StatusCode, header};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// The header carrying the lowercase hex SHA-256 of the body.
pub(crate) const CHECKSUM_HEADER: &str = "x-content-sha256";

/// The header a seeder puts on every answer of its own (not on a proxy's or load balancer's).
pub(crate) const SEEDER_ID_HEADER: &str = "x-seeder-id";

/// The seeder's readiness endpoint.
pub(crate) const HEALTH_PATH: &str = "/_seeder/health";

/// What is percent-encoded in the path of a seeder URL: the WHATWG path set plus `%` and `\`
/// (which the URL parser reads as `/`). Paths are decoded (`normalize`d) public paths and the
/// seeder decodes what it receives, so `%`, `?`, `#` must travel encoded; and a decoded `%2e%2e`
/// segment must not reach the URL parser, which would resolve it as `..` and fetch another path
/// than the one asked for.
const PATH_SET: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'\\')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// Why an attempt did not produce the object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Failure {
    /// The seeder answered 404: it does not hold the object. Not held against its health.
    #[error("not found")]
    NotFound,
    /// The object is larger than what was asked for (a slice of a larger object): the seeder's
    /// checksum covers the whole file, so only the origin can serve a part of it.
    #[error("{0}")]
    TooLarge(String),
    /// The seeder answered, but its own pull from the origin failed (502/504 carrying its
    /// `x-seeder-id`): the origin is unwell, not the seeder, so it stays healthy.
    #[error("{0}")]
    Upstream(String),
    /// The seeder is unwell or misbehaved: transport error, timeout, unexpected status, short
    /// body, missing or wrong checksum.
    #[error("{0}")]
    Failed(String),
}

fn failed(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure::Failed(format!("{what}: {e}"))
}

/// Fetches `path` (a decoded public path) from the seeder at `address`, within `timeout` (body
/// included). The body must arrive whole, be at most `max_object` bytes and hash to the seeder's
/// `x-content-sha256` and to `checksum`, the directory's record, when known; it is returned as a
/// read of the whole object that is already complete.
pub(crate) async fn fetch(
    client: &reqwest::Client,
    address: &str,
    path: &str,
    timeout: Duration,
    max_object: u64,
    checksum: Option<&str>,
) -> Result<Opened, Failure> {
    let url = format!("http://{address}{}", utf8_percent_encode(path, PATH_SET));
    let mut resp = client
        .get(&url)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| failed("request", error_chain(&e)))?;
    match resp.status() {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => return Err(Failure::NotFound),
        s @ (StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT)
            if resp.headers().contains_key(SEEDER_ID_HEADER) =>
        {
            return Err(Failure::Upstream(format!(
                "seeder's pull from the origin: status {s}"
            )));
        }
        s => return Err(Failure::Failed(format!("status {s}"))),
    }
    let headers = resp.headers().clone();
    let text = |name: header::HeaderName| -> Option<String> {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_owned())
    };
    let announced = text(header::HeaderName::from_static(CHECKSUM_HEADER))
        .ok_or_else(|| Failure::Failed(format!("no {CHECKSUM_HEADER} header")))?;
    let too_large = |n: u64| Failure::TooLarge(format!("body of {n} bytes or more"));
    if let Some(n) = resp.content_length().filter(|n| *n > max_object) {
        return Err(too_large(n));
    }
    // A connection cut before Content-Length bytes (or the chunked terminator) arrive is an error
    // here, as is the timeout running out while reading. A body growing past `max_object` is cut
    // off: a misbehaving seeder cannot make the edge buffer more.
    let mut body = BytesMut::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| failed("body", error_chain(&e)))?
    {
        let n = (body.len() + chunk.len()) as u64;
        if n > max_object {
            return Err(too_large(n));
        }
        body.extend_from_slice(&chunk);
    }
    let body: Bytes = body.freeze();
    let actual = hex::encode(Sha256::digest(&body));
    for expected in std::iter::once(announced.as_str()).chain(checksum) {
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(Failure::Failed(format!(
                "checksum mismatch: body {actual}, expected {expected} ({} bytes)",
                body.len()
            )));
        }
    }
    let size = body.len() as u64;
    let info = ObjectInfo {
        size,
        etag: text(header::ETAG).map(|e| unquote(&e).to_owned()),
        last_modified: text(header::LAST_MODIFIED).and_then(|v| httpdate::parse_http_date(&v).ok()),
        cache_control: None,
        tier: Tier::Seeder,
    };
    Ok(Opened::whole(info, 0..size, body))
}

/// Whether the seeder at `address` says it is ready (`GET /_seeder/health` → 200).
pub(crate) async fn probe(client: &reqwest::Client, address: &str, timeout: Duration) -> bool {
    let url = format!("http://{address}{HEALTH_PATH}");
    match client.get(&url).timeout(timeout).send().await {
        Ok(resp) => resp.status() == StatusCode::OK,
        Err(_) => false,
    }
}

/// `W/"abc"` → `abc`.
fn unquote(etag: &str) -> &str {
    let e = etag.strip_prefix("W/").unwrap_or(etag);
    e.strip_prefix('"')
        .and_then(|e| e.strip_suffix('"'))
        .unwrap_or(e)
}

/// The error and its causes, which reqwest keeps apart (`error sending request` alone says little).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_are_unquoted() {
        assert_eq!(unquote("\"abc\""), "abc");
        assert_eq!(unquote("W/\"abc\""), "abc");
        assert_eq!(unquote("abc"), "abc");
    }
}
