//! Token propagation into manifests.
//!
//! Players resolve the URIs inside a manifest against the manifest's URL but drop its query
//! string, so a token on the master playlist URL would not reach variant playlists or segments.
//! When a policy allows a request and asks for query parameters to be propagated, the edge serves
//! the manifest with those parameters appended to every **relative** URI it references:
//!
//! - HLS (`.m3u8`, validated with `m3u8-rs`, rewritten losslessly line by line): variant and
//!   i-frame playlists, `EXT-X-MEDIA`,
//!   segments, `EXT-X-KEY`/`EXT-X-SESSION-KEY`, `EXT-X-MAP`, `EXT-X-SESSION-DATA`, and `URI`
//!   attributes of tags `m3u8-rs` does not model (LL-HLS parts, preload hints, rendition reports).
//! - DASH (`.mpd`, rewritten with `quick-xml`): `media`, `initialization`, `index`, `sourceURL`
//!   attributes of `SegmentTemplate`, `SegmentURL`, `Initialization` and `RepresentationIndex`.
//!
//! Absolute URIs (`https://…`, `//host/…`) and `data:` URIs are left alone, and a DASH manifest
//! with an absolute `BaseURL` gets no parameter at all: the token belongs to this edge and is never
//! handed to another host. A URI that already carries the parameter keeps
//! its own value.
//!
//! ```
//! use edge_manifest::{Kind, propagate};
//! let m = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\nseg_000.ts\n#EXT-X-ENDLIST\n";
//! let out = propagate(Kind::Hls, m.as_bytes(), &[("token".into(), "abc".into())]).unwrap();
//! assert!(String::from_utf8(out).unwrap().contains("seg_000.ts?token=abc"));
//! ```

mod dash;
mod hls;

/// Manifest formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// HLS playlist (`.m3u8`).
    Hls,
    /// DASH MPD (`.mpd`).
    Dash,
}

impl Kind {
    /// The manifest kind of `path`, by extension.
    pub fn of(path: &str) -> Option<Self> {
        let ext = path.rsplit_once('.')?.1;
        if ext.eq_ignore_ascii_case("m3u8") {
            Some(Self::Hls)
        } else if ext.eq_ignore_ascii_case("mpd") {
            Some(Self::Dash)
        } else {
            None
        }
    }
}

/// Why a manifest could not be rewritten.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not a playlist `m3u8-rs` can parse.
    #[error("invalid HLS playlist: {0}")]
    Hls(String),
    /// Not well-formed XML.
    #[error("invalid DASH manifest: {0}")]
    Dash(String),
}

/// Returns `body` with `params` appended to every relative URI it references.
pub fn propagate(kind: Kind, body: &[u8], params: &[(String, String)]) -> Result<Vec<u8>, Error> {
    Prepared::new(kind, body)?.render(body, params)
}

/// Where a manifest's URIs end, found once per manifest (when it enters the cache) so that each
/// response only splices the parameters in: a copy of the body, no parsing.
#[derive(Debug, Clone)]
pub struct Prepared {
    kind: Kind,
    splices: Vec<Splice>,
    /// The manifest points at another host (an absolute DASH `BaseURL`): propagate nothing.
    foreign: bool,
}

/// One relative URI: parameters go at `at` (its end, before any fragment).
#[derive(Debug, Clone)]
struct Splice {
    at: usize,
    /// The URI's existing query (byte range in the body), if it has one.
    query: Option<(usize, usize)>,
}

impl Splice {
    /// The splice for `uri`, found at byte `start` of the body; none for absolute URIs.
    fn for_uri(start: usize, uri: &str) -> Option<Self> {
        if uri.is_empty() || is_absolute(uri) {
            return None;
        }
        let end = uri.find('#').unwrap_or(uri.len());
        let query = uri[..end].find('?').map(|q| (start + q + 1, start + end));
        Some(Self {
            at: start + end,
            query,
        })
    }
}

impl Prepared {
    /// Checks that `body` is a manifest of `kind` and finds its relative URIs.
    pub fn new(kind: Kind, body: &[u8]) -> Result<Self, Error> {
        let (splices, foreign) = match kind {
            Kind::Hls => (hls::prepare(body)?, false),
            Kind::Dash => (Vec::new(), dash::check(body)?),
        };
        Ok(Self {
            kind,
            splices,
            foreign,
        })
    }

    /// `body` (the one this was prepared from) with `params` appended to every relative URI.
    pub fn render(&self, body: &[u8], params: &[(String, String)]) -> Result<Vec<u8>, Error> {
        if params.is_empty() || self.foreign {
            return Ok(body.to_vec());
        }
        if self.kind == Kind::Dash {
            return dash::propagate(body, params);
        }
        let encoded: Vec<(&str, String)> = params
            .iter()
            .map(|(k, v)| (k.as_str(), format!("{}={}", encode(k), encode(v))))
            .collect();
        let mut out = Vec::with_capacity(
            body.len()
                + self.splices.len() * (encoded.iter().map(|e| e.1.len() + 1).sum::<usize>()),
        );
        let mut copied = 0;
        for s in &self.splices {
            out.extend_from_slice(&body[copied..s.at]);
            copied = s.at;
            let existing = s.query.map(|(a, b)| &body[a..b]);
            let mut sep = if existing.is_some() { b'&' } else { b'?' };
            for (key, pair) in &encoded {
                if existing.is_some_and(|q| form_urlencoded::parse(q).any(|(k, _)| k == *key)) {
                    continue;
                }
                out.push(sep);
                out.extend_from_slice(pair.as_bytes());
                sep = b'&';
            }
        }
        out.extend_from_slice(&body[copied..]);
        Ok(out)
    }
}

fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// `uri` with `params` appended, unless it is absolute or already has a parameter.
pub fn with_params(uri: &str, params: &[(String, String)]) -> String {
    let trimmed = uri.trim();
    if trimmed.is_empty() || is_absolute(trimmed) {
        return uri.to_owned();
    }
    let (before_fragment, fragment) = match uri.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (uri, None),
    };
    let existing: Vec<String> = before_fragment
        .split_once('?')
        .map(|(_, q)| {
            form_urlencoded::parse(q.as_bytes())
                .map(|(k, _)| k.into_owned())
                .collect()
        })
        .unwrap_or_default();
    let mut out = before_fragment.to_owned();
    for (k, v) in params {
        if existing.iter().any(|e| e == k) {
            continue;
        }
        out.push(if out.contains('?') { '&' } else { '?' });
        out.extend(form_urlencoded::byte_serialize(k.as_bytes()));
        out.push('=');
        out.extend(form_urlencoded::byte_serialize(v.as_bytes()));
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

/// Whether `uri` leaves this edge: network-path (`//host/…`) or with a scheme (`https:`, `data:`,
/// `skd:`, …). Such URIs never get this edge's token.
pub(crate) fn is_absolute(uri: &str) -> bool {
    uri.starts_with("//") || has_scheme(uri)
}

/// RFC 3986 scheme: ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) ":"
fn has_scheme(uri: &str) -> bool {
    let Some((scheme, _)) = uri.split_once(':') else {
        return false;
    };
    let mut bytes = scheme.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> Vec<(String, String)> {
        vec![("token".into(), "1.a/b+c".into())]
    }

    #[test]
    fn appends_to_relative_uris_only() {
        assert_eq!(with_params("seg.ts", &p()), "seg.ts?token=1.a%2Fb%2Bc");
        assert_eq!(
            with_params("v0/index.m3u8?x=1", &p()),
            "v0/index.m3u8?x=1&token=1.a%2Fb%2Bc"
        );
        assert_eq!(
            with_params("/abs/seg.ts#t=1", &p()),
            "/abs/seg.ts?token=1.a%2Fb%2Bc#t=1"
        );
        assert_eq!(with_params("seg.ts?token=mine", &p()), "seg.ts?token=mine");
        for keep in [
            "https://cdn.example/seg.ts",
            "//cdn.example/seg.ts",
            "data:text/plain,x",
            "skd://key",
        ] {
            assert_eq!(with_params(keep, &p()), keep);
        }
    }

    #[test]
    fn kinds() {
        assert_eq!(Kind::of("/a/index.M3U8"), Some(Kind::Hls));
        assert_eq!(Kind::of("/a/manifest.mpd"), Some(Kind::Dash));
        assert_eq!(Kind::of("/a/seg.ts"), None);
    }
}
