//! The consumer of per-stream event topics (`<streaming_prefix>.<stream id>.events`: stream
//! ended, rendition added, announcements) that the signaling role pushes to the stream's peers.
//!
//! One consumer group across the nodes of a signaling cluster (`KAFKA_CONSUMER_GROUP`): each
//! event is read by one node, which fans it out to every node (the cluster does that; an edge
//! without one takes a group of its own, see edge-app);
//! a new group starts at the newest events (they are live notices, not a log to replay). The
//! topic set is a pattern, so streams created later are picked up by the metadata refresh
//! (`topic.metadata.refresh.interval.ms`, 10 s here).

use crate::KafkaError;
use futures::StreamExt;
use rdkafka::{
    ClientConfig, Message,
    consumer::{Consumer, StreamConsumer},
};
use tokio::sync::{mpsc, watch};

/// Where and how stream events are read.
#[derive(Debug, Clone)]
pub struct StreamEventsConfig {
    /// `KAFKA_BOOTSTRAP_SERVERS`.
    pub bootstrap_servers: String,
    /// The topics read are `<prefix>.<stream id>.events`.
    pub streaming_prefix: String,
    /// `KAFKA_CONSUMER_GROUP`.
    pub group: String,
    /// Largest event payload taken, bytes (larger ones are skipped and counted).
    pub max_event: usize,
    /// Extra librdkafka settings, applied last.
    pub properties: Vec<(String, String)>,
}

/// One event of a stream: the stream id (from the topic) and the JSON payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEvent {
    /// The stream id of the topic.
    pub stream: String,
    /// The record's value, a JSON value.
    pub payload: String,
}

/// Why an event was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skipped {
    /// Not a JSON value, or empty.
    NotJson,
    /// Over `max_event` bytes.
    TooLarge,
    /// A topic name with an empty or unusable stream id.
    BadTopic,
}

impl Skipped {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotJson => "not_json",
            Self::TooLarge => "too_large",
            Self::BadTopic => "bad_topic",
        }
    }
}

/// The stream id of `topic` (`<prefix>.<id>.events`).
pub fn stream_of_topic<'a>(prefix: &str, topic: &'a str) -> Option<&'a str> {
    let id = topic
        .strip_prefix(prefix)?
        .strip_prefix('.')?
        .strip_suffix(".events")?;
    (!id.is_empty()).then_some(id)
}

/// Checks one record: its stream id and its payload.
pub fn check(
    prefix: &str,
    max_event: usize,
    topic: &str,
    payload: Option<&[u8]>,
) -> Result<StreamEvent, Skipped> {
    let stream = stream_of_topic(prefix, topic).ok_or(Skipped::BadTopic)?;
    let payload = payload.unwrap_or_default();
    if payload.len() > max_event {
        return Err(Skipped::TooLarge);
    }
    let text = std::str::from_utf8(payload).map_err(|_| Skipped::NotJson)?;
    if serde_json::from_str::<serde::de::IgnoredAny>(text).is_err() {
        return Err(Skipped::NotJson);
    }
    Ok(StreamEvent {
        stream: stream.to_owned(),
        payload: text.to_owned(),
    })
}

/// The regex subscription of `prefix` (librdkafka matches it against every topic). Topic names
/// hold `[A-Za-z0-9._-]`; of those only `.` means something to a regex (and librdkafka's regex
/// engine refuses needless escapes such as `\_`).
fn pattern(prefix: &str) -> String {
    format!("^{}\\..+\\.events$", prefix.replace('.', "\\."))
}

/// Reads stream events until `stop` turns true: good ones go to `events` (waited for: a slow
/// receiver slows the consumer down, nothing is dropped); skipped ones to `skipped`.
pub fn spawn_stream_events(
    cfg: StreamEventsConfig,
    events: mpsc::Sender<StreamEvent>,
    skipped: impl Fn(Skipped) + Send + 'static,
    mut stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, KafkaError> {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &cfg.bootstrap_servers)
        .set("group.id", &cfg.group)
        .set("client.id", "edge-signaling")
        .set("auto.offset.reset", "latest")
        .set("enable.auto.commit", "true")
        .set("topic.metadata.refresh.interval.ms", "10000")
        .set("enable.partition.eof", "false");
    for (k, v) in &cfg.properties {
        client.set(k, v);
    }
    let consumer: StreamConsumer = client
        .create()
        .map_err(|e| KafkaError::Config(e.to_string()))?;
    consumer
        .subscribe(&[&pattern(&cfg.streaming_prefix)])
        .map_err(|e| KafkaError::Config(e.to_string()))?;
    Ok(tokio::spawn(async move {
        let mut stream = consumer.stream();
        loop {
            let msg = tokio::select! {
                msg = stream.next() => msg,
                _ = stop.wait_for(|s| *s) => return,
            };
            let Some(msg) = msg else { return };
            let msg = match msg {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!(error = %e, "stream events: consumer error");
                    continue;
                }
            };
            match check(
                &cfg.streaming_prefix,
                cfg.max_event,
                msg.topic(),
                msg.payload(),
            ) {
                Ok(event) => {
                    if events.send(event).await.is_err() {
                        return;
                    }
                }
                Err(why) => skipped(why),
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_name_their_stream_and_payloads_are_json_within_bounds() {
        assert_eq!(
            stream_of_topic("stream", "stream.live-1.events"),
            Some("live-1")
        );
        assert_eq!(stream_of_topic("stream", "stream.a.b.events"), Some("a.b"));
        assert_eq!(stream_of_topic("stream", "stream..events"), None);
        assert_eq!(stream_of_topic("stream", "stream.start"), None);
        assert_eq!(stream_of_topic("stream", "streamx.a.events"), None);
        assert_eq!(pattern("stream"), r"^stream\..+\.events$");
        assert_eq!(pattern("my.streams"), r"^my\.streams\..+\.events$");
        assert_eq!(pattern("my_stream-s"), r"^my_stream-s\..+\.events$");
        let ok = check(
            "stream",
            100,
            "stream.s.events",
            Some(br#"{"type":"ended"}"#),
        );
        assert_eq!(ok.unwrap().stream, "s");
        let skip = |payload: &[u8]| check("stream", 16, "stream.s.events", Some(payload));
        assert_eq!(skip(b"not json"), Err(Skipped::NotJson));
        assert_eq!(skip(b""), Err(Skipped::NotJson));
        assert_eq!(skip(&[b'1'; 17]), Err(Skipped::TooLarge));
        assert_eq!(skip(&[0xff, 0xfe]), Err(Skipped::NotJson));
    }
}
