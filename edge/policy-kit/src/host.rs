//! The world around a guest under test: a fixed clock and outbound HTTP answered from a script.

use crate::fixture::{ScriptedAnswer, ScriptedExchange};
use edge_policy::{
    Clock, Outbound,
    outbound::{OutboundError, OutboundRequest, OutboundResponse},
};
use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

/// A clock that returns what the current fixture says.
#[derive(Debug, Default)]
pub(crate) struct FixedClock(AtomicU64);

impl FixedClock {
    pub(crate) fn set(&self, now_ms: u64) {
        self.0.store(now_ms, Ordering::Relaxed);
    }
}

impl Clock for FixedClock {
    fn now_millis(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One outbound request a policy made (after the host's allow-list check), and what it got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundCall {
    /// `GET` or `POST`.
    pub method: String,
    /// The URL as the host normalised it.
    pub url: String,
    /// What the script answered.
    pub answer: CallAnswer,
}

/// What a scripted request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallAnswer {
    /// A response with this status.
    Status(u16),
    /// `error = "timeout"`.
    Timeout,
    /// `error = "failed"`.
    Failed,
    /// `error = "too_large"`, or a scripted body larger than the policy's `outbound_max_body`.
    TooLarge,
    /// No scripted answer was left for this method and URL: answered `failed`.
    Unscripted,
}

impl fmt::Display for CallAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status(s) => write!(f, "{s}"),
            Self::Timeout => f.write_str("timeout"),
            Self::Failed => f.write_str("failed"),
            Self::TooLarge => f.write_str("too_large"),
            Self::Unscripted => f.write_str("unscripted (answered failed)"),
        }
    }
}

/// Answers outbound requests from the current fixture's `[[http]]` entries, each once, and
/// records every request.
#[derive(Debug, Default)]
pub(crate) struct ScriptedOutbound {
    state: Mutex<Script>,
}

#[derive(Debug, Default)]
struct Script {
    /// Entries not used yet, in file order.
    left: Vec<ScriptedExchange>,
    calls: Vec<OutboundCall>,
}

impl ScriptedOutbound {
    /// Starts a fixture: these answers, no calls yet.
    pub(crate) fn reset(&self, answers: &[ScriptedExchange]) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.left = answers.to_vec();
        s.calls.clear();
    }

    /// The calls made since [`Self::reset`].
    pub(crate) fn take_calls(&self) -> Vec<OutboundCall> {
        std::mem::take(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()).calls)
    }

    fn answer(&self, req: &OutboundRequest) -> Result<OutboundResponse, OutboundError> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let method = req.method.as_str().to_owned();
        let found = s
            .left
            .iter()
            .position(|e| e.method == method && e.url == req.url)
            .map(|i| s.left.remove(i));
        let (answer, result) = match found.map(|e| e.answer) {
            None => (
                CallAnswer::Unscripted,
                Err(OutboundError::Failed(format!(
                    "no scripted answer for {method} {}",
                    req.url
                ))),
            ),
            Some(ScriptedAnswer::Timeout) => (CallAnswer::Timeout, Err(OutboundError::Timeout)),
            Some(ScriptedAnswer::Failed) => (
                CallAnswer::Failed,
                Err(OutboundError::Failed("scripted failure".into())),
            ),
            Some(ScriptedAnswer::TooLarge) => (CallAnswer::TooLarge, Err(OutboundError::TooLarge)),
            Some(ScriptedAnswer::Response { body, .. }) if body.len() > req.max_body => {
                (CallAnswer::TooLarge, Err(OutboundError::TooLarge))
            }
            Some(ScriptedAnswer::Response {
                status,
                headers,
                body,
            }) => (
                CallAnswer::Status(status),
                Ok(OutboundResponse {
                    status,
                    headers,
                    body,
                }),
            ),
        };
        s.calls.push(OutboundCall {
            method,
            url: req.url.clone(),
            answer,
        });
        result
    }
}

impl Outbound for ScriptedOutbound {
    fn send(
        &self,
        request: OutboundRequest,
    ) -> Pin<Box<dyn Future<Output = Result<OutboundResponse, OutboundError>> + Send + 'static>>
    {
        let result = self.answer(&request);
        Box::pin(std::future::ready(result))
    }
}
