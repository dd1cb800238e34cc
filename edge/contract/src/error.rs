//! The one error shape of everything the edge answers itself: listener refusals, pipeline
//! errors, policy denials, the admin, seeder and streaming-API endpoints.

use crate::EdgeResponse;
use http::{HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};

/// Header that repeats the reason, for logs and players that do not read bodies.
pub const REASON_HEADER: &str = "x-edge-reason";

/// The JSON body of an error: `{"error": "<status text>", "reason": "<code>", "detail": "…"}`
/// (`detail` only when there is one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The status text in snake case (`not_found`, `payload_too_large`).
    pub error: String,
    /// A short code saying why (`expired_token`, `path_traversal`).
    pub reason: String,
    /// Words for a person, when the code is not enough.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl EdgeResponse {
    /// An error: [`ErrorBody`] JSON, `Cache-Control: no-store`, the reason in `x-edge-reason`.
    pub fn error(status: StatusCode, reason: &str) -> Self {
        Self::error_body(status, reason, None)
    }

    /// [`EdgeResponse::error`] with words for a person.
    pub fn error_detail(status: StatusCode, reason: &str, detail: &str) -> Self {
        Self::error_body(status, reason, Some(detail))
    }

    /// The answer to a request body that could not be read: 413 over the reader's limit, 400 when
    /// the client stopped sending or sent a broken body (the cause is for logs, not the client).
    pub fn body_error(e: &crate::BodyError) -> Self {
        match e {
            crate::BodyError::TooLarge { limit } => Self::error_detail(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                &format!("request body over {limit} bytes"),
            ),
            crate::BodyError::Interrupted(_) | crate::BodyError::Consumed => Self::error_detail(
                StatusCode::BAD_REQUEST,
                "body_unreadable",
                "the request body could not be read",
            ),
        }
    }

    fn error_body(status: StatusCode, reason: &str, detail: Option<&str>) -> Self {
        let body = ErrorBody {
            error: status
                .canonical_reason()
                .unwrap_or("error")
                .to_ascii_lowercase()
                .replace([' ', '-'], "_"),
            reason: reason.to_owned(),
            detail: detail.map(str::to_owned),
        };
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let mut r = Self::json(status, json);
        if let Ok(v) = HeaderValue::from_str(reason) {
            r.headers.insert(REASON_HEADER, v);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_shape() {
        let r = EdgeResponse::error(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
        assert_eq!(
            r.body_bytes().unwrap().as_ref(),
            br#"{"error":"payload_too_large","reason":"body_too_large"}"#
        );
        assert_eq!(r.headers[REASON_HEADER], "body_too_large");
        assert_eq!(r.headers[http::header::CACHE_CONTROL], "no-store");
        assert_eq!(r.headers[http::header::CONTENT_TYPE], "application/json");

        // Anything a policy chose as its reason is escaped by serde_json, never spliced.
        let r = EdgeResponse::error_detail(StatusCode::FORBIDDEN, "a\"b\\c\n", "why \u{1}");
        let parsed: ErrorBody = serde_json::from_slice(r.body_bytes().unwrap()).unwrap();
        assert_eq!(parsed.reason, "a\"b\\c\n");
        assert_eq!(parsed.detail.as_deref(), Some("why \u{1}"));
        assert!(
            !r.headers.contains_key(REASON_HEADER),
            "not a valid header value"
        );
    }
}
