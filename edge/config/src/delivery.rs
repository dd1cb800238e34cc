//! The sections about delivering objects: origin, S3, cache tiers, the seeder role and routing.

use crate::EdgeConfig;
use bytesize::ByteSize;
use serde::Deserialize;
use std::{net::SocketAddr, path::PathBuf, time::Duration};

/// Which backend `[origin]` reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OriginKind {
    /// `s3` when `s3.bucket` is set, `http` when `origin.url` is set, else `fs`.
    Auto,
    /// The local directory `origin.root`.
    Fs,
    /// The S3-compatible store of `[s3]`.
    S3,
    /// A plain HTTP server at `origin.url`.
    Http,
}

/// `[origin]`: the object store behind the edge (and behind its seeders).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct OriginConfig {
    /// Backend. Default `auto`: setting `S3_BUCKET_NAME` is enough to switch to S3.
    pub kind: OriginKind,
    /// Directory of the local-filesystem origin. Env `EDGE_ORIGIN_ROOT`. Default
    /// `deploy/demo/origin` (the committed demo stream).
    pub root: PathBuf,
    /// Base URL of an HTTP origin (`http://origin.internal/media/`). Env `EDGE_ORIGIN_URL`.
    pub url: Option<String>,
    /// Public path prefix removed before the object key is formed. Default: `/<bucket>` for S3
    /// (so edge URLs mirror path-style S3 URLs: `/vod/movies/m1/index.m3u8` is key
    /// `movies/m1/index.m3u8` of bucket `vod`), empty otherwise.
    pub strip_prefix: Option<String>,
    /// Prefix added to every object key. Default empty.
    pub key_prefix: String,
    /// Timeout of one origin attempt. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Further attempts after a failed remote read (not after "not found"). Default 2.
    pub retries: usize,
    /// Wait before the first retry, doubling after each (at most 2 s). Default `100ms`.
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
}

impl Default for OriginConfig {
    fn default() -> Self {
        Self {
            kind: OriginKind::Auto,
            root: PathBuf::from("deploy/demo/origin"),
            url: None,
            strip_prefix: None,
            key_prefix: String::new(),
            timeout: Duration::from_secs(10),
            retries: 2,
            retry_backoff: Duration::from_millis(100),
        }
    }
}

impl OriginConfig {
    /// The backend `kind = "auto"` resolves to.
    pub fn resolved_kind(&self, s3: &S3Config) -> OriginKind {
        match self.kind {
            OriginKind::Auto if s3.bucket.is_some() => OriginKind::S3,
            OriginKind::Auto if self.url.is_some() => OriginKind::Http,
            OriginKind::Auto => OriginKind::Fs,
            k => k,
        }
    }
}

/// `[s3]`: an S3-compatible origin (AWS, MinIO, Ceph, s3s). Names of the streaming service this
/// edge replaces.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct S3Config {
    /// Endpoint URL; unset for AWS itself. Env `S3_ENDPOINT_URL`.
    pub endpoint: Option<String>,
    /// Bucket. Env `S3_BUCKET_NAME`.
    pub bucket: Option<String>,
    /// Region. Env `S3_REGION`. Default `us-east-1`.
    pub region: String,
    /// Access key id; unset = the AWS environment chain (`AWS_ACCESS_KEY_ID`, web identity,
    /// instance metadata). Env `S3_ACCESS_KEY`.
    pub access_key: Option<String>,
    /// Secret key. Env `S3_SECRET_KEY`.
    pub secret_key: Option<String>,
    /// Virtual-hosted-style requests instead of path style. Default false (what MinIO and most
    /// S3-compatible servers expect).
    pub virtual_hosted: bool,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            endpoint: None,
            bucket: None,
            region: "us-east-1".into(),
            access_key: None,
            secret_key: None,
            virtual_hosted: false,
        }
    }
}

/// `[cache]`: the in-memory tier (TinyUFO admission and eviction, bounded by bytes) and freshness.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct CacheConfig {
    /// Bytes of object bodies kept in memory (`"256 MiB"`). Env `EDGE_CACHE_MEMORY`. Default 256 MiB.
    pub memory: ByteSize,
    /// Objects are fetched, cached (memory and disk) and served in slices of this size: a range
    /// or a seek costs the slices it touches, a cold object streams while it fills. An object
    /// no larger than a slice is one entry. 64 KiB to 32 MiB. Default 4 MiB.
    pub slice: ByteSize,
    /// How long a cached manifest (`.m3u8`, `.mpd`) is fresh; live playlists change. Default `2s`.
    /// An origin `Cache-Control: max-age` (or `s-maxage`) overrides it; `no-store`, `no-cache`
    /// and `private` are not cached.
    #[serde(with = "humantime_serde")]
    pub manifest_ttl: Duration,
    /// How long a cached segment is fresh; segments are immutable. Default `1h`. Overridden by
    /// an origin `Cache-Control` likewise.
    #[serde(with = "humantime_serde")]
    pub segment_ttl: Duration,
    /// How long past its freshness a cached copy may still be served when the origin fails
    /// (stale-if-error, with `Warning: 110` and `Age`); `0s` = never. Default `1d`.
    #[serde(with = "humantime_serde")]
    pub stale_if_error: Duration,
    /// Slices filling from seeders or the origin at once, at most (each holds a slice buffer:
    /// `max_fills × slice` bounds the memory of fills in progress). A fill that finds none free
    /// waits up to 10 s, then fails as an outage (a stale copy answers if there is one).
    /// Default 64.
    pub max_fills: usize,
    /// Longest a slice may take to fill, resumptions included (an upstream that trickles is cut
    /// and the slice fails). Default `2m` (a 4 MiB slice at 35 KB/s).
    #[serde(with = "humantime_serde")]
    pub fill_timeout: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            memory: ByteSize::mib(256),
            slice: ByteSize::mib(4),
            manifest_ttl: Duration::from_secs(2),
            segment_ttl: Duration::from_secs(3600),
            stale_if_error: Duration::from_secs(86_400),
            max_fills: 64,
            fill_timeout: Duration::from_secs(120),
        }
    }
}

/// `[disk_cache]`: the disk tier behind memory. Survives restarts (its index is rebuilt from the
/// files at start), writes atomically, verifies a checksum on every read.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct DiskCacheConfig {
    /// Directory of the disk tier; unset = no disk tier. Env `EDGE_DISK_CACHE_PATH`.
    pub path: Option<PathBuf>,
    /// Bytes kept on disk. Env `EDGE_DISK_CACHE_SIZE`. Default 10 GiB.
    pub capacity: ByteSize,
    /// After a write fails (disk full, I/O error), writes pause this long; reads go on. Default `30s`.
    #[serde(with = "humantime_serde")]
    pub write_suspend: Duration,
}

impl Default for DiskCacheConfig {
    fn default() -> Self {
        Self {
            path: None,
            capacity: ByteSize::gib(10),
            write_suspend: Duration::from_secs(30),
        }
    }
}

/// `[seeder]`: the seeder role. A seeder serves the segments under `cache_path` to edges over
/// HTTP, publishes them in the Redis directory, and deletes files past their retention. Names
/// of the seeder deployment this replaces.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SeederConfig {
    /// Adds the seeder to this process's `roles` (the switch of the seeder deployment this
    /// replaces; `roles` says the same). Env `SEEDER_ENABLED`.
    pub enabled: bool,
    /// The segment directory. Env `SEEDER_CACHE_PATH`. Default `.edge-data/seeder`.
    pub cache_path: PathBuf,
    /// Listener edges fetch from. Env `SEEDER_LISTEN`. Default `127.0.0.1:8090`.
    pub listen: SocketAddr,
    /// `host:port` edges use to reach `listen` (published in Redis). Env `SEEDER_ADVERTISE`.
    /// Default: the bound listen address.
    pub advertise: Option<String>,
    /// Id in the directory. Env `SEEDER_ID`. Default: the advertised address.
    pub id: Option<String>,
    /// How often the directory is rescanned and its keys renewed. Default `30s`.
    #[serde(with = "humantime_serde")]
    pub scan_interval: Duration,
    /// TTL of the segment keys; a seeder that stops renewing them disappears. Default `90s`.
    #[serde(with = "humantime_serde")]
    pub key_ttl: Duration,
    /// How often `seeder:<id>` `lastActive` is renewed. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Files not accessed for this long are deleted; `0s` keeps them. Default `7d`.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Fetch segments it lacks from the origin and keep them. Default true.
    pub pull_through: bool,
}

impl Default for SeederConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            cache_path: PathBuf::from(".edge-data/seeder"),
            listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
            advertise: None,
            id: None,
            scan_interval: Duration::from_secs(30),
            key_ttl: Duration::from_secs(90),
            heartbeat_interval: Duration::from_secs(5),
            retention: Duration::from_secs(7 * 86_400),
            pull_through: true,
        }
    }
}

/// `[routing]`: how an edge fetches what its caches miss — seeders first (found in the Redis
/// directory, chosen by consistent hashing among the healthy ones), then the origin.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RoutingConfig {
    /// Route misses to seeders. Default: on when `[redis]` is configured.
    pub seeders: Option<bool>,
    /// Public prefix under which each directory is a stream (`/vod/movies/<id>/...`); the seeder
    /// uses the same. Default `/vod/movies/`.
    pub streams_prefix: String,
    /// One seeder attempt, body included. Default `2s`.
    #[serde(with = "humantime_serde")]
    pub seeder_timeout: Duration,
    /// Start the next seeder (or the origin) when the current one has not answered by then.
    /// Default `150ms`.
    #[serde(with = "humantime_serde")]
    pub hedge_delay: Duration,
    /// Seeders tried before the origin. Default 2.
    pub max_seeders: usize,
    /// How long directory answers are cached locally. Default `1s`.
    #[serde(with = "humantime_serde")]
    pub lookup_cache_ttl: Duration,
    /// Seeders whose heartbeat is older are not used. Default `15s`.
    #[serde(with = "humantime_serde")]
    pub heartbeat_stale: Duration,
    /// How often unhealthy seeders are probed. Default `1s`.
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
    /// A segment no seeder holds is fetched through its consistent-hash seeder, which keeps it.
    /// Default true.
    pub pull_through_on_miss: bool,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            seeders: None,
            streams_prefix: "/vod/movies/".into(),
            seeder_timeout: Duration::from_secs(2),
            hedge_delay: Duration::from_millis(150),
            max_seeders: 2,
            lookup_cache_ttl: Duration::from_secs(1),
            heartbeat_stale: Duration::from_secs(15),
            probe_interval: Duration::from_secs(1),
            pull_through_on_miss: true,
        }
    }
}

impl RoutingConfig {
    /// Whether misses go to seeders.
    pub fn uses_seeders(&self, cfg: &EdgeConfig) -> bool {
        self.seeders.unwrap_or(cfg.redis.host.is_some())
    }
}

pub(crate) fn validate(cfg: &EdgeConfig, bad: &mut dyn FnMut(&str, &str)) {
    let o = &cfg.origin;
    match o.resolved_kind(&cfg.s3) {
        OriginKind::S3 if cfg.s3.bucket.as_deref().is_none_or(str::is_empty) => bad(
            "s3.bucket",
            "required when origin.kind = \"s3\" (env S3_BUCKET_NAME)",
        ),
        OriginKind::Http => match &o.url {
            Some(u) if u.starts_with("http://") || u.starts_with("https://") => {}
            _ => bad(
                "origin.url",
                "an http:// or https:// URL is required for kind = \"http\"",
            ),
        },
        _ => {}
    }
    if cfg.s3.access_key.is_some() != cfg.s3.secret_key.is_some() {
        bad(
            "s3",
            "set both `access_key` and `secret_key` (S3_ACCESS_KEY, S3_SECRET_KEY), or neither",
        );
    }
    if let Some(e) = &cfg.s3.endpoint
        && !(e.starts_with("http://") || e.starts_with("https://"))
    {
        bad("s3.endpoint", "must start with http:// or https://");
    }
    if let Some(p) = &o.strip_prefix
        && !p.is_empty()
        && !p.starts_with('/')
    {
        bad("origin.strip_prefix", "must start with /");
    }
    if o.timeout.is_zero() {
        bad("origin.timeout", "must be greater than zero");
    }
    if o.retries > 10 {
        bad("origin.retries", "at most 10");
    }
    if cfg.cache.slice < ByteSize::kib(64) || cfg.cache.slice > ByteSize::mib(32) {
        bad("cache.slice", "must be between 64 KiB and 32 MiB");
    }
    if cfg.cache.slice > cfg.cache.memory {
        bad("cache.slice", "larger than cache.memory");
    }
    if cfg.cache.max_fills == 0 {
        bad("cache.max_fills", "must be at least 1");
    }
    if cfg.cache.fill_timeout < Duration::from_secs(1) {
        bad("cache.fill_timeout", "must be at least 1s");
    }
    if cfg.disk_cache.path.is_some() && cfg.disk_cache.capacity < cfg.cache.slice {
        bad("disk_cache.capacity", "smaller than cache.slice");
    }
    let s = &cfg.seeder;
    if s.scan_interval.is_zero() || s.heartbeat_interval.is_zero() {
        bad(
            "seeder",
            "scan_interval and heartbeat_interval must be greater than zero",
        );
    }
    if s.key_ttl <= s.scan_interval {
        bad(
            "seeder.key_ttl",
            "must be longer than seeder.scan_interval, or keys lapse between scans",
        );
    }
    if s.id
        .as_deref()
        .is_some_and(|i| i.is_empty() || i.contains(char::is_whitespace))
    {
        bad("seeder.id", "must be non-empty without spaces");
    }
    let r = &cfg.routing;
    if !r.streams_prefix.starts_with('/') || !r.streams_prefix.ends_with('/') {
        bad("routing.streams_prefix", "must start and end with /");
    }
    if r.seeders == Some(true) && cfg.redis.host.is_none() {
        bad(
            "routing.seeders",
            "needs [redis] (the seeder directory lives there)",
        );
    }
    if r.seeder_timeout.is_zero() || r.probe_interval.is_zero() {
        bad(
            "routing",
            "seeder_timeout and probe_interval must be greater than zero",
        );
    }
    if r.max_seeders == 0 {
        bad(
            "routing.max_seeders",
            "must be at least 1 (set seeders = false to skip seeders)",
        );
    }
    if cfg
        .server
        .admin_token
        .as_deref()
        .is_some_and(|t| t.len() < 16)
    {
        bad("server.admin_token", "must be at least 16 bytes");
    }
}
