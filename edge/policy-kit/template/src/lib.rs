//! An edge policy: admits a request only when it carries the configured header, and passes the
//! header's value on to the policies after it in the chain.
//!
//! Config (`[policies.NAME.config]`):
//! - `header` (default `x-api-key`): the request header that must be present and non-empty. The
//!   policy only sees headers its entry in the policies file lists: `headers = ["x-api-key"]`.
//!
//! Decisions:
//! - allow, with context `api_key = <the header's value>` for later policies (a rate limit per
//!   key, for example);
//! - deny 403 `missing_header` when the header is absent or empty (counted as `missing_header`).
//!
//! The edge may reuse an instance for many requests: keep no per-request state in statics.

wit_bindgen::generate!({ world: "policy", path: "wit" });

use edge::policy::types::{Allow, Decision, Deny, Request};
use edge::policy::{config, metrics};

const DEFAULT_HEADER: &str = "x-api-key";

struct Policy;

impl exports::edge::policy::decide::Guest for Policy {
    fn decide(req: Request) -> Decision {
        let header = config::get("header")
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| DEFAULT_HEADER.to_owned())
            .to_ascii_lowercase();
        let value = req
            .headers
            .iter()
            .find(|(name, value)| *name == header && !value.is_empty())
            .map(|(_, value)| value.clone());
        match value {
            Some(value) => Decision::Allow(Allow {
                response_headers: Vec::new(),
                context: vec![("api_key".to_owned(), value)],
                propagate_query: Vec::new(),
            }),
            None => {
                metrics::counter_add("missing_header", 1);
                Decision::Deny(Deny {
                    status: 403,
                    reason: "missing_header".to_owned(),
                    headers: Vec::new(),
                })
            }
        }
    }
}

export!(Policy);
