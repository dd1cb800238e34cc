//! The Kafka [`Sink`](edge_events::Sink) of the event shipper: an idempotent librdkafka
//! producer (`rdkafka`, vendored librdkafka 2.12) that keeps per-key order and waits out broker
//! outages instead of dropping records.
//!
//! ```text
//!  shipper ─deliver(batch)─► KafkaSink ─(topics exist? AdminClient CreateTopics)
//!                              │  enqueue every record in spool order (key, payload, headers
//!                              │  event-id = seq, event-kind = kind)
//!                              ▼
//!                       FutureProducer (enable.idempotence, acks=all, message.timeout.ms=0)
//!                              │  retried until the broker takes it, minutes if need be
//!                              ▼
//!              Ok(())  or  Undelivered { delivered: leading run of acks, reason }
//! ```
//!
//! [`KafkaSink::new`] never contacts the broker, so an edge starts while Kafka is down; the
//! spool keeps the records until [`Sink::deliver`](edge_events::Sink::deliver) succeeds.
//!
//! # Delivery guarantees
//!
//! - With `message.timeout.ms=0` librdkafka never gives up on a queued record: a broker that is
//!   down (or restarting) makes `deliver` wait, it does not fail it. The idempotent producer
//!   (sequence numbers per partition) keeps retries from duplicating or reordering records.
//! - A *fatal* producer error (librdkafka could not keep the idempotence guarantee, e.g. the
//!   broker answered `UNKNOWN_PRODUCER_ID` for a batch that had already been retried) fails the
//!   pending records; the sink logs it and builds a new producer before the next delivery. The
//!   shipper re-sends everything after the leading run of acknowledged records, so a record
//!   acknowledged *after* a failed one is sent again: consumers de-duplicate by the `event-id`
//!   header (the spool sequence number, unique and increasing).
//!
//! # tansu 0.6.0 (the test broker) across its own restart
//!
//! Measured by `tests/tansu.rs` (`broker_restart_mid_delivery_loses_and_duplicates_nothing`):
//!
//! - tansu keeps idempotent producer state (producer ids, epochs, last sequence per partition) in
//!   the same object store as the records (`meta` of the `dynostore` engine). With `s3://`
//!   storage it survives a restart, and librdkafka's retries after the restart are accepted (or
//!   answered `DUPLICATE_SEQUENCE_NUMBER`, which librdkafka counts as delivered); no fatal error
//!   was raised, every record arrived exactly once.
//! - With `memory://` storage everything, producer ids included, is gone after a restart: a
//!   retried batch then gets `UNKNOWN_PRODUCER_ID`, which librdkafka turns into a fatal error —
//!   the rebuild path above.
//! - tansu advances a producer's sequence *before* it writes the batch; a broker killed (not
//!   stopped) between the two would answer the retry `DUPLICATE_SEQUENCE_NUMBER` and the batch
//!   would be lost. Stop tansu with SIGTERM.

mod context;
mod sink;

pub use sink::KafkaSink;

use edge_events::Topics;
use std::time::Duration;

/// Connection and topic settings of the Kafka sink.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `KAFKA_BOOTSTRAP_SERVERS`, e.g. `127.0.0.1:9092` (comma-separated `host:port` list).
    pub bootstrap_servers: String,
    /// Topic names per event kind.
    pub topics: Topics,
    /// librdkafka `client.id`, default `edge`.
    pub client_id: String,
    /// Partitions of the topics the sink creates, default 3.
    pub partitions: i32,
    /// Replication factor of the topics the sink creates, default 1.
    pub replication_factor: i32,
    /// Create every topic of [`Topics::all`] before the first delivery (and again after a failed
    /// one); an existing topic is fine. Default `true`: brokers such as tansu do not create
    /// topics on first use, and a record for a missing topic waits forever.
    pub create_topics: bool,
    /// Extra librdkafka settings (`security.protocol`, `sasl.*`, ...), applied after the sink's
    /// own, so they may override them.
    pub properties: Vec<(String, String)>,
    /// Deadline of admin and metadata requests ([`KafkaSink::ensure_topics`],
    /// [`KafkaSink::health`]), default 5 s.
    pub request_timeout: Duration,
}

impl KafkaConfig {
    /// The defaults above with `bootstrap_servers`.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            topics: Topics::default(),
            client_id: "edge".into(),
            partitions: 3,
            replication_factor: 1,
            create_topics: true,
            properties: Vec::new(),
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// Whether the brokers answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// A metadata request succeeded within the request timeout.
    Ok,
    /// It did not; why.
    Unavailable(String),
}

/// Errors of the Kafka sink.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// librdkafka refused the configuration (an unknown or invalid property).
    #[error("kafka configuration: {0}")]
    Config(String),
    /// An admin request (create topics) failed.
    #[error("kafka admin: {0}")]
    Admin(String),
    /// Flushing the producer failed or timed out.
    #[error("kafka flush: {0}")]
    Flush(String),
}
