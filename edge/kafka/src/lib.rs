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
//! spool keeps the records until [`Sink::deliver`](edge_events::Sink::deliver) succeeds. While
//! the topics are not known to exist (before the first delivery, after a failed one) `deliver`
//! first creates them, so with Kafka down at that moment it fails after `request_timeout`
//! (nothing delivered) and the shipper backs off; once records are handed to librdkafka it
//! waits however long the outage lasts. Keys are partitioned with `murmur2_random`, as the
//! Java client and aiokafka do.
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
//! - Two cases would otherwise make a delivery wait forever, so a waiting `deliver` watches for
//!   them: a fatal producer still holding records (librdkafka purges its queues once, but a
//!   batch whose response arrives after that is queued again for a retry that never comes; the
//!   sink purges again every second) and topics the broker lost (re-created every 10 s when
//!   `create_topics` is on).
//! - **Stalled producer.** A third case cannot be recognised from its cause, only from its
//!   effect, so `deliver` watches for the effect: no delivery report for `stall_timeout` (60 s)
//!   while the broker answered every metadata request over that time (asked every 5 s once a
//!   delivery is quiet). `stall_timeout` must be longer than librdkafka's `socket.timeout.ms`
//!   and `request.timeout.ms` (30 s each), so a produce request librdkafka still waits for is
//!   not taken for a stall. It was met against tansu after the broker forgot the producer id
//!   with no produce request retried yet: librdkafka then sees "no risk of duplication", bumps
//!   the producer epoch and retries, tansu answers `UNKNOWN_PRODUCER_ID` again, and so on
//!   (thousands of rounds a minute, no fatal error, no progress;
//!   `a_broker_that_forgets_an_idle_producer_stalls_it_and_the_sink_recovers` reproduces it
//!   every time). The sink purges what the producer holds (again every second until the
//!   delivery ends), fails the delivery with the leading run and "producer stalled", and the
//!   next delivery builds a new producer (a new producer id). Records that were in flight at
//!   the purge may have been stored: they are sent again, so consumers see them twice
//!   (de-duplicate by `event-id`, as after a fatal error). A broker that cannot be reached is an
//!   outage, not a stall: the count starts again when it answers, so a broker that just came
//!   back has `stall_timeout` to take what waited for it. A partition whose leader is down
//!   while another broker answers, or `NOT_ENOUGH_REPLICAS` retried for a minute, looks like a
//!   stall too: the sink then rebuilds its producer every `stall_timeout` until the partition is
//!   back (records stay in the spool; nothing is lost).
//!
//! # tansu 0.6.0 (the test broker) across its own restart
//!
//! Measured by `tests/tansu.rs` (librdkafka's view with `EDGE_KAFKA_DEBUG=eos,msg` and
//! `RUST_LOG=edge_kafka=debug`):
//!
//! - tansu keeps the idempotence state (producer id, epoch, next sequence per partition) in the
//!   same object store as the records. With `s3://` storage it survives a restart: after the
//!   broker stopped with produce requests in flight and came back, librdkafka kept its producer
//!   id, retried the in-flight batches, tansu answered those it had already stored with
//!   `DUPLICATE_SEQUENCE_NUMBER` (librdkafka counts them delivered) and took the rest; no fatal
//!   error, every record exactly once (`broker_restart_mid_delivery_loses_and_duplicates_nothing`).
//! - A broker that forgets (`memory://` storage, or its bucket emptied) answers the retried
//!   batches `UNKNOWN_PRODUCER_ID`; librdkafka cannot retry them without risking duplicates and
//!   raises a fatal error. `deliver` returns the leading run, the next one rebuilds the producer
//!   and re-creates the topics (`forgotten_producer_id_is_fatal_and_the_producer_is_rebuilt`).
//! - tansu is not crash-consistent: it advances a producer's sequence, then the partition's
//!   high watermark, then writes the batch. A produce aborted in between (SIGKILL; or SIGTERM,
//!   after which tansu serves open connections 5 more seconds and then aborts them) makes the
//!   retry look like a duplicate: in 2 of 3 SIGKILL runs records were lost (43, one batch) or
//!   stored twice (15). No client setting can fix that; the test harness cuts the client
//!   connections before it stops the broker. (Kafka appends a batch and its producer state
//!   together.) Even after an orderly stop (connections cut first, then SIGTERM) it sometimes
//!   answers a retried batch `OUT_OF_ORDER_SEQUENCE_NUMBER`, a fatal error: the sink rebuilds
//!   the producer and the records of that delivery after its leading run are sent again, so the
//!   test then checks what the sink promises (nothing lost, per-key order once duplicates are
//!   removed, duplicates only of the failed delivery) instead of exactly once.
//! - After a restart librdkafka reconnects on its back-off (`reconnect.backoff.max.ms`, 10 s):
//!   the interrupted batch completed 4-11 s after the broker was back.

mod consumer;
mod context;
mod sink;

pub use consumer::{
    Skipped, StreamEvent, StreamEventsConfig, check as check_stream_event, spawn_stream_events,
    stream_of_topic,
};
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
    /// A delivery that gets no delivery report for this long while the broker answers metadata
    /// requests is purged and the producer rebuilt (see "stalled producer" above), default 60 s.
    /// Must be longer than librdkafka's `socket.timeout.ms` and `request.timeout.ms` (30 s each
    /// unless `properties` say otherwise): a produce request that librdkafka still waits for is
    /// not a stall.
    pub stall_timeout: Duration,
}

/// How long librdkafka may wait for a produce request's answer: the larger of
/// `socket.timeout.ms` (the client's own wait; the sink sets 30 s, librdkafka's default is 60 s)
/// and `request.timeout.ms` (the broker's ack timeout, 30 s), as `properties` leave them.
pub(crate) fn produce_request_timeout(
    properties: &[(String, String)],
) -> Result<Duration, KafkaError> {
    let mut longest = Duration::ZERO;
    for (key, default) in [
        ("socket.timeout.ms", 30_000),
        ("request.timeout.ms", 30_000),
    ] {
        let ms = match properties.iter().rev().find(|(k, _)| k == key) {
            None => default,
            Some((_, v)) => v.trim().parse().map_err(|_| {
                KafkaError::Config(format!("{key}: {v:?} is not a number of milliseconds"))
            })?,
        };
        longest = longest.max(Duration::from_millis(ms));
    }
    Ok(longest)
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
            stall_timeout: Duration::from_secs(60),
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
