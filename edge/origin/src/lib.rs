//! Where objects come from when no cache has them: an [`Origin`].
//!
//! [`StoreOrigin`] reads from any `object_store` backend; the embedded default is the local
//! filesystem (`LocalFileSystem` rooted at a directory). Objects live at their public path without
//! the leading `/` (`/vod/movies/m1/index.m3u8` → `vod/movies/m1/index.m3u8`).
//!
//! ```no_run
//! # async fn f() -> Result<(), edge_origin::OriginError> {
//! use edge_origin::{Origin, StoreOrigin};
//! let origin = StoreOrigin::local("deploy/demo/origin".as_ref(), std::time::Duration::from_secs(5))?;
//! let obj = origin.get("/vod/movies/demo/index.m3u8").await?;
//! # Ok(()) }
//! ```

use bytes::Bytes;
use object_store::{ObjectStore, ObjectStoreExt, local::LocalFileSystem, path::Path as ObjectPath};
use std::{
    path::Path,
    sync::Arc,
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
    /// The object is larger than the edge reads into memory.
    #[error("object of {0} bytes is larger than the origin's max_object")]
    TooLarge(u64),
    /// The origin failed (I/O, network, permissions, ...).
    #[error("origin failed: {0}")]
    Unavailable(String),
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

/// An [`Origin`] over an `object_store` backend.
#[derive(Debug, Clone)]
pub struct StoreOrigin {
    store: Arc<dyn ObjectStore>,
    timeout: Duration,
    max_object: u64,
    description: String,
}

impl StoreOrigin {
    /// A local-filesystem origin rooted at `root` (which must exist).
    pub fn local(root: &Path, timeout: Duration) -> Result<Self, OriginError> {
        let canonical = std::fs::canonicalize(root).map_err(|e| {
            OriginError::Unavailable(format!("origin root {}: {e}", root.display()))
        })?;
        let store = LocalFileSystem::new_with_prefix(&canonical)
            .map_err(|e| OriginError::Unavailable(e.to_string()))?;
        Ok(Self {
            store: Arc::new(store),
            timeout,
            max_object: u64::MAX,
            description: format!("fs:{}", canonical.display()),
        })
    }

    /// An origin over any `object_store` backend.
    pub fn new(store: Arc<dyn ObjectStore>, timeout: Duration, description: String) -> Self {
        Self {
            store,
            timeout,
            max_object: u64::MAX,
            description,
        }
    }

    /// Refuses objects larger than `bytes` before reading their body.
    pub fn with_max_object(mut self, bytes: u64) -> Self {
        self.max_object = bytes;
        self
    }
}

fn object_path(path: &str) -> Result<ObjectPath, OriginError> {
    let rel = path.strip_prefix('/').unwrap_or(path);
    ObjectPath::parse(rel).map_err(|e| OriginError::InvalidPath(e.to_string()))
}

fn map_err(e: object_store::Error) -> OriginError {
    match e {
        object_store::Error::NotFound { .. } => OriginError::NotFound,
        other => OriginError::Unavailable(other.to_string()),
    }
}

#[async_trait::async_trait]
impl Origin for StoreOrigin {
    async fn get(&self, path: &str) -> Result<Object, OriginError> {
        let location = object_path(path)?;
        let read = async {
            let result = self.store.get(&location).await.map_err(map_err)?;
            if result.meta.size > self.max_object {
                return Err(OriginError::TooLarge(result.meta.size));
            }
            let etag = result.meta.e_tag.clone();
            let last_modified = Some(SystemTime::from(result.meta.last_modified));
            let body = result.bytes().await.map_err(map_err)?;
            Ok(Object {
                body,
                etag,
                last_modified,
            })
        };
        tokio::time::timeout(self.timeout, read)
            .await
            .map_err(|_| OriginError::Timeout(self.timeout))?
    }

    async fn check(&self) -> Result<(), OriginError> {
        let probe = async {
            use futures::StreamExt;
            let mut listing = self.store.list(None);
            match listing.next().await {
                Some(Err(e)) => Err(map_err(e)),
                _ => Ok(()),
            }
        };
        tokio::time::timeout(self.timeout, probe)
            .await
            .map_err(|_| OriginError::Timeout(self.timeout))?
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
        assert_eq!(
            origin.get("/vod/m1/nope.ts").await.unwrap_err(),
            OriginError::NotFound
        );
        assert!(matches!(
            origin.get("/vod/../etc/passwd").await,
            Err(OriginError::InvalidPath(_))
        ));
        origin.check().await.unwrap();
        let small = origin.with_max_object(4);
        assert_eq!(
            small.get("/vod/m1/index.m3u8").await.unwrap_err(),
            OriginError::TooLarge(8)
        );
    }
}
