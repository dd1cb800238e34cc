use std::path::{Path, PathBuf};

/// Why a spool operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The backlog (bytes not yet committed by every open cursor) reached its limit: nothing was
    /// written. Committing a cursor frees room.
    #[error("events spool full: {backlog} bytes not yet consumed, limit {limit}")]
    Full {
        /// Backlog bytes when the record was refused.
        backlog: u64,
        /// [`crate::SpoolConfig::max_backlog`].
        limit: u64,
    },
    /// A file operation failed; nothing of the operation was acknowledged.
    #[error("events spool: {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Another spool (in this or another process) holds the directory.
    #[error("events spool {0} is in use by another process (or another spool in this one)")]
    Locked(PathBuf),
    /// The spool's writer is gone (every [`crate::Spool`] handle was dropped).
    #[error("events spool closed")]
    Closed,
    /// A file is damaged where it cannot be skipped.
    #[error("events spool: {path} damaged at byte {offset}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where the damage starts.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A cursor of this name is already open in this process.
    #[error("events spool cursor {0:?} is already open")]
    CursorInUse(String),
}

impl SpoolError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// A copy for one more waiter of a failed batch (`io::Error` is not `Clone`).
    pub(crate) fn duplicate(&self) -> Self {
        match self {
            Self::Full { backlog, limit } => Self::Full {
                backlog: *backlog,
                limit: *limit,
            },
            Self::Io { path, source } => Self::Io {
                path: path.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            Self::Locked(p) => Self::Locked(p.clone()),
            Self::Closed => Self::Closed,
            Self::Corrupt {
                path,
                offset,
                reason,
            } => Self::Corrupt {
                path: path.clone(),
                offset: *offset,
                reason: reason.clone(),
            },
            Self::CursorInUse(n) => Self::CursorInUse(n.clone()),
        }
    }
}

/// A panicked or cancelled blocking task.
pub(crate) fn join_error(e: tokio::task::JoinError) -> SpoolError {
    SpoolError::Io {
        path: PathBuf::new(),
        source: std::io::Error::other(format!("events spool task failed: {e}")),
    }
}
