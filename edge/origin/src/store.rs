use crate::{ByteStream, ObjectInfo, Opened, Origin, OriginError, Tier};
use futures::StreamExt;
use object_store::{
    Attribute, BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt,
    RetryConfig, aws::AmazonS3Builder, http::HttpBuilder, local::LocalFileSystem,
    path::Path as ObjectPath, signer::Signer,
};
use std::{
    ops::Range,
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime},
};

/// How a public path becomes an object key: `strip_prefix` is removed (paths outside it do not
/// exist at this origin), then `key_prefix` is prepended. Both empty by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyMap {
    /// Public path prefix removed before the lookup (`/vod`).
    pub strip_prefix: String,
    /// Prefix added to every key (`media/`).
    pub key_prefix: String,
}

impl KeyMap {
    fn key(&self, path: &str) -> Result<ObjectPath, OriginError> {
        let rest = if self.strip_prefix.is_empty() {
            path
        } else {
            let prefix = self.strip_prefix.trim_end_matches('/');
            match path.strip_prefix(prefix) {
                Some(rest) if rest.starts_with('/') => rest,
                _ => return Err(OriginError::NotFound),
            }
        };
        let rel = rest.trim_start_matches('/');
        let key = format!("{}{rel}", self.key_prefix);
        ObjectPath::parse(&key).map_err(|e| OriginError::InvalidPath(e.to_string()))
    }
}

/// Retries of a remote origin: up to `retries` more attempts after a failed one, waiting
/// `backoff`, then twice as long each time (at most 2 s). Not-found answers are not retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Further attempts after the first.
    pub retries: usize,
    /// Wait before the first retry.
    pub backoff: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            retries: 2,
            backoff: Duration::from_millis(100),
        }
    }
}

/// An S3-compatible object store (AWS, MinIO, Ceph, s3s, ...).
#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    /// Endpoint URL (`http://minio:9000`); `None` for AWS itself.
    pub endpoint: Option<String>,
    /// Bucket.
    pub bucket: String,
    /// Region; `us-east-1` suits most S3-compatible servers.
    pub region: String,
    /// Static credentials; when absent the usual AWS environment chain applies
    /// (`AWS_ACCESS_KEY_ID`, web identity, instance metadata, ...).
    pub access_key: Option<String>,
    /// Secret for `access_key`.
    pub secret_key: Option<String>,
    /// Virtual-hosted-style requests (`bucket.host`) instead of path style (`host/bucket`).
    pub virtual_hosted: bool,
}

/// A plain HTTP server holding the objects at `base_url` + key.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Base URL (`http://origin.internal/media/`).
    pub base_url: String,
}

/// An [`Origin`] over an `object_store` backend.
#[derive(Debug, Clone)]
pub struct StoreOrigin {
    store: Arc<dyn ObjectStore>,
    keys: KeyMap,
    /// Bound on the origin's answer (before the body), retries included.
    deadline: Duration,
    /// Bound on the wait for each chunk of a body.
    chunk_timeout: Duration,
    description: String,
    signer: Option<Arc<dyn Signer>>,
    /// Whether the origin was seen answering a range request with the whole object.
    ignores_range: Arc<std::sync::atomic::AtomicBool>,
}

fn client_options(timeout: Duration) -> ClientOptions {
    ClientOptions::new()
        .with_timeout(timeout)
        .with_connect_timeout(timeout.min(Duration::from_secs(2)))
}

fn retry_config(retry: Retry, timeout: Duration) -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: retry.backoff,
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: retry.retries,
        retry_timeout: deadline(retry, timeout),
    }
}

/// Every attempt's timeout plus the backoff between them.
fn deadline(retry: Retry, timeout: Duration) -> Duration {
    let attempts = u32::try_from(retry.retries)
        .unwrap_or(u32::MAX)
        .saturating_add(1);
    let backoff: Duration = (0..retry.retries.min(16))
        .map(|i| (retry.backoff * 2u32.pow(i as u32)).min(Duration::from_secs(2)))
        .sum();
    timeout.saturating_mul(attempts) + backoff
}

impl StoreOrigin {
    /// A local-filesystem origin rooted at `root` (which must exist).
    pub fn local(root: &Path, timeout: Duration) -> Result<Self, OriginError> {
        let canonical = std::fs::canonicalize(root).map_err(|e| {
            OriginError::Unavailable(format!("origin root {}: {e}", root.display()))
        })?;
        let store = LocalFileSystem::new_with_prefix(&canonical)
            .map_err(|e| OriginError::Unavailable(e.to_string()))?;
        Ok(Self::new(
            Arc::new(store),
            timeout,
            format!("fs:{}", canonical.display()),
        ))
    }

    /// An S3-compatible origin. Builds the client only; nothing is contacted until a read.
    pub fn s3(s3: &S3Settings, timeout: Duration, retry: Retry) -> Result<Self, OriginError> {
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&s3.bucket)
            .with_region(&s3.region)
            .with_virtual_hosted_style_request(s3.virtual_hosted)
            .with_client_options(client_options(timeout))
            .with_retry(retry_config(retry, timeout));
        if let Some(endpoint) = &s3.endpoint {
            b = b
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        if let (Some(key), Some(secret)) = (&s3.access_key, &s3.secret_key) {
            b = b.with_access_key_id(key).with_secret_access_key(secret);
        }
        let store = Arc::new(
            b.build()
                .map_err(|e| OriginError::Unavailable(format!("s3 settings: {e}")))?,
        );
        let at = s3.endpoint.as_deref().unwrap_or("aws");
        Ok(Self {
            deadline: deadline(retry, timeout),
            signer: Some(store.clone()),
            ignores_range: Arc::default(),
            ..Self::new(store, timeout, format!("s3://{}@{at}", s3.bucket))
        })
    }

    /// An origin over a plain HTTP server.
    pub fn http(http: &HttpSettings, timeout: Duration, retry: Retry) -> Result<Self, OriginError> {
        let store = HttpBuilder::new()
            .with_url(&http.base_url)
            .with_client_options(client_options(timeout).with_allow_http(true))
            .with_retry(retry_config(retry, timeout))
            .build()
            .map_err(|e| OriginError::Unavailable(format!("http origin settings: {e}")))?;
        Ok(Self {
            deadline: deadline(retry, timeout),
            ..Self::new(Arc::new(store), timeout, http.base_url.clone())
        })
    }

    /// An origin over any `object_store` backend.
    pub fn new(store: Arc<dyn ObjectStore>, timeout: Duration, description: String) -> Self {
        Self {
            store,
            keys: KeyMap::default(),
            deadline: timeout,
            chunk_timeout: timeout,
            description,
            signer: None,
            ignores_range: Arc::default(),
        }
    }

    /// A presigned `GET` URL (SigV4 query string) for the public `path`, valid for `expires_in`,
    /// for handing a client the origin itself. Only S3 origins sign; others answer `Unavailable`.
    pub async fn presign_get(
        &self,
        path: &str,
        expires_in: Duration,
    ) -> Result<String, OriginError> {
        let signer = self.signer.as_ref().ok_or_else(|| {
            OriginError::Unavailable(format!("{} cannot presign URLs", self.description))
        })?;
        let key = self.keys.key(path)?;
        signer
            .signed_url(http::Method::GET, &key, expires_in)
            .await
            .map(|u| u.to_string())
            .map_err(map_err)
    }

    /// Maps public paths to keys with `keys`.
    pub fn with_keys(mut self, keys: KeyMap) -> Self {
        if !keys.strip_prefix.is_empty() || !keys.key_prefix.is_empty() {
            self.description = format!(
                "{} ({}* → {}*)",
                self.description, keys.strip_prefix, keys.key_prefix
            );
        }
        self.keys = keys;
        self
    }
}

fn map_err(e: object_store::Error) -> OriginError {
    match e {
        object_store::Error::NotFound { .. } => OriginError::NotFound,
        other => OriginError::Unavailable(other.to_string()),
    }
}

/// How far into an object a slice may start and still be read from a whole-object answer (an
/// origin that ignores `Range`): further, each slice would read this much and more first.
const WHOLE_READ_MAX: u64 = 64 << 20;

/// Whether object_store refused a 200 answered to a range request: the HTTP store says
/// `NotSupported` ("Range request not supported"); the cloud clients' error type is private
/// (known by its words).
fn is_not_partial(e: &object_store::Error) -> bool {
    if matches!(e, object_store::Error::NotSupported { .. }) {
        return true;
    }
    let mut cause: Option<&dyn std::error::Error> = Some(e);
    while let Some(c) = cause {
        if c.to_string().contains("non-partial response") {
            return true;
        }
        cause = c.source();
    }
    false
}

fn map_get_err(e: object_store::Error) -> OriginError {
    match e {
        object_store::Error::Precondition { .. } => OriginError::Changed,
        other => map_err(other),
    }
}

impl StoreOrigin {
    async fn answer(
        &self,
        location: &ObjectPath,
        range: Option<Range<u64>>,
        if_match: Option<&str>,
    ) -> Result<object_store::GetResult, OriginError> {
        let opts = GetOptions {
            range: range.clone().map(|r| {
                if r.end == u64::MAX {
                    GetRange::Offset(r.start)
                } else {
                    GetRange::Bounded(r)
                }
            }),
            if_match: if_match.map(|e| format!("\"{e}\"")),
            ..GetOptions::default()
        };
        match self.store.get_opts(location, opts).await {
            Ok(r) => Ok(r),
            // An HTTP origin that ignores `Range` answers 200 with the whole object; object_store
            // refuses that. Ask for the whole object: `open` reads only the bytes asked for.
            Err(e)
                if range.as_ref().is_some_and(|r| r.start <= WHOLE_READ_MAX)
                    && is_not_partial(&e) =>
            {
                if !self
                    .ignores_range
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    tracing::warn!(
                        origin = %self.description,
                        "the origin ignores Range: every slice reads the object from its start"
                    );
                }
                let whole = GetOptions {
                    if_match: if_match.map(|e| format!("\"{e}\"")),
                    ..GetOptions::default()
                };
                self.store
                    .get_opts(location, whole)
                    .await
                    .map_err(map_get_err)
            }
            // A range of an empty object is unsatisfiable; the object is still there.
            Err(e) if range.as_ref().is_some_and(|r| r.start == 0) => {
                let first = map_get_err(e);
                if first == OriginError::NotFound || first == OriginError::Changed {
                    return Err(first);
                }
                match self.store.head(location).await {
                    Ok(meta) if meta.size == 0 => self
                        .store
                        .get_opts(location, GetOptions::default())
                        .await
                        .map_err(map_get_err),
                    _ => Err(first),
                }
            }
            Err(e) => Err(map_get_err(e)),
        }
    }
}

/// Bytes of one blocking read of a local file.
const FILE_READ: u64 = 1 << 20;

/// The bytes `range` of a local file, one blocking read of up to [`FILE_READ`] bytes at a time.
fn file_body(file: std::fs::File, range: Range<u64>) -> ByteStream {
    futures::stream::unfold(Some((file, range.start)), move |state| async move {
        let (mut file, pos) = state?;
        if pos >= range.end {
            return None;
        }
        let n = (range.end - pos).min(FILE_READ) as usize;
        let read = tokio::task::spawn_blocking(move || {
            use std::io::{Read, Seek, SeekFrom};
            let mut buf = bytes::BytesMut::zeroed(n);
            file.seek(SeekFrom::Start(pos))?;
            file.read_exact(&mut buf)?;
            Ok::<_, std::io::Error>((file, buf.freeze()))
        })
        .await;
        match read {
            Ok(Ok((file, bytes))) => Some((Ok(bytes), Some((file, pos + n as u64)))),
            Ok(Err(e)) => Some((Err(OriginError::Unavailable(e.to_string())), None)),
            Err(e) => Some((Err(OriginError::Unavailable(e.to_string())), None)),
        }
    })
    .boxed()
}

/// `take` bytes of `body` after its first `skip` (the rest is not read: dropping the stream
/// closes the origin's connection).
fn narrow(body: ByteStream, skip: u64, take: u64) -> ByteStream {
    futures::stream::unfold(
        (body, skip, take),
        |(mut body, mut skip, take)| async move {
            if take == 0 {
                return None;
            }
            loop {
                let mut chunk = match body.next().await? {
                    Ok(c) => c,
                    Err(e) => return Some((Err(e), (body, 0, 0))),
                };
                let dropped = skip.min(chunk.len() as u64);
                let _ = chunk.split_to(usize::try_from(dropped).unwrap_or(usize::MAX));
                skip -= dropped;
                if chunk.is_empty() {
                    continue;
                }
                chunk.truncate(usize::try_from(take).unwrap_or(usize::MAX));
                let left = take - chunk.len() as u64;
                return Some((Ok(chunk), (body, skip, left)));
            }
        },
    )
    .boxed()
}

/// `body` with every chunk awaited at most `timeout`.
fn bounded(body: ByteStream, timeout: Duration) -> ByteStream {
    futures::stream::unfold(Some(body), move |state| async move {
        let mut body = state?;
        match tokio::time::timeout(timeout, body.next()).await {
            Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(body))),
            Ok(Some(Err(e))) => Some((Err(e), None)),
            Ok(None) => None,
            Err(_) => Some((Err(OriginError::Timeout(timeout)), None)),
        }
    })
    .boxed()
}

#[async_trait::async_trait]
impl Origin for StoreOrigin {
    async fn open(
        &self,
        path: &str,
        range: Option<Range<u64>>,
        if_match: Option<&str>,
    ) -> Result<Opened, OriginError> {
        let location = self.keys.key(path)?;
        let result = tokio::time::timeout(
            self.deadline,
            self.answer(&location, range.clone(), if_match),
        )
        .await
        .map_err(|_| OriginError::Timeout(self.deadline))??;
        let info = ObjectInfo {
            size: result.meta.size,
            etag: result
                .meta
                .e_tag
                .as_deref()
                .map(|e| e.trim_start_matches("W/").trim_matches('"').to_owned()),
            last_modified: Some(SystemTime::from(result.meta.last_modified)),
            cache_control: result
                .attributes
                .get(&Attribute::CacheControl)
                .map(|v| v.to_string()),
            tier: Tier::Origin,
        };
        let got = result.range.clone();
        // The bytes asked for, within what came (more came from an origin ignoring `Range`).
        let wanted = match &range {
            Some(asked) if info.size > 0 => {
                let end = asked.end.min(info.size);
                if asked.start < got.start || end > got.end || asked.start >= end {
                    return Err(OriginError::Unavailable(format!(
                        "origin answered bytes {got:?} for {asked:?}"
                    )));
                }
                asked.start..end
            }
            _ => got.clone(),
        };
        let body = match result.payload {
            // Local files: large reads on the blocking pool (object_store's own stream reads
            // 8 KiB per blocking hop).
            object_store::GetResultPayload::File(file, _) => file_body(file, got.clone()),
            object_store::GetResultPayload::Stream(s) => s.map(|c| c.map_err(map_get_err)).boxed(),
        };
        // Each chunk bounded (also those `narrow` skips: the skipped prefix of a whole-object
        // answer is not one long wait).
        let body = bounded(body, self.chunk_timeout);
        let body = if wanted == got {
            body
        } else {
            narrow(body, wanted.start - got.start, wanted.end - wanted.start)
        };
        Ok(Opened {
            info,
            range: wanted,
            body,
        })
    }

    async fn check(&self) -> Result<(), OriginError> {
        let probe = async {
            use futures::StreamExt;
            let prefix = (!self.keys.key_prefix.is_empty())
                .then(|| ObjectPath::from(self.keys.key_prefix.trim_end_matches('/')));
            let mut listing = self.store.list(prefix.as_ref());
            match listing.next().await {
                Some(Err(e)) => Err(map_err(e)),
                _ => Ok(()),
            }
        };
        tokio::time::timeout(self.deadline, probe)
            .await
            .map_err(|_| OriginError::Timeout(self.deadline))?
    }

    fn describe(&self) -> String {
        self.description.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_objects_and_reports_missing_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("vod/m1")).unwrap();
        std::fs::write(dir.path().join("vod/m1/index.m3u8"), "#EXTM3U\n").unwrap();
        let origin = StoreOrigin::local(dir.path(), Duration::from_secs(5)).unwrap();
        let obj = origin.get("/vod/m1/index.m3u8").await.unwrap();
        assert_eq!(obj.body, "#EXTM3U\n");
        assert!(obj.etag.is_some() && obj.last_modified.is_some());
        assert_eq!(obj.tier, Tier::Origin);
        assert_eq!(
            origin.get("/vod/m1/nope.ts").await.unwrap_err(),
            OriginError::NotFound
        );
        assert!(matches!(
            origin.get("/vod/../etc/passwd").await,
            Err(OriginError::InvalidPath(_))
        ));
        origin.check().await.unwrap();
        assert_eq!(
            origin
                .get_within("/vod/m1/index.m3u8", 4)
                .await
                .unwrap_err(),
            OriginError::TooLarge(8)
        );
        let mapped = origin.with_keys(KeyMap {
            strip_prefix: "/media".into(),
            key_prefix: "vod/".into(),
        });
        assert_eq!(
            mapped.get("/media/m1/index.m3u8").await.unwrap().body,
            "#EXTM3U\n"
        );
        assert_eq!(
            mapped.get("/vod/m1/index.m3u8").await.unwrap_err(),
            OriginError::NotFound
        );
        assert_eq!(
            mapped.get("/mediax/m1/index.m3u8").await.unwrap_err(),
            OriginError::NotFound
        );
    }

    #[tokio::test]
    async fn ranges_are_read_as_streams_and_an_entity_tag_pins_the_object() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("v")).unwrap();
        let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("v/big.mp4"), &body).unwrap();
        std::fs::write(dir.path().join("v/empty.ts"), b"").unwrap();
        let origin = StoreOrigin::local(dir.path(), Duration::from_secs(5)).unwrap();

        let read = |o: Opened| async move {
            let mut all = Vec::new();
            let mut body = o.body;
            while let Some(c) = body.next().await {
                all.extend_from_slice(&c.unwrap());
            }
            all
        };
        let mid = origin
            .open("/v/big.mp4", Some(1000..2000), None)
            .await
            .unwrap();
        assert_eq!((mid.info.size, mid.range.clone()), (100_000, 1000..2000));
        let etag = mid.info.etag.clone().unwrap();
        assert_eq!(read(mid).await, &body[1000..2000]);
        // The end is clamped to the object's size.
        let tail = origin
            .open("/v/big.mp4", Some(99_000..200_000), Some(&etag))
            .await
            .unwrap();
        assert_eq!(tail.range, 99_000..100_000);
        assert_eq!(read(tail).await, &body[99_000..]);
        let rest = origin
            .open("/v/big.mp4", Some(50_000..u64::MAX), None)
            .await
            .unwrap();
        assert_eq!(read(rest).await, &body[50_000..]);
        // Another entity tag: the object changed.
        assert_eq!(
            origin
                .open("/v/big.mp4", Some(0..10), Some("other"))
                .await
                .unwrap_err(),
            OriginError::Changed
        );
        // Past the end of a non-empty object: an error; an empty object reads as empty.
        assert!(
            origin
                .open("/v/big.mp4", Some(100_000..100_010), None)
                .await
                .is_err()
        );
        let empty = origin
            .open("/v/empty.ts", Some(0..1 << 20), None)
            .await
            .unwrap();
        assert_eq!((empty.info.size, empty.range.clone()), (0, 0..0));
        assert!(read(empty).await.is_empty());
    }

    #[test]
    fn the_deadline_covers_every_attempt_and_backoff() {
        let d = deadline(
            Retry {
                retries: 2,
                backoff: Duration::from_millis(100),
            },
            Duration::from_secs(1),
        );
        assert_eq!(d, Duration::from_millis(3300));
    }
}
