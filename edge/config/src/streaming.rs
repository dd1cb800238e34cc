//! The sections about the streaming API and the events it publishes: `[stream_api]`, `[events]`,
//! `[kafka]`.

use crate::EdgeConfig;
use bytesize::ByteSize;
use serde::Deserialize;
use std::{collections::BTreeMap, path::PathBuf, time::Duration};

/// `[stream_api]`: `POST /api/v1/stream/{movie_id}` (start), `…/progress` (POST, GET), `…/stop`,
/// the API of the streaming service the edge replaces, answered by the edge itself. Like every
/// path, it is served only where the policies file has a route for it (the default files protect
/// it with the JWT and subscription policies).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct StreamApiConfig {
    /// Serve the API. Default true.
    pub enabled: bool,
    /// Path prefix of the API. Default `/api/v1/stream`.
    pub prefix: String,
    /// Path of a movie's HLS manifest; `{movie_id}` is replaced. Default
    /// `/vod/movies/{movie_id}/index.m3u8` (the replaced service's bucket layout, `vod` bucket).
    pub manifest_hls: String,
    /// Path of a movie's DASH manifest. Default `/vod/movies/{movie_id}/index.mpd`.
    pub manifest_dash: String,
    /// What `manifest_url` points at: `edge` (this edge, signed for the movie's directory with
    /// `[signed_url]`) or `origin` (an S3 presigned URL, as the replaced service; needs the `s3`
    /// origin). Env `STREAM_MANIFEST_URLS`. Default `edge`.
    pub manifest_urls: ManifestUrls,
    /// How long a viewer's position is kept, in seconds. Env `REDIS_PROGRESS_TTL`. Default 86400.
    pub progress_ttl: u64,
    /// Progress updates of one viewer for one movie closer together than this are accepted (and
    /// readable at once) but coalesced: one `stream.progress` event per interval carries the
    /// latest position. Default `5s` (players call every 10 s).
    #[serde(with = "humantime_serde")]
    pub progress_min_interval: Duration,
    /// Largest accepted `position_seconds`; larger is refused with 400. Default 172800 (48 h).
    pub max_position: u64,
    /// Largest request body; larger is refused with 413. Default 4 KiB.
    pub max_body: ByteSize,
}

/// Where `manifest_url` points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ManifestUrls {
    /// This edge, with a signed-URL token.
    Edge,
    /// The S3 origin, presigned.
    Origin,
}

impl Default for StreamApiConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            prefix: "/api/v1/stream".into(),
            manifest_hls: "/vod/movies/{movie_id}/index.m3u8".into(),
            manifest_dash: "/vod/movies/{movie_id}/index.mpd".into(),
            manifest_urls: ManifestUrls::Edge,
            progress_ttl: 86_400,
            progress_min_interval: Duration::from_secs(5),
            max_position: 172_800,
            max_body: ByteSize::kib(4),
        }
    }
}

/// When the spool syncs appended events to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// Before an append is acknowledged (group commit: one `fdatasync` for every append waiting
    /// at that moment). Survives power loss. Analytics events (`policy.denied`, `cache.fill`)
    /// have nobody waiting: they are synced within `fsync_interval`, or with the next append.
    Always,
    /// Every `fsync_interval`; appends are acknowledged once written. Survives an edge crash;
    /// power loss may lose the last interval.
    Interval,
    /// Left to the OS.
    Never,
}

/// `[events]`: the on-disk spool every event is appended to before it is acknowledged, and
/// shipped from (to Kafka with `[kafka]`; without it, the spool is the event log read by
/// `edge events tail`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct EventsConfig {
    /// Spool directory. Env `EDGE_EVENTS_SPOOL`. Default `<server.data_dir>/events`.
    pub spool_path: Option<PathBuf>,
    /// Most bytes of events not yet shipped (Kafka down); past it, API calls that must record an
    /// event are refused with 503 and analytics events are dropped (counted). A warning is
    /// logged from 80 %. Default 1 GiB.
    pub max_backlog: ByteSize,
    /// Bytes of shipped events kept as history for `edge events tail`. Default 64 MiB.
    pub retain: ByteSize,
    /// Size of one spool segment file. Default 16 MiB.
    pub segment_size: ByteSize,
    /// Durability of an acknowledged event. Default `always`.
    pub fsync: Fsync,
    /// Period of `fsync = "interval"`, and the longest an analytics event stays unsynced under
    /// `fsync = "always"`. Default `1s`.
    #[serde(with = "humantime_serde")]
    pub fsync_interval: Duration,
    /// Also record an event per policy denial and per cache-tier fill (`policy.denied`,
    /// `cache.fill`). Default true.
    pub analytics: bool,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            spool_path: None,
            max_backlog: ByteSize::gib(1),
            retain: ByteSize::mib(64),
            segment_size: ByteSize::mib(16),
            fsync: Fsync::Always,
            fsync_interval: Duration::from_secs(1),
            analytics: true,
        }
    }
}

/// `[kafka]`: where events are shipped. Without `bootstrap_servers` nothing is shipped.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct KafkaConfig {
    /// `host:port[,host:port]`. Env `KAFKA_BOOTSTRAP_SERVERS`. Default none.
    pub bootstrap_servers: Option<String>,
    /// Ship to Kafka when `bootstrap_servers` is set. Env `ENABLE_KAFKA`. Default true.
    pub enabled: bool,
    /// Streaming topics are `<prefix>.start`, `.progress`, `.stop`. Env `STREAMING_TOPIC_PREFIX`.
    /// Default `stream` (the replaced service's `stream.start`, `stream.progress`, `stream.stop`).
    pub topic_prefix: String,
    /// Analytics topics are `<prefix>.policy.denied`, `<prefix>.cache.fill`. Default `edge`.
    pub analytics_prefix: String,
    /// `client.id`. Default `edge`.
    pub client_id: String,
    /// Create the topics at start (with `partitions`, `replication_factor`); existing topics are
    /// left as they are. Default true.
    pub create_topics: bool,
    /// Partitions of created topics. Default 3.
    pub partitions: i32,
    /// Replication factor of created topics. Default 1.
    pub replication_factor: i32,
    /// Bound on metadata and admin requests (health, topic creation). Default `5s`.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// A delivery with no delivery report for this long while the broker answers is purged and
    /// the producer rebuilt (records in flight may then reach consumers twice; they de-duplicate
    /// by the `event-id` header). Default `60s`; longer than librdkafka's `socket.timeout.ms`
    /// and `request.timeout.ms` (`properties`, 30 s each by default).
    #[serde(with = "humantime_serde")]
    pub stall_timeout: Duration,
    /// Further librdkafka settings (`security.protocol`, `sasl.mechanisms`, …), applied last.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: None,
            enabled: true,
            topic_prefix: "stream".into(),
            analytics_prefix: "edge".into(),
            client_id: "edge".into(),
            create_topics: true,
            partitions: 3,
            replication_factor: 1,
            request_timeout: Duration::from_secs(5),
            stall_timeout: Duration::from_secs(60),
            properties: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    /// The bootstrap servers when shipping is on.
    pub fn active(&self) -> Option<&str> {
        self.bootstrap_servers
            .as_deref()
            .filter(|s| self.enabled && !s.is_empty())
    }
}

impl EdgeConfig {
    /// The spool directory: `events.spool_path`, else `<server.data_dir>/events`.
    pub fn spool_dir(&self) -> PathBuf {
        match &self.events.spool_path {
            Some(p) => self.resolve(p),
            None => self.resolve(&self.server.data_dir).join("events"),
        }
    }
}

/// Checks the streaming sections.
pub(crate) fn validate(cfg: &EdgeConfig, bad: &mut dyn FnMut(&str, &str)) {
    let api = &cfg.stream_api;
    if !api.prefix.starts_with('/') || api.prefix.ends_with('/') || api.prefix.len() < 2 {
        bad(
            "stream_api.prefix",
            "must start with / and not end with / (`/api/v1/stream`)",
        );
    }
    for (field, p) in [
        ("stream_api.manifest_hls", &api.manifest_hls),
        ("stream_api.manifest_dash", &api.manifest_dash),
    ] {
        if !p.starts_with('/') || p.matches("{movie_id}").count() != 1 {
            bad(
                field,
                "must be an absolute path containing `{movie_id}` once",
            );
        }
    }
    if api.manifest_urls == ManifestUrls::Origin && cfg.s3.bucket.is_none() {
        bad(
            "stream_api.manifest_urls",
            "`origin` hands out S3 presigned URLs: configure [s3] (S3_BUCKET_NAME, ...)",
        );
    }
    if api.progress_ttl == 0 {
        bad("stream_api.progress_ttl", "must be at least 1 second");
    }
    if api.max_position == 0 {
        bad("stream_api.max_position", "must be at least 1");
    }
    if api.max_body < ByteSize::b(64) || api.max_body > ByteSize::mib(1) {
        bad("stream_api.max_body", "must be between 64 B and 1 MiB");
    }
    let ev = &cfg.events;
    if ev.max_backlog < ByteSize::mib(1) {
        bad("events.max_backlog", "must be at least 1 MiB");
    }
    if ev.segment_size < ByteSize::kib(64) || ev.segment_size > ev.max_backlog {
        bad(
            "events.segment_size",
            "must be at least 64 KiB and at most events.max_backlog",
        );
    }
    if ev.fsync == Fsync::Interval && ev.fsync_interval.is_zero() {
        bad("events.fsync_interval", "must be greater than zero");
    }
    let k = &cfg.kafka;
    if let Some(servers) = &k.bootstrap_servers
        && servers.split(',').any(|s| {
            let s = s.trim();
            s.is_empty() || s.contains("://") || !s.contains(':')
        })
    {
        bad(
            "kafka.bootstrap_servers",
            "must be host:port[,host:port] (no scheme)",
        );
    }
    for (field, prefix) in [
        ("kafka.topic_prefix", &k.topic_prefix),
        ("kafka.analytics_prefix", &k.analytics_prefix),
    ] {
        if prefix.is_empty()
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            bad(
                field,
                "must be a non-empty topic name part (letters, digits, `.`, `_`, `-`)",
            );
        }
    }
    if k.partitions < 1 || k.replication_factor < 1 {
        bad(
            "kafka",
            "partitions and replication_factor must be at least 1",
        );
    }
    if k.request_timeout.is_zero() {
        bad("kafka.request_timeout", "must be greater than zero");
    }
    // A produce request librdkafka still waits for is not a stall (the sink sets
    // socket.timeout.ms to 30 s; request.timeout.ms is librdkafka's 30 s).
    let mut produce = Duration::ZERO;
    for key in ["socket.timeout.ms", "request.timeout.ms"] {
        match k.properties.get(key).map(|v| v.trim().parse::<u64>()) {
            Some(Err(_)) => bad(
                &format!("kafka.properties.\"{key}\""),
                "must be a number of milliseconds",
            ),
            ms => {
                produce = produce.max(Duration::from_millis(
                    ms.and_then(Result::ok).unwrap_or(30_000),
                ))
            }
        }
    }
    if k.stall_timeout <= produce {
        bad(
            "kafka.stall_timeout",
            "must be longer than librdkafka's socket.timeout.ms and request.timeout.ms (30 s \
             each unless kafka.properties sets them)",
        );
    }
}
