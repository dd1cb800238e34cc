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

impl RedisSettings {
    /// A Redis on `127.0.0.1:port` without password, every limit set to `timeout`, retrying
    /// 100 ms after a failed connection: a local or test Redis.
    pub fn loopback(port: u16, timeout: Duration) -> Self {
        Self {
            host: "127.0.0.1".into(),
            port,
            password: None,
            db: 0,
            timeout,
            connect_timeout: timeout,
            retry_after: Duration::from_millis(100),
        }
    }
}

/// The shared scope on Redis. Connects on first use, reconnects by itself (the connection manager),
/// and never lets a caller wait longer than its timeout.
pub struct RedisStore {
    client: redis::Client,
    settings: RedisSettings,
    link: Arc<Link>,
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

/// The connection, shared with the task that establishes it.
#[derive(Default)]
struct Link {
    conn: parking_lot::Mutex<Option<ConnectionManager>>,
    /// Whether an attempt is running, and when the last one failed.
    attempt: parking_lot::Mutex<(bool, Option<Instant>)>,
    done: tokio::sync::Notify,
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
            link: Arc::default(),
            cas: Arc::new(Script::new(CAS)),
            incr: Arc::new(Script::new(INCR)),
        })
    }

    /// The connection, established by a background task on first use: a caller waits for it at
    /// most `connect_timeout` (and, through its own limit, usually less), but the attempt goes on
    /// without it, so a Redis slow to accept is connected to eventually rather than never.
    async fn connection(&self) -> Result<ConnectionManager, KvError> {
        if let Some(c) = self.link.conn.lock().clone() {
            return Ok(c);
        }
        let done = self.link.done.notified();
        let mut done = std::pin::pin!(done);
        done.as_mut().enable();
        {
            let mut attempt = self.link.attempt.lock();
            if let Some(c) = self.link.conn.lock().clone() {
                return Ok(c);
            }
            if !attempt.0 {
                if attempt
                    .1
                    .is_some_and(|t| t.elapsed() < self.settings.retry_after)
                {
                    return Err(KvError::Unavailable("redis unreachable (retrying)".into()));
                }
                attempt.0 = true;
                self.spawn_connect();
            }
        }
        let _ = tokio::time::timeout(self.settings.connect_timeout, done).await;
        self.link
            .conn
            .lock()
            .clone()
            .ok_or_else(|| KvError::Unavailable("redis unreachable".into()))
    }

    fn spawn_connect(&self) {
        let (client, link, settings) = (
            self.client.clone(),
            self.link.clone(),
            self.settings.clone(),
        );
        tokio::spawn(async move {
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(settings.connect_timeout))
                .set_response_timeout(Some(settings.timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_secs(1));
            let attempt = tokio::time::timeout(
                settings.connect_timeout,
                client.get_connection_manager_with_config(config),
            )
            .await;
            let failed = match attempt {
                Ok(Ok(c)) => {
                    *link.conn.lock() = Some(c);
                    tracing::info!(host = %settings.host, port = settings.port, "connected to redis");
                    None
                }
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("connect timed out".to_owned()),
            };
            if let Some(error) = &failed {
                tracing::warn!(host = %settings.host, port = settings.port, %error, "redis unreachable");
            }
            *link.attempt.lock() = (false, failed.map(|_| Instant::now()));
            link.done.notify_waiters();
        });
    }

    /// Runs `op` on the connection, bounded by the command timeout: any Redis command for crates
    /// that keep their own keys in the same Redis (the seeder directory). Request errors (a wrong
    /// type) are [`KvError::Invalid`]; everything else, including a slow Redis, is
    /// [`KvError::Unavailable`].
    pub async fn run<T>(
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

    /// A new connection in subscriber mode (pub/sub needs its own), established within
    /// `connect_timeout`.
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub, KvError> {
        match tokio::time::timeout(
            self.settings.connect_timeout,
            self.client.get_async_pubsub(),
        )
        .await
        {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(e)) => Err(KvError::Unavailable(e.to_string())),
            Err(_) => Err(KvError::Unavailable("redis connect timed out".into())),
        }
    }

    /// Where this store connects (`host:port`), for logs and `/health`.
    pub fn describe(&self) -> String {
        format!("redis://{}:{}", self.settings.host, self.settings.port)
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
