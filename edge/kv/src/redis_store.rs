use crate::KvError;
use redis::{AsyncCommands, Script, aio::ConnectionManager};
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// `AUTH` password, if any.
    pub password: Option<String>,
    /// Database number.
    pub db: i64,
    /// Bound on one command, round trip included.
    pub timeout: Duration,
    /// Bound on establishing a connection.
    pub connect_timeout: Duration,
    /// After a failed connection attempt, operations fail fast for this long before the next one.
    pub retry_after: Duration,
}

/// The shared scope on Redis. Connects on first use, reconnects by itself (the connection manager),
/// and never lets a caller wait longer than its timeout.
pub struct RedisStore {
    client: redis::Client,
    settings: RedisSettings,
    conn: parking_lot::Mutex<Option<ConnectionManager>>,
    connecting: tokio::sync::Mutex<Option<Instant>>,
    cas: Arc<Script>,
    incr: Arc<Script>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("host", &self.settings.host)
            .field("port", &self.settings.port)
            .finish_non_exhaustive()
    }
}

const CAS: &str = r"
local cur = redis.call('GET', KEYS[1])
if (ARGV[1] == '0' and cur == false) or (ARGV[1] == '1' and cur == ARGV[2]) then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
  return 1
end
return 0";

const INCR: &str = r"
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return v";

impl RedisStore {
    /// A store for `settings` (no connection yet).
    pub fn new(settings: RedisSettings) -> Result<Self, KvError> {
        let mut handshake = redis::RedisConnectionInfo::default().set_db(settings.db);
        if let Some(p) = &settings.password {
            handshake = handshake.set_password(p);
        }
        let info = redis::IntoConnectionInfo::into_connection_info(redis::ConnectionAddr::Tcp(
            settings.host.clone(),
            settings.port,
        ))
        .map_err(|e| KvError::Invalid(format!("redis settings: {e}")))?
        .set_redis_settings(handshake);
        let client = redis::Client::open(info)
            .map_err(|e| KvError::Invalid(format!("redis settings: {e}")))?;
        Ok(Self {
            client,
            settings,
            conn: parking_lot::Mutex::new(None),
            connecting: tokio::sync::Mutex::new(None),
            cas: Arc::new(Script::new(CAS)),
            incr: Arc::new(Script::new(INCR)),
        })
    }

    async fn connection(&self) -> Result<ConnectionManager, KvError> {
        if let Some(c) = self.conn.lock().clone() {
            return Ok(c);
        }
        let Ok(mut last) =
            tokio::time::timeout(self.settings.connect_timeout, self.connecting.lock()).await
        else {
            return Err(KvError::Unavailable("connecting to redis".into()));
        };
        if let Some(c) = self.conn.lock().clone() {
            return Ok(c);
        }
        if last.is_some_and(|t| t.elapsed() < self.settings.retry_after) {
            return Err(KvError::Unavailable("redis unreachable (retrying)".into()));
        }
        *last = Some(Instant::now());
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.settings.connect_timeout))
            .set_response_timeout(Some(self.settings.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let attempt = tokio::time::timeout(
            self.settings.connect_timeout,
            self.client.get_connection_manager_with_config(config),
        )
        .await;
        match attempt {
            Ok(Ok(c)) => {
                *self.conn.lock() = Some(c.clone());
                tracing::info!(host = %self.settings.host, port = self.settings.port, "connected to redis");
                Ok(c)
            }
            Ok(Err(e)) => {
                tracing::warn!(host = %self.settings.host, port = self.settings.port, error = %e, "redis unreachable");
                Err(KvError::Unavailable(e.to_string()))
            }
            Err(_) => Err(KvError::Unavailable("redis connect timed out".into())),
        }
    }

    async fn run<T>(
        &self,
        op: impl AsyncFnOnce(ConnectionManager) -> redis::RedisResult<T>,
    ) -> Result<T, KvError> {
        let conn = self.connection().await?;
        match tokio::time::timeout(self.settings.timeout, op(conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if is_request_error(&e) => Err(KvError::Invalid(e.to_string())),
            Ok(Err(e)) => Err(KvError::Unavailable(e.to_string())),
            Err(_) => Err(KvError::Unavailable("redis timed out".into())),
        }
    }

    pub(crate) async fn get(&self, key: &str) -> Result<Option<String>, KvError> {
        self.run(async |mut c| c.get(key).await).await
    }

    pub(crate) async fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<(), KvError> {
        let ms = millis(ttl);
        self.run(async |mut c| c.pset_ex(key, value, ms).await)
            .await
    }

    pub(crate) async fn increment(
        &self,
        key: &str,
        delta: i64,
        ttl: Duration,
    ) -> Result<i64, KvError> {
        let script = self.incr.clone();
        let ms = millis(ttl);
        self.run(async |mut c| {
            script
                .key(key)
                .arg(delta)
                .arg(ms)
                .invoke_async(&mut c)
                .await
        })
        .await
    }

    pub(crate) async fn compare_and_set(
        &self,
        key: &str,
        expected: Option<&str>,
        value: &str,
        ttl: Duration,
    ) -> Result<bool, KvError> {
        let script = self.cas.clone();
        let ms = millis(ttl);
        let (flag, exp) = match expected {
            None => ("0", ""),
            Some(e) => ("1", e),
        };
        let done: i64 = self
            .run(async |mut c| {
                script
                    .key(key)
                    .arg(flag)
                    .arg(exp)
                    .arg(value)
                    .arg(ms)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(done == 1)
    }
}

/// Errors caused by the request (a value that is not an integer), not by Redis being unwell.
fn is_request_error(e: &redis::RedisError) -> bool {
    matches!(
        e.kind(),
        redis::ErrorKind::Client
            | redis::ErrorKind::UnexpectedReturnType
            | redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError)
    )
}

fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}
