//! One attempt at one seeder: `GET http://<address><path>`, the whole file or one slice of it,
//! the whole body, verified.

use bytes::{Bytes, BytesMut};
use edge_origin::{ObjectInfo, Opened, Tier};
use headers::HeaderMapExt;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use reqwest::{StatusCode, header};
use sha2::{Digest, Sha256};
use std::{ops::Range, time::Duration};

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

/// The header carrying the lowercase hex SHA-256 of the whole file, on a slice (206).
pub(crate) const OBJECT_CHECKSUM_HEADER: &str = "x-object-sha256";

/// Why an attempt did not produce the object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Failure {
    /// The seeder answered 404: it does not hold the object. Not held against its health.
    #[error("not found")]
    NotFound,
    /// The seeder cannot serve what was asked for: a whole object larger than asked for, or a
    /// range that is not one of its slices (416: its slice size differs from this edge's). Not
    /// held against its health.
    #[error("{0}")]
    CannotServe(String),
    /// The seeder answered, but its own pull from the origin failed (502/504 carrying its
    /// `x-seeder-id`): the origin is unwell, not the seeder, so it stays healthy.
    #[error("{0}")]
    Upstream(String),
    /// The seeder is unwell or misbehaved: transport error, timeout, unexpected status, short
    /// body, missing or wrong checksum, another version than the directory's.
    #[error("{0}")]
    Failed(String),
}

fn failed(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure::Failed(format!("{what}: {e}"))
}

/// What one attempt asks a seeder for.
#[derive(Debug, Clone)]
pub(crate) struct Ask<'a> {
    /// The decoded public path.
    pub(crate) path: &'a str,
    /// `None`: the whole file (200); else these bytes of it, one of its slices (a `Range`
    /// request answered 206 with the slice's own checksum).
    pub(crate) range: Option<Range<u64>>,
    /// Bound on the attempt, body included.
    pub(crate) timeout: Duration,
    /// Largest body accepted.
    pub(crate) limit: u64,
}

/// What the directory says of the file at the seeder asked.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Expected<'a> {
    /// Lowercase hex SHA-256 of the whole file.
    pub(crate) checksum: Option<&'a str>,
    /// Its size.
    pub(crate) size: Option<u64>,
    /// The SHA-256 of the slice asked for, from the directory's slice list.
    pub(crate) slice: Option<[u8; 32]>,
}

/// Asks the seeder at `address` for `ask`. The answer must arrive whole within the timeout, be
/// at most `ask.limit` bytes and hash to the seeder's `x-content-sha256`; the file it comes from
/// must be the one the directory lists (`expected`: whole checksum — the body's, or a slice's
/// `x-object-sha256` — and size). It is returned as a read that is already complete.
pub(crate) async fn fetch(
    client: &reqwest::Client,
    address: &str,
    ask: &Ask<'_>,
    expected: Expected<'_>,
) -> Result<Opened, Failure> {
    let url = format!(
        "http://{address}{}",
        utf8_percent_encode(ask.path, PATH_SET)
    );
    let mut req = client.get(&url).timeout(ask.timeout);
    if let Some(r) = &ask.range {
        req = req.header(
            header::RANGE,
            format!("bytes={}-{}", r.start, r.end.saturating_sub(1)),
        );
    }
    let mut resp = req
        .send()
        .await
        .map_err(|e| failed("request", error_chain(&e)))?;
    let wanted = if ask.range.is_some() {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    match resp.status() {
        s if s == wanted => {}
        StatusCode::NOT_FOUND => return Err(Failure::NotFound),
        StatusCode::RANGE_NOT_SATISFIABLE if ask.range.is_some() => {
            let theirs = resp
                .headers()
                .get("x-seeder-slice")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("unknown")
                .to_owned();
            return Err(Failure::CannotServe(format!(
                "bytes {:?} are not one slice of the seeder's (its slice: {theirs} bytes)",
                ask.range
            )));
        }
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
    let text = |name: &str| -> Option<String> {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_owned())
    };
    let announced = text(CHECKSUM_HEADER)
        .ok_or_else(|| Failure::Failed(format!("no {CHECKSUM_HEADER} header")))?;
    // The part of which file: a slice names the file's range, size and checksum.
    let part = match &ask.range {
        Some(r) => Some(slice_of(&headers, r, expected)?),
        None => None,
    };
    // A whole file larger than asked for is the origin's to serve; a slice longer than itself is
    // a seeder misbehaving.
    let too_large = |n: u64| match part {
        None => Failure::CannotServe(format!("body of {n} bytes or more")),
        Some(_) => Failure::Failed(format!("body of {n} bytes or more for a slice")),
    };
    if let Some(n) = resp.content_length().filter(|n| *n > ask.limit) {
        return Err(too_large(n));
    }
    // A connection cut before Content-Length bytes (or the chunked terminator) arrive is an error
    // here, as is the timeout running out while reading. A body growing past the limit is cut
    // off: a misbehaving seeder cannot make the edge buffer more.
    let mut body = BytesMut::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| failed("body", error_chain(&e)))?
    {
        let n = (body.len() + chunk.len()) as u64;
        if n > ask.limit {
            return Err(too_large(n));
        }
        body.extend_from_slice(&chunk);
    }
    let body: Bytes = body.freeze();
    let digest: [u8; 32] = Sha256::digest(&body).into();
    if let Some(want) = expected.slice.filter(|_| part.is_some())
        && want != digest
    {
        return Err(Failure::Failed(format!(
            "slice checksum mismatch: body {}, the directory has {}",
            hex::encode(digest),
            hex::encode(want)
        )));
    }
    let actual = hex::encode(digest);
    // The whole file's checksum is the body's; a slice's was checked against its header above.
    let whole = expected.checksum.filter(|_| part.is_none());
    for expected in std::iter::once(announced.as_str()).chain(whole) {
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(Failure::Failed(format!(
                "checksum mismatch: body {actual}, expected {expected} ({} bytes)",
                body.len()
            )));
        }
    }
    let got = body.len() as u64;
    let (range, size) = match part {
        Some((range, size)) if range.end - range.start == got => (range, size),
        Some((range, _)) => {
            return Err(Failure::Failed(format!(
                "{got} bytes for the slice {range:?}"
            )));
        }
        None if expected.size.is_none_or(|s| s == got) => (0..got, got),
        None => {
            return Err(Failure::Failed(format!(
                "{got} bytes, the directory has {:?}",
                expected.size
            )));
        }
    };
    let info = ObjectInfo {
        size,
        // The version the directory lists (verified above), not what the seeder says.
        etag: match expected.checksum {
            Some(c) => Some(crate::etag_of(c).to_owned()),
            None => text(header::ETAG.as_str()).map(|e| unquote(&e).to_owned()),
        },
        last_modified: text(header::LAST_MODIFIED.as_str())
            .and_then(|v| httpdate::parse_http_date(&v).ok()),
        cache_control: None,
        tier: Tier::Seeder,
    };
    Ok(Opened::whole(info, range, body))
}

/// The range and file size a 206 answering `asked` says it carries, checked against what was
/// asked and what the directory says of the file.
fn slice_of(
    headers: &header::HeaderMap,
    asked: &Range<u64>,
    expected: Expected<'_>,
) -> Result<(Range<u64>, u64), Failure> {
    let content_range = headers
        .typed_get::<headers::ContentRange>()
        .ok_or_else(|| Failure::Failed("a 206 without a valid content-range".into()))?;
    let (range, size) = match (content_range.bytes_range(), content_range.bytes_len()) {
        (Some((first, last)), Some(size)) => (first..last.saturating_add(1), size),
        _ => {
            return Err(Failure::Failed(
                "content-range without a range and size".into(),
            ));
        }
    };
    if range != *asked || expected.size.is_some_and(|s| s != size) {
        return Err(Failure::Failed(format!(
            "answered bytes {range:?} of {size} for bytes {asked:?} of {:?}",
            expected.size
        )));
    }
    let object = headers
        .get(OBJECT_CHECKSUM_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Failure::Failed(format!("a slice without {OBJECT_CHECKSUM_HEADER}")))?;
    if let Some(c) = expected.checksum
        && !object.trim().eq_ignore_ascii_case(c)
    {
        return Err(Failure::Failed(format!(
            "a slice of another version of the file: {object}, the directory has {c}"
        )));
    }
    Ok((range, size))
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
