//! Where objects come from when no cache has them: an [`Origin`].
//!
//! [`StoreOrigin`] reads from an `object_store` backend: the local filesystem (the embedded
//! default), an S3-compatible object store ([`S3Settings`]), or a plain HTTP server. A public path
//! maps to an object key by removing `strip_prefix` and adding `key_prefix`
//! ([`KeyMap`]): with the default map `/vod/movies/m1/index.m3u8` is the object
//! `vod/movies/m1/index.m3u8`.
//!
//! Remote backends retry failed reads with exponential backoff (`object_store`'s retry layer) and
//! every read is bounded by a timeout, so one slow origin cannot hold a viewer forever.
//!
//! ```no_run
//! # async fn f() -> Result<(), edge_origin::OriginError> {
//! use edge_origin::{Origin, StoreOrigin};
//! let origin = StoreOrigin::local("deploy/demo/origin".as_ref(), std::time::Duration::from_secs(5))?;
//! let obj = origin.get("/vod/movies/demo/index.m3u8").await?;
//! # Ok(()) }
//! ```

mod store;

pub use store::{HttpSettings, KeyMap, Retry, S3Settings, StoreOrigin};

use bytes::Bytes;
use std::time::{Duration, SystemTime};

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
    /// The object is larger than the edge reads into memory.
    #[error("object of {0} bytes is larger than the origin's max_object")]
    TooLarge(u64),
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

/// One object as read from the origin.
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
    /// Reads the whole object at the public `path` (starting with `/`).
    async fn get(&self, path: &str) -> Result<Object, OriginError>;

    /// Whether the origin can currently be reached (for `/health`).
    async fn check(&self) -> Result<(), OriginError>;

    /// A short description for logs and `/health` (`fs:/srv/media`, `s3://bucket/prefix`).
    fn describe(&self) -> String;
}
