//! Opening a cache directory: lock, leftovers, index rebuild from the entry headers.

use crate::{
    DiskConfig, DiskError, DiskMetrics,
    format::{self, Header, Invalid, TMP_DIR},
    index::Index,
    io_error,
};
use std::{fs::File, path::Path, time::SystemTime};
use tracing::{info, warn};

/// The blocking part of [`DiskCache::open`]: directories, lock, `tmp/` cleanup, index rebuild,
/// eviction down to the capacity.
pub(crate) fn scan(cfg: &DiskConfig, metrics: &DiskMetrics) -> Result<(File, Index), DiskError> {
    let dir = &cfg.dir;
    let tmp = dir.join(TMP_DIR);
    std::fs::create_dir_all(&tmp).map_err(|e| io_error(&tmp, &e))?;

    let lock_path = dir.join("lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| io_error(&lock_path, &e))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(DiskError::Locked(dir.display().to_string()));
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io_error(&lock_path, &e)),
    }

    let mut leftovers = 0usize;
    for item in std::fs::read_dir(&tmp).map_err(|e| io_error(&tmp, &e))? {
        let item = item.map_err(|e| io_error(&tmp, &e))?;
        let path = item.path();
        let removed = match item.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
            _ => std::fs::remove_file(&path),
        };
        match removed {
            Ok(()) => leftovers += 1,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "disk cache: cannot delete a leftover")
            }
        }
    }

    let mut found = Vec::new();
    let mut damaged = 0usize;
    for shard in std::fs::read_dir(dir).map_err(|e| io_error(dir, &e))? {
        let shard = shard.map_err(|e| io_error(dir, &e))?;
        let name = shard.file_name();
        let is_dir = shard.file_type().is_ok_and(|t| t.is_dir());
        if !is_dir || !name.to_str().is_some_and(format::is_shard_name) {
            continue;
        }
        let files = match std::fs::read_dir(shard.path()) {
            Ok(files) => files,
            Err(e) => {
                warn!(path = %shard.path().display(), error = %e, "disk cache: cannot list");
                continue;
            }
        };
        for file in files.flatten() {
            if !file.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let path = file.path();
            match check_entry(&path) {
                Ok((header, size, modified)) => found.push((modified, header, size)),
                Err(why) => {
                    damaged += 1;
                    metrics.corrupt.inc();
                    warn!(path = %path.display(), why, "disk cache: damaged entry deleted at open");
                    if let Err(e) = std::fs::remove_file(&path) {
                        warn!(path = %path.display(), error = %e, "disk cache: cannot delete");
                    }
                }
            }
        }
    }

    // Oldest write first: the LRU order after a restart.
    found.sort_by_key(|(modified, header, _)| (*modified, header.key.clone()));
    let mut index = Index::default();
    for (_, header, size) in &found {
        index.insert(&header.key, *size, header.expires_at());
    }
    let victims = index.evict_to(cfg.capacity);
    for (key, _) in &victims {
        let path = format::entry_path(dir, key);
        if let Err(e) = std::fs::remove_file(&path) {
            warn!(path = %path.display(), error = %e, "disk cache: cannot delete");
        }
    }
    metrics.evictions.inc_by(victims.len() as u64);
    info!(
        dir = %dir.display(),
        entries = index.len(),
        bytes = index.bytes(),
        evicted = victims.len(),
        damaged,
        leftovers,
        "disk cache opened"
    );
    Ok((lock, index))
}

/// Reads the header of the entry file at `path` and checks its name; returns the header, the file
/// size and its modification time, or why the file is to be deleted.
fn check_entry(path: &Path) -> Result<(Header, u64, SystemTime), String> {
    let (header, metadata) = format::read_header(path).map_err(|e| match e {
        Invalid::Io(e) => format!("unreadable: {e}"),
        Invalid::Corrupt(why) => why,
    })?;
    let expected = format::entry_path(Path::new(""), &header.key);
    if !path.ends_with(&expected) {
        return Err(format!("misnamed: holds key {:?}", header.key));
    }
    let modified = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    Ok((header, metadata.len(), modified))
}
