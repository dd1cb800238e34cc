//! JSON bodies in and out: strict request bodies, the replaced service's response shapes, and
//! errors as `{"error", "reason", "detail"}`.

use edge_contract::{EdgeResponse, RequestBody};
use http::{HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// `POST {prefix}/{movie_id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StartBody {
    #[serde(default = "hls")]
    pub(crate) manifest_type: ManifestType,
}

fn hls() -> ManifestType {
    ManifestType::Hls
}

/// `hls` or `dash`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ManifestType {
    Hls,
    Dash,
}

/// `POST …/progress` and `POST …/stop`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PositionBody {
    pub(crate) position_seconds: i64,
}

#[derive(Serialize)]
pub(crate) struct StartReply {
    pub(crate) manifest_url: String,
    pub(crate) expires_in: u64,
    pub(crate) manifest_type: ManifestType,
}

#[derive(Serialize)]
pub(crate) struct ProgressReply {
    pub(crate) success: bool,
    pub(crate) position_seconds: u64,
    pub(crate) message: &'static str,
}

#[derive(Serialize)]
pub(crate) struct StopReply {
    pub(crate) success: bool,
    pub(crate) message: &'static str,
}

#[derive(Serialize)]
pub(crate) struct ProgressView<'a> {
    pub(crate) user_id: &'a str,
    pub(crate) movie_id: &'a str,
    pub(crate) position_seconds: u64,
    pub(crate) last_watched_at: &'a str,
}

/// An API error: status, machine reason, human detail (FastAPI's `detail`).
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) reason: &'static str,
    pub(crate) detail: String,
}

impl ApiError {
    pub(crate) fn new(status: u16, reason: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            reason,
            detail: detail.into(),
        }
    }

    pub(crate) fn response(&self) -> EdgeResponse {
        let mut r = EdgeResponse::error_detail(self.status, self.reason, &self.detail);
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        r
    }
}

/// A JSON response, never cached.
pub(crate) fn json(status: StatusCode, body: &impl Serialize) -> EdgeResponse {
    EdgeResponse::json(status, serde_json::to_vec(body).unwrap_or_default())
}

/// Decodes a request body: empty is `{}`, anything else must be one JSON object of known fields
/// within `max` bytes.
pub(crate) async fn decode<T: DeserializeOwned>(
    body: &RequestBody,
    max: usize,
) -> Result<T, ApiError> {
    let body = body.bytes(max as u64).await.map_err(|e| match e {
        edge_contract::BodyError::TooLarge { .. } => ApiError::new(
            413,
            "body_too_large",
            format!("request body over {max} bytes"),
        ),
        other => {
            tracing::debug!(error = %other, "request body unreadable");
            ApiError::new(400, "body_unreadable", "the request body could not be read")
        }
    })?;
    let body = &body[..];
    let text = if body.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        body
    };
    serde_json::from_slice(text).map_err(|e| {
        let reason = if e.is_syntax() || e.is_eof() {
            "invalid_json"
        } else {
            "invalid_body"
        };
        ApiError::new(400, reason, e.to_string())
    })
}

/// A position within `0..=max`.
pub(crate) fn position(body: &PositionBody, max: u64) -> Result<u64, ApiError> {
    u64::try_from(body.position_seconds)
        .ok()
        .filter(|p| *p <= max)
        .ok_or_else(|| {
            ApiError::new(
                400,
                "invalid_position",
                format!("position_seconds must be between 0 and {max}"),
            )
        })
}

/// Movie ids: 1 to 64 letters, digits, `-` or `_`, starting with a letter or digit (UUIDs,
/// slugs). Anything else could not name a directory safely.
pub(crate) fn movie_id(id: &str) -> Result<&str, ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(id)
    } else {
        Err(ApiError::new(
            400,
            "invalid_movie_id",
            "movie_id must be 1 to 64 letters, digits, `-` or `_`",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn decode<T: DeserializeOwned>(body: &[u8], max: usize) -> Result<T, ApiError> {
        super::decode(&RequestBody::full(body.to_vec()), max).await
    }

    #[tokio::test]
    async fn bodies_are_strict() {
        let b: StartBody = decode(b"", 64).await.unwrap();
        assert_eq!(b.manifest_type, ManifestType::Hls);
        let b: StartBody = decode(br#"{"manifest_type":"dash"}"#, 64).await.unwrap();
        assert_eq!(b.manifest_type, ManifestType::Dash);
        for (body, reason) in [
            (&br#"{"manifest_type":"mp4"}"#[..], "invalid_body"),
            (br#"{"manifest_type":"hls","x":1}"#, "invalid_body"),
            (b"manifest_type=hls", "invalid_json"),
            (br#"{"manifest_type":"hls""#, "invalid_json"),
        ] {
            let e = decode::<StartBody>(body, 64).await.unwrap_err();
            assert_eq!((e.status.as_u16(), e.reason), (400, reason), "{body:?}");
        }
        assert_eq!(
            decode::<StartBody>(&[b' '; 65], 64)
                .await
                .unwrap_err()
                .status,
            413
        );
        let p: PositionBody = decode(br#"{"position_seconds": 120}"#, 64).await.unwrap();
        assert_eq!(position(&p, 1000).unwrap(), 120);
        for body in [
            &br#"{"position_seconds": -1}"#[..],
            br#"{"position_seconds": 1001}"#,
        ] {
            let p: PositionBody = decode(body, 64).await.unwrap();
            assert_eq!(position(&p, 1000).unwrap_err().reason, "invalid_position");
        }
        for body in [
            &br#"{"position_seconds": 1.5}"#[..],
            br#"{"position_seconds": "12"}"#,
            br#"{"position_seconds": 1e300}"#,
            br#"{}"#,
            br#"[]"#,
        ] {
            assert_eq!(
                decode::<PositionBody>(body, 64).await.unwrap_err().status,
                400
            );
        }
    }

    #[test]
    fn movie_ids() {
        assert!(movie_id("9b2f6c1e-1c2d-4e5f-8a9b-0c1d2e3f4a5b").is_ok());
        assert!(movie_id("demo").is_ok());
        for bad in ["", "..", "a/b", "-x", "a b", "é", &"x".repeat(65)] {
            assert!(movie_id(bad).is_err(), "{bad}");
        }
    }
}
