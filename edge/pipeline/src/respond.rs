//! Building responses: errors, conditional requests, single ranges.

use edge_contract::{Body, EdgeResponse};
use headers::{ETag, HeaderMapExt, IfModifiedSince, IfNoneMatch, IfRange, LastModified};
use http::{HeaderMap, HeaderValue, StatusCode, header};

/// The one error shape ([`EdgeResponse::error`]) with policy-provided headers; `status` comes from
/// a policy or the pipeline (an invalid one is a 500).
pub(crate) fn error(status: u16, reason: &str, extra: &[(String, String)]) -> EdgeResponse {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = EdgeResponse::error(status, reason);
    add_headers(&mut r.headers, extra);
    r
}

/// Answers a CORS preflight: players may GET/HEAD with `Range` from any allowed origin.
pub(crate) fn preflight() -> EdgeResponse {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, POST, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(
            "range, if-none-match, if-modified-since, authorization, content-type",
        ),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    EdgeResponse {
        status: StatusCode::NO_CONTENT,
        headers,
        body: Body::empty(),
    }
}

/// CORS headers of a viewer response; players may read the range and the denial reason.
pub(crate) fn cors(headers: &mut HeaderMap, origin: &HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("content-length, content-range, etag, x-cache, x-edge-reason"),
    );
    if origin != "*" {
        headers.append(header::VARY, HeaderValue::from_static("origin"));
    }
}

/// Appends policy-provided headers, skipping any that are not valid or that would break framing.
pub(crate) fn add_headers(headers: &mut HeaderMap, extra: &[(String, String)]) {
    for (k, v) in extra {
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) else {
            continue;
        };
        if matches!(
            name,
            header::CONTENT_LENGTH
                | header::TRANSFER_ENCODING
                | header::CONNECTION
                | header::CONTENT_RANGE
        ) {
            continue;
        }
        headers.append(name, value);
    }
}

/// What to answer for an object, after the conditional and range headers.
pub(crate) enum Plan {
    /// A complete answer without the object's bytes: 304 or 416.
    Answer(EdgeResponse),
    /// Send these bytes of the representation: all of it (200), or what a valid single range
    /// asked for (`partial`: 206, with `Content-Range` set in the headers — also when the range
    /// covers the whole representation, as `bytes=0-` does).
    Send {
        range: std::ops::Range<u64>,
        partial: bool,
    },
}

impl Plan {
    /// The status of a [`Plan::Send`].
    pub(crate) fn status(partial: bool) -> StatusCode {
        if partial {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        }
    }
}

/// The first byte a request for one range asks for explicitly (`bytes=N-…`), else 0: which slice
/// to read first. Only a hint; [`plan`] validates the range against the object.
pub(crate) fn first_byte(req: &HeaderMap) -> u64 {
    req.get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .filter(|v| !v.contains(','))
        .and_then(|v| v.split_once('-'))
        .and_then(|(start, _)| start.trim().parse().ok())
        .unwrap_or(0)
}

/// The answer to a GET/HEAD of a representation of `len` bytes with `etag` and
/// `last_modified`, honouring `If-None-Match`, `If-Modified-Since`, `If-Range` and a single
/// `Range`. Adds the validators, `Accept-Ranges` and (for a part) `Content-Range` to `headers`.
pub(crate) fn plan(
    req: &HeaderMap,
    etag: Option<&str>,
    last_modified: Option<std::time::SystemTime>,
    len: u64,
    headers: &mut HeaderMap,
) -> Plan {
    let etag = etag.and_then(|e| e.parse::<ETag>().ok());
    let lm = last_modified.map(LastModified::from);
    if let Some(e) = &etag {
        headers.typed_insert(e.clone());
    }
    if let Some(lm) = lm {
        headers.typed_insert(lm);
    }
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));

    let not_modified = match (req.typed_get::<IfNoneMatch>(), &etag) {
        (Some(inm), Some(e)) => !inm.precondition_passes(e),
        (Some(_), None) => false,
        (None, _) => match (req.typed_get::<IfModifiedSince>(), last_modified) {
            (Some(ims), Some(lm)) => !ims.is_modified(lm),
            _ => false,
        },
    };
    if not_modified {
        let mut headers = std::mem::take(headers);
        headers.remove(header::CONTENT_TYPE);
        return Plan::Answer(EdgeResponse {
            status: StatusCode::NOT_MODIFIED,
            headers,
            body: Body::empty(),
        });
    }

    let range = req.get(header::RANGE).and_then(|v| v.to_str().ok());
    let if_range_ok = req
        .typed_get::<IfRange>()
        .is_none_or(|ir| !ir.is_modified(etag.as_ref(), lm.as_ref()));
    if let (Some(range), true) = (range, if_range_ok) {
        // Malformed ranges and other units are ignored, as RFC 9110 allows; so are multiple
        // ranges (the whole representation is simpler for players than multipart).
        if let Ok(parsed) = http_range_header::parse_range_header(range) {
            match parsed.validate(len) {
                Ok(ranges) if ranges.len() == 1 && len > 0 => {
                    let (start, end) = (*ranges[0].start(), *ranges[0].end());
                    if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")) {
                        headers.insert(header::CONTENT_RANGE, v);
                    }
                    return Plan::Send {
                        range: start..end + 1,
                        partial: true,
                    };
                }
                Ok(ranges) if ranges.len() > 1 => {}
                // `bytes=-N` with N past the size: the whole representation, as a 206.
                Err(http_range_header::RangeUnsatisfiableError::FileSuffixOutOfBounds)
                    if len > 0 =>
                {
                    if let Ok(v) = HeaderValue::from_str(&format!("bytes 0-{}/{len}", len - 1)) {
                        headers.insert(header::CONTENT_RANGE, v);
                    }
                    return Plan::Send {
                        range: 0..len,
                        partial: true,
                    };
                }
                _ => {
                    let mut r = error(416, "range_not_satisfiable", &[]);
                    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                        r.headers.insert(header::CONTENT_RANGE, v);
                    }
                    return Plan::Answer(r);
                }
            }
        }
    }
    Plan::Send {
        range: 0..len,
        partial: false,
    }
}
