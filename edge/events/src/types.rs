//! Event kinds and their JSON payloads, and the record the spool stores.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::time::SystemTime;

/// Every kind of event the edge records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    /// A viewer started a stream (`POST /api/v1/stream/{movie_id}`).
    #[serde(rename = "stream.start")]
    StreamStart,
    /// A viewer reported a position (`POST …/progress`).
    #[serde(rename = "stream.progress")]
    ProgressUpdate,
    /// A viewer stopped (`POST …/stop`).
    #[serde(rename = "stream.stop")]
    StreamStop,
    /// A policy denied a request (analytics).
    #[serde(rename = "policy.denied")]
    PolicyDenied,
    /// A cache tier was filled from below (analytics).
    #[serde(rename = "cache.fill")]
    CacheFill,
    /// Peers joined and left a stream on a signaling node over a period (analytics).
    #[serde(rename = "signaling.peers")]
    SignalingPeers,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 6] = [
        Self::StreamStart,
        Self::ProgressUpdate,
        Self::StreamStop,
        Self::PolicyDenied,
        Self::CacheFill,
        Self::SignalingPeers,
    ];

    /// `stream.start`, …: the name in logs, metrics and the spool.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StreamStart => "stream.start",
            Self::ProgressUpdate => "stream.progress",
            Self::StreamStop => "stream.stop",
            Self::PolicyDenied => "policy.denied",
            Self::CacheFill => "cache.fill",
            Self::SignalingPeers => "signaling.peers",
        }
    }
}

/// Topic names. The streaming topics are `<streaming_prefix>.start|progress|stop` (with the
/// default prefix `stream`, the replaced service's `stream.start`, `stream.progress`,
/// `stream.stop`); analytics topics are `<analytics_prefix>.policy.denied|cache.fill`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// `STREAMING_TOPIC_PREFIX`, default `stream`.
    pub streaming_prefix: String,
    /// Default `edge`.
    pub analytics_prefix: String,
}

impl Default for Topics {
    fn default() -> Self {
        Self {
            streaming_prefix: "stream".into(),
            analytics_prefix: "edge".into(),
        }
    }
}

impl Topics {
    /// The topic of `kind`.
    pub fn topic(&self, kind: EventKind) -> String {
        let (prefix, name) = match kind {
            EventKind::StreamStart => (&self.streaming_prefix, "start"),
            EventKind::ProgressUpdate => (&self.streaming_prefix, "progress"),
            EventKind::StreamStop => (&self.streaming_prefix, "stop"),
            EventKind::PolicyDenied => (&self.analytics_prefix, "policy.denied"),
            EventKind::CacheFill => (&self.analytics_prefix, "cache.fill"),
            EventKind::SignalingPeers => (&self.analytics_prefix, "signaling.peers"),
        };
        format!("{prefix}.{name}")
    }

    /// Every topic, in [`EventKind::ALL`] order.
    pub fn all(&self) -> Vec<String> {
        EventKind::ALL.iter().map(|k| self.topic(*k)).collect()
    }
}

/// `2024-11-15T10:30:00.123456`: UTC without offset, microseconds — what the replaced service's
/// `datetime.utcnow().isoformat()` wrote.
pub fn timestamp(at: SystemTime) -> String {
    let mut s = humantime::format_rfc3339_micros(at).to_string();
    s.pop(); // the trailing `Z`
    s
}

/// A typed event: its kind and its JSON payload (the struct's serde form).
pub trait Event: Serialize {
    /// The kind of every value of this type.
    const KIND: EventKind;
}

/// Payload of `stream.start`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamStart {
    /// JWT subject.
    pub user_id: String,
    /// Movie id from the path.
    pub movie_id: String,
    /// Always `stream_start`.
    pub action: String,
    /// [`timestamp`] of the request.
    pub timestamp: String,
}

/// Payload of `stream.progress`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressUpdate {
    /// JWT subject.
    pub user_id: String,
    /// Movie id from the path.
    pub movie_id: String,
    /// Always `progress_update`.
    pub action: String,
    /// Playback position.
    pub position_seconds: u64,
    /// [`timestamp`] of the request.
    pub timestamp: String,
}

/// Payload of `stream.stop`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamStop {
    /// JWT subject.
    pub user_id: String,
    /// Movie id from the path.
    pub movie_id: String,
    /// Always `stream_stop`.
    pub action: String,
    /// Final playback position.
    pub position_seconds: u64,
    /// [`timestamp`] of the request.
    pub timestamp: String,
}

/// Payload of `policy.denied` (analytics).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyDenied {
    /// Route name.
    pub route: String,
    /// Policy that denied (or failed closed).
    pub policy: String,
    /// Normalised request path.
    pub path: String,
    /// Status answered.
    pub status: u16,
    /// Reason code.
    pub reason: String,
    /// Client address.
    pub client: String,
    /// [`timestamp`].
    pub timestamp: String,
}

/// Payload of `cache.fill` (analytics): one per fill of the memory tier from below.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheFill {
    /// Normalised object path (the cache key).
    pub path: String,
    /// Tier the object came from: `disk`, `seeder`, `origin`.
    pub source: String,
    /// `ok`, `stale`, `not_found`, `error`.
    pub result: String,
    /// Body bytes (0 unless `ok`/`stale`).
    pub bytes: u64,
    /// How long the fill took.
    pub millis: u64,
    /// [`timestamp`].
    pub timestamp: String,
}

impl Event for StreamStart {
    const KIND: EventKind = EventKind::StreamStart;
}
impl Event for ProgressUpdate {
    const KIND: EventKind = EventKind::ProgressUpdate;
}
impl Event for StreamStop {
    const KIND: EventKind = EventKind::StreamStop;
}
impl Event for PolicyDenied {
    const KIND: EventKind = EventKind::PolicyDenied;
}
/// Payload of `signaling.peers`: one stream on one signaling node over one period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalingPeers {
    /// The stream id peers joined.
    pub stream_id: String,
    /// The signaling node.
    pub node_id: String,
    /// Peers that joined over the period.
    pub joined: u64,
    /// Peers that left over it.
    pub left: u64,
    /// The stream's peers on the node at its end.
    pub peers: u64,
    /// [`timestamp`] of the period's end.
    pub timestamp: String,
}

impl Event for SignalingPeers {
    const KIND: EventKind = EventKind::SignalingPeers;
}

impl Event for CacheFill {
    const KIND: EventKind = EventKind::CacheFill;
}

/// A record to append: kind, key, payload, and whether it is shipped to the sink.
#[derive(Debug, Clone)]
pub struct NewRecord {
    /// Kind.
    pub kind: EventKind,
    /// Partitioning key (the stream session for streaming events).
    pub key: String,
    /// `false`: kept in the spool for local consumers (the progress applier) but never shipped
    /// (a progress update coalesced into a later one).
    pub publish: bool,
    /// The event's JSON.
    pub payload: Box<RawValue>,
}

impl NewRecord {
    /// A published record of `event` under `key`.
    pub fn new<E: Event>(event: &E, key: impl Into<String>) -> Self {
        Self {
            kind: E::KIND,
            key: key.into(),
            publish: true,
            payload: serde_json::value::to_raw_value(event).unwrap_or_default(),
        }
    }

    /// The same record, kept local (not shipped).
    pub fn unpublished(mut self) -> Self {
        self.publish = false;
        self
    }
}

/// A record as stored: a [`NewRecord`] with its sequence number and append time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// Position in the spool: strictly increasing, never reused (also across restarts).
    pub seq: u64,
    /// Kind.
    pub kind: EventKind,
    /// Partitioning key.
    pub key: String,
    /// Shipped to the sink?
    pub publish: bool,
    /// Append time, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The event's JSON, byte for byte as published.
    pub payload: Box<RawValue>,
}

impl Record {
    /// The payload decoded as `E` (`None` when the kind differs or it does not decode).
    pub fn decode<E: Event + serde::de::DeserializeOwned>(&self) -> Option<E> {
        (self.kind == E::KIND)
            .then(|| serde_json::from_str(self.payload.get()).ok())
            .flatten()
    }
}
