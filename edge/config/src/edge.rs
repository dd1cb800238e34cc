use crate::{
    ConfigError, Env, Errors,
    delivery::{CacheConfig, DiskCacheConfig, OriginConfig, RoutingConfig, S3Config, SeederConfig},
    roles::{Role, Roles},
    section,
    streaming::{EventsConfig, KafkaConfig, StreamApiConfig},
};
use bytesize::ByteSize;
use serde::Deserialize;
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

/// The edge file (`edge.toml`). Every section and field is optional; the defaults run the embedded
/// single-machine edge from the repository root: demo origin on disk, signed-URL policy, no external
/// service.
#[derive(Debug, Clone, Default)]
pub struct EdgeConfig {
    /// The file this was loaded from (`<defaults>` when none).
    pub source: PathBuf,
    /// What this process runs (`roles = ["edge", "seeder"]`, env `EDGE_ROLES`, `edge serve
    /// --role`). Default `["edge"]`; `seeder.enabled = true` adds the seeder.
    pub roles: Roles,
    /// Listeners, data directory, draining.
    pub server: ServerConfig,
    /// TLS certificate for the TLS listeners.
    pub tls: TlsConfig,
    /// Where objects come from.
    pub origin: OriginConfig,
    /// The S3-compatible origin, when `origin.kind` is `s3`.
    pub s3: S3Config,
    /// The in-memory segment cache.
    pub cache: CacheConfig,
    /// The disk tier of the cache (off unless `path` is set).
    pub disk_cache: DiskCacheConfig,
    /// The seeder role of this process (off unless `enabled`).
    pub seeder: SeederConfig,
    /// How an edge routes misses to seeders.
    pub routing: RoutingConfig,
    /// The WebAssembly policy runtime.
    pub wasm: WasmConfig,
    /// Which policies file binds routes to policy chains.
    pub policies: PoliciesRef,
    /// The key and defaults used to sign URLs (`edge sign-url`, the start-up demo URL).
    pub signed_url: SignedUrlConfig,
    /// Redis, shared by every edge (policy `kv` shared scope). Absent: in-process memory.
    pub redis: RedisConfig,
    /// The streaming API (start / progress / stop).
    pub stream_api: StreamApiConfig,
    /// The event spool.
    pub events: EventsConfig,
    /// Where events are shipped.
    pub kafka: KafkaConfig,
    /// The signaling role's tracker.
    pub signaling: crate::SignalingConfig,
    /// The environment at load: what the policies file's `${VAR}` placeholders resolve against.
    pub vars: crate::Vars,
}

/// `[server]`: listeners and process behaviour.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ServerConfig {
    /// Plain-text listeners: HTTP/1.1 and HTTP/2 with prior knowledge (h2c). Env `EDGE_LISTEN`
    /// (comma-separated). Default `["127.0.0.1:8080"]`. Port 0 picks a free port.
    pub listen: Vec<SocketAddr>,
    /// TLS listeners: HTTP/1.1 and HTTP/2 by ALPN. Env `EDGE_TLS_LISTEN`. Default `["127.0.0.1:8443"]`.
    pub tls_listen: Vec<SocketAddr>,
    /// Admin listener: `/health`, `/health/live`, `/health/ready`, `/metrics`. Env
    /// `EDGE_ADMIN_LISTEN`. Default `127.0.0.1:9090`.
    pub admin_listen: SocketAddr,
    /// Worker threads of the runtime serving every listener. Env `EDGE_THREADS`. Default 2.
    pub threads: usize,
    /// Where the edge keeps its state: development secret, generated certificate. Env
    /// `EDGE_DATA_DIR`. Default `.edge-data`.
    pub data_dir: PathBuf,
    /// How long a draining edge (SIGTERM) waits for in-flight requests. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Base URL viewers use to reach this edge, for the URLs it prints and hands out
    /// (`https://edge.example.com`). Env `EDGE_PUBLIC_URL`. Default: the first plain listener.
    pub public_url: Option<String>,
    /// A manifest path whose signed URL is logged at start, ready to play; empty for none.
    /// Default `/vod/movies/demo/index.m3u8`.
    pub demo_stream: String,
    /// `Access-Control-Allow-Origin` sent on every viewer response (browser players such as hls.js
    /// fetch cross-origin), with `OPTIONS` preflights answered; empty disables CORS. Tokens travel in
    /// the query, never in cookies, so `*` is safe. Default `*`.
    pub cors_allow_origin: String,
    /// Bearer token required by the admin endpoints that change state (`POST /admin/purge`,
    /// `POST /admin/policies/reload`): `Authorization: Bearer <token>`. Env `EDGE_ADMIN_TOKEN`.
    /// When unset, purging is refused and reloads are allowed from the admin listener as before.
    pub admin_token: Option<String>,
    /// From a connection's accept to the end of its first request's head (HTTP/2: its first
    /// stream); a reused HTTP/1.1 connection has `keepalive_timeout` to start the next request
    /// and this long again to finish its head. Missed: the connection is closed. Default `10s`.
    /// (The TLS handshake is bounded by pingora, 60 s, before this starts counting.)
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Idle time after which a keep-alive HTTP/1.1 connection, or an HTTP/2 connection without
    /// open streams, is closed. Default `60s`.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// Longest wait for the next piece of a request body being read (stalled uploads are cut).
    /// Default `30s`.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Longest wait for a client to take the next piece of a response; a client that stops
    /// reading is cut (a paused progressive download resumes with a range request). Default
    /// `60s` (nginx's `send_timeout`).
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
    /// Open connections of one role's listeners at most; more are closed at accept. Default
    /// 10000 (keep it under the process's open-file limit).
    pub max_connections: usize,
    /// Open connections from one client (an IPv4 address, an IPv6 /64) at most. Default 256.
    pub max_connections_per_client: usize,
    /// Largest request head (request line and headers; HTTP/2 header list): 431 above it.
    /// Default `64 KiB`.
    pub max_header_bytes: ByteSize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
            tls_listen: vec![SocketAddr::from(([127, 0, 0, 1], 8443))],
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            threads: 2,
            data_dir: PathBuf::from(".edge-data"),
            drain_timeout: Duration::from_secs(10),
            public_url: None,
            demo_stream: "/vod/movies/demo/index.m3u8".into(),
            cors_allow_origin: "*".into(),
            admin_token: None,
            header_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_connections_per_client: 256,
            max_header_bytes: ByteSize::kib(64),
        }
    }
}

/// `[tls]`: certificate and key (PEM). When both are absent a self-signed certificate for
/// `localhost` and `127.0.0.1` is generated into the data directory, for development only.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct TlsConfig {
    /// Certificate chain, PEM.
    pub cert: Option<PathBuf>,
    /// Private key, PEM.
    pub key: Option<PathBuf>,
}

/// `[wasm]`: limits shared by every policy instance (a policy may lower its own).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct WasmConfig {
    /// Wall-clock budget of one `decide` call, enforced by epoch interruption. Default `5ms`.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
    /// Most linear memory one policy instance may grow to. Default 16 MiB.
    pub memory_limit: ByteSize,
    /// Most policy instances alive at once across all policies (pooling allocator slots). Default 1000.
    pub max_instances: u32,
    /// How many requests one instance serves before it is replaced, in `isolation = "pooled"` mode.
    /// Default 10000.
    pub max_reuse: u32,
    /// Ed25519 public keys (PEM files, `edge policy keygen`). When any is set, every module must
    /// carry a signature (`MODULE.sig`, `edge policy sign`) by one of them, or it is refused at load.
    pub trusted_keys: Vec<PathBuf>,
    /// Most keys each in-process key-value scope holds (policy `kv` local scope, and the shared
    /// scope without Redis); keys and values together are also held to 1 KiB per key of this
    /// (100000 → ~100 MiB per scope), so large values cannot multiply. Default 100000.
    pub kv_max_entries: usize,
}

impl Default for WasmConfig {
    fn default() -> Self {
        Self {
            deadline: Duration::from_millis(5),
            memory_limit: ByteSize::mib(16),
            max_instances: 1000,
            max_reuse: 10_000,
            trusted_keys: Vec::new(),
            kv_max_entries: 100_000,
        }
    }
}

/// `[policies]`: where the route → policy chain bindings are.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct PoliciesRef {
    /// The policies file. Env `EDGE_POLICIES`. Default `policies/default.toml`.
    pub file: PathBuf,
    /// How often the policies file, its modules, signatures and config files are checked for
    /// changes (hot reload). `0s` turns watching off (`POST /admin/policies/reload` still works).
    /// Default `1s`.
    #[serde(with = "humantime_serde")]
    pub watch_interval: Duration,
}

impl Default for PoliciesRef {
    fn default() -> Self {
        Self {
            file: PathBuf::from("policies/default.toml"),
            watch_interval: Duration::from_secs(1),
        }
    }
}

/// `[redis]`: the Redis every edge shares (policy key-value shared scope). Without `host`, the
/// edge needs no Redis and keeps that state in its own memory.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RedisConfig {
    /// Host name or address. Env `REDIS_HOST`. Default none (no Redis).
    pub host: Option<String>,
    /// Port. Env `REDIS_PORT`. Default 6379.
    pub port: u16,
    /// Password (`AUTH`). Env `REDIS_PASSWORD`.
    pub password: Option<String>,
    /// Database number. Default 0.
    pub db: i64,
    /// Bound on one command, round trip included; a slower Redis counts as unavailable.
    /// Default `50ms`.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Bound on connecting. Default `1s`.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            host: None,
            port: 6379,
            password: None,
            db: 0,
            timeout: Duration::from_millis(50),
            connect_timeout: Duration::from_secs(1),
        }
    }
}

/// `[signed_url]`: the URL-signing key and defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SignedUrlConfig {
    /// HMAC key, at least 16 bytes. Env `SIGNED_URL_SECRET`. When unset, a random development key
    /// is generated once and kept in the data directory (and a warning is logged).
    pub secret: Option<String>,
    /// Lifetime of a signed URL in seconds. Env `SIGNED_URL_EXPIRATION`. Default 3600.
    pub expiration: u64,
    /// Query parameter that carries the token. Default `token`.
    pub param: String,
}

impl Default for SignedUrlConfig {
    fn default() -> Self {
        Self {
            secret: None,
            expiration: 3600,
            param: "token".into(),
        }
    }
}

/// The top-level `roles` list (every problem recorded; the default when it has any).
fn take_roles(file: &Path, table: &mut toml::Table, errors: &mut Errors) -> Roles {
    let Some(value) = table.remove("roles") else {
        return Roles::default();
    };
    let Some(names) = section::decode::<Vec<String>>(file, "roles", value, errors) else {
        return Roles::default();
    };
    Roles::parse(&names).unwrap_or_else(|problems| {
        for p in problems {
            errors.push(ConfigError::new(file, "roles", p));
        }
        Roles::default()
    })
}

impl EdgeConfig {
    /// Loads `path` (or the defaults when `None`), applies environment overrides and validates.
    pub fn load(path: Option<&Path>, env: &dyn Env) -> Result<Self, Errors> {
        let (cfg, errors) = Self::load_partial(path, env);
        errors.into_result(cfg)
    }

    /// Like [`EdgeConfig::load`], but also returns the config when there are errors: every
    /// section or field in error is left at its default. For tools that check further (the
    /// policies file named by a valid `[policies]` section) before reporting.
    pub fn load_partial(path: Option<&Path>, env: &dyn Env) -> (Self, Errors) {
        match path {
            None => Self::parse("<defaults>".as_ref(), "", env),
            Some(p) => match std::fs::read_to_string(p) {
                Ok(text) => Self::parse(p, &text, env),
                Err(e) => {
                    let errors = Errors(vec![ConfigError::new(p, "", format!("cannot read: {e}"))]);
                    (
                        Self {
                            source: p.to_path_buf(),
                            ..Self::default()
                        },
                        errors,
                    )
                }
            },
        }
    }

    /// Parses `text` as if read from `file`, applies environment overrides and validates.
    pub fn from_toml_str(
        file: impl AsRef<Path>,
        text: &str,
        env: &dyn Env,
    ) -> Result<Self, Errors> {
        let (cfg, errors) = Self::parse(file.as_ref(), text, env);
        errors.into_result(cfg)
    }

    fn parse(file: &Path, text: &str, env: &dyn Env) -> (Self, Errors) {
        let mut errors = Errors::default();
        let mut table = section::parse_table(file, text, &mut errors).unwrap_or_default();
        crate::env::apply(env, &mut table, &mut errors, file.is_file());
        let roles = take_roles(file, &mut table, &mut errors);
        let mut cfg = Self {
            source: file.to_path_buf(),
            roles,
            server: section::take(file, &mut table, "server", &mut errors),
            tls: section::take(file, &mut table, "tls", &mut errors),
            origin: section::take(file, &mut table, "origin", &mut errors),
            s3: section::take(file, &mut table, "s3", &mut errors),
            cache: section::take(file, &mut table, "cache", &mut errors),
            disk_cache: section::take(file, &mut table, "disk_cache", &mut errors),
            seeder: section::take(file, &mut table, "seeder", &mut errors),
            routing: section::take(file, &mut table, "routing", &mut errors),
            wasm: section::take(file, &mut table, "wasm", &mut errors),
            policies: section::take(file, &mut table, "policies", &mut errors),
            signed_url: section::take(file, &mut table, "signed_url", &mut errors),
            redis: section::take(file, &mut table, "redis", &mut errors),
            stream_api: section::take(file, &mut table, "stream_api", &mut errors),
            events: section::take(file, &mut table, "events", &mut errors),
            kafka: section::take(file, &mut table, "kafka", &mut errors),
            signaling: section::take(file, &mut table, "signaling", &mut errors),
            vars: crate::Vars(env.all()),
        };
        section::reject_rest(file, table, &mut errors);
        // `seeder.enabled` adds to the file's roles; `EDGE_ROLES` (and `--role`) replace both.
        if cfg.seeder.enabled && env.var("EDGE_ROLES").is_none() {
            cfg.roles.add(Role::Seeder);
        }
        cfg.validate(&mut errors);
        (cfg, errors)
    }

    fn validate(&self, errors: &mut Errors) {
        let mut bad =
            |field: &str, msg: &str| errors.push(ConfigError::new(&self.source, field, msg));
        if self.roles.has(Role::Edge)
            && self.server.listen.is_empty()
            && self.server.tls_listen.is_empty()
        {
            bad(
                "server.listen",
                "the edge role has no listener: set `listen` or `tls_listen` (or leave \"edge\" out of `roles`)",
            );
        }
        if self.server.threads == 0 {
            bad("server.threads", "must be at least 1");
        }
        for (field, value) in [
            ("server.header_timeout", self.server.header_timeout),
            ("server.keepalive_timeout", self.server.keepalive_timeout),
            ("server.body_timeout", self.server.body_timeout),
            ("server.send_timeout", self.server.send_timeout),
        ] {
            if value < Duration::from_secs(1) || value > Duration::from_secs(3600) {
                bad(field, "must be between 1s and 1h");
            }
        }
        if self.server.max_connections == 0 {
            bad("server.max_connections", "must be at least 1");
        }
        if self.server.max_connections_per_client == 0 {
            bad("server.max_connections_per_client", "must be at least 1");
        } else if self.server.max_connections_per_client > self.server.max_connections {
            bad(
                "server.max_connections_per_client",
                "is larger than server.max_connections",
            );
        }
        if self.server.max_header_bytes < ByteSize::kib(1)
            || self.server.max_header_bytes > ByteSize::mib(1)
        {
            bad(
                "server.max_header_bytes",
                "must be between 1 KiB and 1 MiB (the most a head may take)",
            );
        }
        if let Some(url) = &self.server.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            bad("server.public_url", "must start with http:// or https://");
        }
        if !self.server.demo_stream.is_empty() && !self.server.demo_stream.starts_with('/') {
            bad(
                "server.demo_stream",
                "must be an absolute path starting with /",
            );
        }
        if self.server.cors_allow_origin.contains(['\r', '\n', ',']) {
            bad(
                "server.cors_allow_origin",
                "must be one origin (`https://player.example`) or `*`",
            );
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            bad("tls", "set both `cert` and `key`, or neither");
        }
        for (field, p) in [("tls.cert", &self.tls.cert), ("tls.key", &self.tls.key)] {
            if let Some(p) = p
                && !self.resolve(p).is_file()
            {
                bad(field, &format!("file {} does not exist", p.display()));
            }
        }
        if self.wasm.deadline < Duration::from_millis(1)
            || self.wasm.deadline > Duration::from_secs(10)
        {
            bad("wasm.deadline", "must be between 1ms and 10s");
        }
        if self.wasm.memory_limit < ByteSize::kib(64) || self.wasm.memory_limit > ByteSize::gib(1) {
            bad("wasm.memory_limit", "must be between 64 KiB and 1 GiB");
        }
        if self.wasm.max_instances == 0 {
            bad("wasm.max_instances", "must be at least 1");
        }
        if self.wasm.max_reuse == 0 {
            bad("wasm.max_reuse", "must be at least 1");
        }
        for (i, k) in self.wasm.trusted_keys.iter().enumerate() {
            if !self.resolve(k).is_file() {
                bad(
                    &format!("wasm.trusted_keys[{i}]"),
                    &format!("file {} does not exist", k.display()),
                );
            }
        }
        if self.wasm.kv_max_entries == 0 {
            bad("wasm.kv_max_entries", "must be at least 1");
        }
        if self.redis.host.as_deref().is_some_and(str::is_empty) {
            bad("redis.host", "must not be empty");
        }
        if self.redis.timeout.is_zero() || self.redis.connect_timeout.is_zero() {
            bad("redis", "timeouts must be greater than zero");
        }
        crate::delivery::validate(self, &mut bad);
        crate::streaming::validate(self, &mut bad);
        crate::signaling::validate(self, &mut bad);
        if let Some(s) = &self.signed_url.secret
            && s.len() < 16
        {
            bad("signed_url.secret", "must be at least 16 bytes");
        }
        if self.signed_url.expiration == 0 {
            bad("signed_url.expiration", "must be at least 1 second");
        }
        if self.signed_url.param.is_empty()
            || !self
                .signed_url
                .param
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            bad(
                "signed_url.param",
                "must be a non-empty name of letters, digits, `_` or `-`",
            );
        }
    }

    /// Whether this process runs `role`.
    pub fn runs(&self, role: Role) -> bool {
        self.roles.has(role)
    }

    /// Resolves `path` relative to the directory of the edge file (or the working directory).
    pub fn resolve(&self, path: &Path) -> PathBuf {
        match self.source.parent() {
            Some(dir) if path.is_relative() && self.source.is_file() => dir.join(path),
            _ => path.to_path_buf(),
        }
    }
}
