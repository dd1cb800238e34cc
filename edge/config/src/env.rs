use std::collections::HashMap;

/// Where environment overrides come from. Tests pass a [`MapEnv`] so they never touch the process
/// environment.
pub trait Env {
    /// The value of variable `name`, if set and non-empty.
    fn var(&self, name: &str) -> Option<String>;

    /// Every variable (for the policies file's `${VAR}` placeholders).
    fn all(&self) -> HashMap<String, String>;
}

/// The variables a policies file's `${VAR}` placeholders resolve against (captured from the
/// [`Env`] at load). `Debug` prints names only: values are secrets (`JWT_SECRET_KEY`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Vars(pub HashMap<String, String>);

impl std::fmt::Debug for Vars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.0.keys().collect();
        names.sort();
        f.debug_tuple("Vars").field(&names).finish()
    }
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }

    fn all(&self) -> HashMap<String, String> {
        std::env::vars().collect()
    }
}

/// A fixed set of variables.
#[derive(Debug, Clone, Default)]
pub struct MapEnv(pub HashMap<String, String>);

impl MapEnv {
    /// Adds a variable.
    pub fn with(mut self, name: &str, value: &str) -> Self {
        self.0.insert(name.to_owned(), value.to_owned());
        self
    }
}

impl Env for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).filter(|v| !v.is_empty()).cloned()
    }

    fn all(&self) -> HashMap<String, String> {
        self.0.clone()
    }
}

/// How a variable's text becomes a TOML value.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Str,
    /// A path: relative paths are relative to the working directory, not to the edge file.
    Path,
    Int,
    /// Comma-separated list of strings.
    List,
    /// `true`/`false` (also `1`/`0`, `yes`/`no`).
    Bool,
}

/// Environment variables that override fields of the edge file: (variable, section, key, kind).
/// Names follow the deployments the edge replaces where one existed.
/// An empty section is the top level of the file.
pub(crate) const OVERRIDES: &[(&str, &str, &str, Kind)] = &[
    ("EDGE_ROLES", "", "roles", Kind::List),
    ("EDGE_LISTEN", "server", "listen", Kind::List),
    ("EDGE_TLS_LISTEN", "server", "tls_listen", Kind::List),
    ("EDGE_ADMIN_LISTEN", "server", "admin_listen", Kind::Str),
    ("EDGE_DATA_DIR", "server", "data_dir", Kind::Path),
    ("EDGE_THREADS", "server", "threads", Kind::Int),
    ("EDGE_PUBLIC_URL", "server", "public_url", Kind::Str),
    ("EDGE_ORIGIN_ROOT", "origin", "root", Kind::Path),
    ("EDGE_ORIGIN_URL", "origin", "url", Kind::Str),
    ("EDGE_ADMIN_TOKEN", "server", "admin_token", Kind::Str),
    ("S3_ENDPOINT_URL", "s3", "endpoint", Kind::Str),
    ("S3_BUCKET_NAME", "s3", "bucket", Kind::Str),
    ("S3_REGION", "s3", "region", Kind::Str),
    ("S3_ACCESS_KEY", "s3", "access_key", Kind::Str),
    ("S3_SECRET_KEY", "s3", "secret_key", Kind::Str),
    ("EDGE_DISK_CACHE_PATH", "disk_cache", "path", Kind::Path),
    ("EDGE_DISK_CACHE_SIZE", "disk_cache", "capacity", Kind::Str),
    ("SEEDER_ENABLED", "seeder", "enabled", Kind::Bool),
    ("SEEDER_CACHE_PATH", "seeder", "cache_path", Kind::Path),
    ("SEEDER_LISTEN", "seeder", "listen", Kind::Str),
    ("SEEDER_ADVERTISE", "seeder", "advertise", Kind::Str),
    ("SEEDER_ID", "seeder", "id", Kind::Str),
    ("NODE_ID", "signaling", "node_id", Kind::Str),
    ("SIGNALING_LISTEN", "signaling", "listen", Kind::List),
    (
        "SIGNALING_TLS_LISTEN",
        "signaling",
        "tls_listen",
        Kind::List,
    ),
    (
        "KAFKA_CONSUMER_GROUP",
        "signaling",
        "kafka_consumer_group",
        Kind::Str,
    ),
    ("EDGE_CACHE_MEMORY", "cache", "memory", Kind::Str),
    ("EDGE_POLICIES", "policies", "file", Kind::Path),
    ("SIGNED_URL_SECRET", "signed_url", "secret", Kind::Str),
    ("REDIS_HOST", "redis", "host", Kind::Str),
    ("REDIS_PORT", "redis", "port", Kind::Int),
    ("REDIS_PASSWORD", "redis", "password", Kind::Str),
    (
        "REDIS_PROGRESS_TTL",
        "stream_api",
        "progress_ttl",
        Kind::Int,
    ),
    (
        "STREAM_MANIFEST_URLS",
        "stream_api",
        "manifest_urls",
        Kind::Str,
    ),
    ("EDGE_EVENTS_SPOOL", "events", "spool_path", Kind::Path),
    (
        "KAFKA_BOOTSTRAP_SERVERS",
        "kafka",
        "bootstrap_servers",
        Kind::Str,
    ),
    ("ENABLE_KAFKA", "kafka", "enabled", Kind::Bool),
    ("STREAMING_TOPIC_PREFIX", "kafka", "topic_prefix", Kind::Str),
    (
        "SIGNED_URL_EXPIRATION",
        "signed_url",
        "expiration",
        Kind::Int,
    ),
];

/// Writes every set override into `table`, recording variables whose text has the wrong type.
/// `in_file`: the table comes from an edge file, whose relative paths resolve against its own
/// directory, so relative paths from the environment are made absolute (against the working
/// directory) to keep meaning what the operator typed.
pub(crate) fn apply(
    env: &dyn Env,
    table: &mut toml::Table,
    errors: &mut crate::Errors,
    in_file: bool,
) {
    for &(name, section, key, kind) in OVERRIDES {
        let Some(text) = env.var(name) else { continue };
        let value = match kind {
            Kind::Str => toml::Value::String(text),
            Kind::Path => {
                let path = std::path::Path::new(&text);
                let absolute = match std::env::current_dir() {
                    Ok(cwd) if in_file && path.is_relative() => cwd.join(path),
                    _ => path.to_path_buf(),
                };
                toml::Value::String(absolute.display().to_string())
            }
            Kind::List => toml::Value::Array(
                text.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.into()))
                    .collect(),
            ),
            Kind::Bool => match text.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => toml::Value::Boolean(true),
                "false" | "0" | "no" => toml::Value::Boolean(false),
                _ => {
                    errors.push(crate::ConfigError::new(
                        "<environment>",
                        name,
                        format!("expected true or false, got {text:?}"),
                    ));
                    continue;
                }
            },
            Kind::Int => match text.trim().parse::<i64>() {
                Ok(n) => toml::Value::Integer(n),
                Err(_) => {
                    errors.push(crate::ConfigError::new(
                        "<environment>",
                        name,
                        format!("expected an integer, got {text:?}"),
                    ));
                    continue;
                }
            },
        };
        if section.is_empty() {
            table.insert(key.to_owned(), value);
            continue;
        }
        let entry = table
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(t) = entry {
            t.insert(key.to_owned(), value);
        }
    }
}
