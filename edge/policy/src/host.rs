//! The host side of the `kv` and `outbound-http` imports: each call bounded by its own timeout
//! and by the call's host budget, booked as host time (not guest time).

use crate::{
    outbound::{self, OutboundError, OutboundRequest},
    state::PolicyState,
};
use edge_kv::{KvError, Scope};
use edge_wit::host::{kv, outbound_http};
use std::time::Duration;

/// Request headers a guest may not set on outbound requests.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
];

/// Bound on one key-value call in the host (the Redis client has its own, usually lower, one).
const KV_LIMIT: Duration = Duration::from_millis(250);

fn scope(s: kv::Scope) -> Scope {
    match s {
        kv::Scope::Local => Scope::Local,
        kv::Scope::Shared => Scope::Shared,
    }
}

impl PolicyState {
    async fn kv_call<T>(
        &mut self,
        op: &'static str,
        work: impl std::future::Future<Output = Result<T, KvError>>,
    ) -> Result<T, kv::Error> {
        let result = match self.host_call(KV_LIMIT, work).await {
            None => Err(KvError::Unavailable("timed out".into())),
            Some(r) => r,
        };
        result.map_err(|e| {
            let kind = match &e {
                KvError::Unavailable(_) => "unavailable",
                KvError::Invalid(_) => "invalid",
            };
            self.info.metrics.kv_error(&self.info.name, op, kind);
            match e {
                KvError::Unavailable(m) => kv::Error::Unavailable(m),
                KvError::Invalid(m) => kv::Error::Invalid(m),
            }
        })
    }
}

impl kv::Host for PolicyState {
    async fn get(&mut self, s: kv::Scope, key: String) -> Result<Option<String>, kv::Error> {
        let store = self.info.kv.clone();
        self.kv_call("get", async move { store.get(scope(s), &key).await })
            .await
    }

    async fn set(
        &mut self,
        s: kv::Scope,
        key: String,
        value: String,
        ttl_ms: u64,
    ) -> Result<(), kv::Error> {
        let store = self.info.kv.clone();
        self.kv_call("set", async move {
            store
                .set(scope(s), &key, &value, Duration::from_millis(ttl_ms))
                .await
        })
        .await
    }

    async fn increment(
        &mut self,
        s: kv::Scope,
        key: String,
        delta: i64,
        ttl_ms: u64,
    ) -> Result<i64, kv::Error> {
        let store = self.info.kv.clone();
        self.kv_call("increment", async move {
            store
                .increment(scope(s), &key, delta, Duration::from_millis(ttl_ms))
                .await
        })
        .await
    }

    async fn compare_and_set(
        &mut self,
        s: kv::Scope,
        key: String,
        expected: Option<String>,
        value: String,
        ttl_ms: u64,
    ) -> Result<bool, kv::Error> {
        let store = self.info.kv.clone();
        self.kv_call("compare_and_set", async move {
            store
                .compare_and_set(
                    scope(s),
                    &key,
                    expected.as_deref(),
                    &value,
                    Duration::from_millis(ttl_ms),
                )
                .await
        })
        .await
    }
}

impl outbound_http::Host for PolicyState {
    async fn send(
        &mut self,
        request: outbound_http::Request,
    ) -> Result<outbound_http::Response, outbound_http::Error> {
        let result = self.send_checked(request).await;
        let label = match &result {
            Ok(_) => "ok",
            Err(OutboundError::Denied(_)) => "denied",
            Err(OutboundError::Timeout) => "timeout",
            Err(OutboundError::TooLarge) => "too_large",
            Err(OutboundError::Failed(_)) => "failed",
        };
        self.info.metrics.outbound(&self.info.name, label);
        if let Err(OutboundError::Denied(why)) = &result {
            tracing::warn!(policy = %self.info.name, %why, "outbound request refused");
        }
        result
            .map(|r| outbound_http::Response {
                status: r.status,
                headers: r.headers,
                body: r.body,
            })
            .map_err(|e| match e {
                OutboundError::Denied(m) => outbound_http::Error::Denied(m),
                OutboundError::Timeout => outbound_http::Error::Timeout,
                OutboundError::TooLarge => outbound_http::Error::TooLarge,
                OutboundError::Failed(m) => outbound_http::Error::Failed(m),
            })
    }
}

impl PolicyState {
    async fn send_checked(
        &mut self,
        request: outbound_http::Request,
    ) -> Result<outbound::OutboundResponse, OutboundError> {
        let url = outbound::check(&request.url, &self.info.allowed)?;
        let max = self.info.outbound_timeout;
        let timeout = match request.timeout_ms {
            0 => max,
            ms => Duration::from_millis(ms.into()).min(max),
        };
        for (k, v) in &request.headers {
            if http::HeaderName::from_bytes(k.as_bytes()).is_err()
                || http::HeaderValue::from_str(v).is_err()
            {
                return Err(OutboundError::Denied(format!("invalid header {k:?}")));
            }
            // `host` would reach another virtual host behind an allowed origin; the others are the
            // transport's business.
            let lower = k.to_ascii_lowercase();
            if RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with("proxy-") {
                return Err(OutboundError::Denied(format!(
                    "header {k:?} is set by the edge, not by policies"
                )));
            }
        }
        let req = OutboundRequest {
            method: match request.method {
                outbound_http::Method::Get => http::Method::GET,
                outbound_http::Method::Post => http::Method::POST,
            },
            url,
            headers: request.headers,
            body: request.body,
            timeout,
            max_body: self.info.outbound_max_body,
        };
        let exchange = self.info.outbound.send(req);
        self.host_call(timeout, exchange)
            .await
            .unwrap_or(Err(OutboundError::Timeout))
    }
}
