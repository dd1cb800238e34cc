//! Where objects come from when no cache has them: an [`Origin`].
//!
//! [`StoreOrigin`] reads from an `object_store` backend: the local filesystem (the embedded
//! default), an S3-compatible object store ([`S3Settings`]), or a plain HTTP server. A public path
//! maps to an object key by removing `strip_prefix` and adding `key_prefix`
//! ([`KeyMap`]): with the default map `/vod/movies/m1/index.m3u8` is the object
//! `vod/movies/m1/index.m3u8`.
//!
//! Objects are read as streams ([`Origin::open`]): a byte range of an object (the edge's caches
//! fill in fixed-size slices), its [`ObjectInfo`] known as soon as the origin answered, the body
//! arriving chunk by chunk. Nothing here holds a whole object; [`Origin::get_within`] collects a
//! small one (a manifest, a seeder's pull) up to a limit.
//!
//! Remote backends retry failed requests with exponential backoff (`object_store`'s retry layer);
//! the answer is bounded by a deadline and every chunk of the body by the attempt timeout, so one
//! slow origin cannot hold a viewer forever.
//!
//! ```no_run
//! # async fn f() -> Result<(), edge_origin::OriginError> {
//! use edge_origin::{Origin, StoreOrigin};
//! let origin = StoreOrigin::local("deploy/demo/origin".as_ref(), std::time::Duration::from_secs(5))?;
//! let first = origin.open("/vod/movies/demo/v0/seg_000.ts", Some(0..1 << 20), None).await?;
//! assert!(first.range.end <= first.info.size);
//! let manifest = origin.get_within("/vod/movies/demo/index.m3u8", 1 << 20).await?;
//! # Ok(()) }
//! ```

mod store;

pub use store::{HttpSettings, KeyMap, Retry, S3Settings, StoreOrigin};

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, stream::BoxStream};
use std::{
    ops::Range,
    time::{Duration, SystemTime},
};

/// Why an origin read failed. Cloneable so one failure can answer every coalesced waiter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    /// No such object.
    #[error("not found")]
    NotFound,
    /// The path is not a valid object path.
    #[error("invalid object path: {0}")]
    InvalidPath(String),
    /// The origin did not answer in time.
    #[error("origin timed out after {0:?}")]
    Timeout(Duration),
    /// The object is larger than the caller reads whole ([`Origin::get_within`]).
    #[error("object of {0} bytes is larger than the limit")]
    TooLarge(u64),
    /// The object is not the one asked for any more (`If-Match` failed): it changed at the
    /// origin between two reads of its slices.
    #[error("object changed at the origin")]
    Changed,
    /// The origin failed (I/O, network, permissions, ...).
    #[error("origin failed: {0}")]
    Unavailable(String),
}

impl OriginError {
    /// Whether the origin is unwell (as opposed to the object not existing or the request being
    /// bad): the failures a stale copy may answer for.
    pub fn is_outage(&self) -> bool {
        matches!(self, Self::Timeout(_) | Self::Unavailable(_))
    }
}

/// Which kind of source produced an object, for `x-cache` and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// A seeder node.
    Seeder,
    /// The origin store.
    Origin,
}

impl Tier {
    /// `seeder` or `origin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Seeder => "seeder",
            Self::Origin => "origin",
        }
    }
}

/// What is known of an object when the origin has answered, before its body arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The whole object's size in bytes (not the range's).
    pub size: u64,
    /// The origin's entity tag, unquoted.
    pub etag: Option<String>,
    /// When the object last changed.
    pub last_modified: Option<SystemTime>,
    /// The object's own `Cache-Control` (S3 object metadata, an HTTP origin's header).
    pub cache_control: Option<String>,
    /// Who serves it.
    pub tier: Tier,
}

/// Chunks of an object's body as they arrive; an `Err` ends it (the bytes before it are good,
/// the rest never came).
pub type ByteStream = BoxStream<'static, Result<Bytes, OriginError>>;

/// A read in progress: what the object is, which bytes of it come, and the body.
pub struct Opened {
    /// The object.
    pub info: ObjectInfo,
    /// The bytes of the object `body` carries: the range asked for, its end clamped to the size.
    pub range: Range<u64>,
    /// Exactly `range.end - range.start` bytes, or an error.
    pub body: ByteStream,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("info", &self.info)
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

impl Opened {
    /// A read whose body is already whole (`body` is the object's bytes `range`).
    pub fn whole(info: ObjectInfo, range: Range<u64>, body: Bytes) -> Self {
        Self {
            info,
            range,
            body: futures::stream::once(async move { Ok(body) }).boxed(),
        }
    }
}

/// One whole object as read from the origin.
#[derive(Debug, Clone)]
pub struct Object {
    /// The whole body.
    pub body: Bytes,
    /// The origin's entity tag, unquoted.
    pub etag: Option<String>,
    /// When the object last changed.
    pub last_modified: Option<SystemTime>,
    /// The object's own `Cache-Control` (S3 object metadata, an HTTP origin's header), which the
    /// edge honours over its configured TTLs.
    pub cache_control: Option<String>,
    /// Who served it.
    pub tier: Tier,
}

/// A source of objects.
#[async_trait::async_trait]
pub trait Origin: Send + Sync + 'static {
    /// Starts reading the object at the public `path` (starting with `/`): the bytes `range`
    /// (its end clamped to the object's size; `None` = all of it). With `if_match` (an unquoted
    /// entity tag) the read fails with [`OriginError::Changed`] unless the object still has it.
    /// A range starting at or past the end of a non-empty object is an error.
    async fn open(
        &self,
        path: &str,
        range: Option<Range<u64>>,
        if_match: Option<&str>,
    ) -> Result<Opened, OriginError>;

    /// Reads the whole object at `path` when it has at most `limit` bytes, else
    /// [`OriginError::TooLarge`] (before its body is read).
    async fn get_within(&self, path: &str, limit: u64) -> Result<Object, OriginError> {
        let opened = self.open(path, None, None).await?;
        collect(opened, limit).await
    }

    /// Reads the whole object at `path`, whatever its size: for small objects and tests.
    async fn get(&self, path: &str) -> Result<Object, OriginError> {
        self.get_within(path, u64::MAX).await
    }

    /// Whether the origin can currently be reached (for `/health`).
    async fn check(&self) -> Result<(), OriginError>;

    /// A short description for logs and `/health` (`fs:/srv/media`, `s3://bucket/prefix`).
    fn describe(&self) -> String;
}

/// The whole body of `opened` when it has at most `limit` bytes.
pub async fn collect(opened: Opened, limit: u64) -> Result<Object, OriginError> {
    let Opened {
        info,
        range,
        mut body,
    } = opened;
    let len = range.end.saturating_sub(range.start);
    if len > limit {
        return Err(OriginError::TooLarge(len));
    }
    let mut buf = BytesMut::with_capacity(usize::try_from(len).unwrap_or(0).min(64 << 20));
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        if (buf.len() + chunk.len()) as u64 > len {
            return Err(OriginError::Unavailable(format!(
                "origin sent more than the {len} bytes it announced"
            )));
        }
        buf.extend_from_slice(&chunk);
    }
    if (buf.len() as u64) < len {
        return Err(OriginError::Unavailable(format!(
            "body ended after {} of {len} bytes",
            buf.len()
        )));
    }
    Ok(Object {
        body: buf.freeze(),
        etag: info.etag,
        last_modified: info.last_modified,
        cache_control: info.cache_control,
        tier: info.tier,
    })
}
