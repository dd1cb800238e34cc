//! The disk tier of the edge cache: byte-bounded, crash-safe, checksummed, rebuilt from disk at
//! start.
//!
//! Segments (~100 KiB–4 MiB) and manifests that fall out of the memory tier are kept here, so an
//! edge node almost never returns to its origin, even after a restart. Keys are public URL paths
//! (`/vod/movies/m1/720p/seg_001.ts`).
//!
//! # Layout
//!
//! ```text
//! dir/lock                  held (flock) while a DiskCache uses dir: a second user fails to open
//! dir/tmp/<pid>-<n>         files being written; deleted at open
//! dir/<ab>/<abcd…>          an entry: the lowercase hex sha256 of its key, under its first 2 digits
//! ```
//!
//! An entry is written whole to `dir/tmp/`, then `rename`d into place: a reader, a concurrent
//! writer or a restart sees the old file or the new one, never a torn one. The file written to
//! is, when the write evicts, the first victim's file renamed into `tmp/` (and cut to the new
//! length) rather than a new one: a full cache then replaces entries without allocating and
//! freeing inodes (on ext4 without a journal, allocating one next to many recently deleted ones
//! cost more than the rest of the fill). A reader that opened the victim's file just before
//! sees another key or a checksum mismatch: a miss. Nothing is fsynced:
//! after a power loss a renamed file may hold garbage or zeros, which the length check at open
//! and the checksum on every read catch (the file is then deleted and the object fetched again).
//!
//! # File format (version 2)
//!
//! | bytes | content |
//! |---|---|
//! | 4 | magic `EDGC` |
//! | 1 | version, `2` (`1`: the same, with a SHA-256 checksum) |
//! | 4 | header length `n`, u32 little-endian (at most 64 KiB) |
//! | n | JSON header |
//! | rest | the body |
//!
//! The JSON header:
//!
//! ```json
//! {"key":"/vod/a/seg_1.ts","etag":"\"abc\"","last_modified_ms":1700000000000,
//!  "cache_control":"max-age=60","stored_at_ms":1700000001000,"expires_at_ms":1700000061000,
//!  "source":"origin","body_len":123456,"xxh3_128":"<32 lowercase hex digits of the body's XXH3-128>"}
//! ```
//!
//! An entry may be one slice of a larger object (the edge caches objects in fixed-size slices,
//! each under its own key); its header then also has `"object_len"`, the whole object's size.
//!
//! Times are milliseconds since the Unix epoch (so [`Meta`] times come back truncated to the
//! millisecond); `etag`, `last_modified_ms` and `cache_control` may be `null`. A file is valid when
//! the magic and version match, its length is exactly `9 + n + body_len`, its name is the sha256 of
//! `key`, and (checked on every [`DiskCache::get`]) the body hashes to `xxh3_128`. The checksum
//! is there for damaged disks and torn writes, not for an attacker who can write the cache
//! directory (and so a matching checksum), hence a non-cryptographic hash at memory speed; version
//! 1 files, whose header has `"sha256"` (64 hex digits) instead, are still read and verified
//! with SHA-256, so an upgrade keeps the cache. A file of another version is treated as damaged:
//! this is a cache.
//!
//! # Index, capacity and eviction
//!
//! [`DiskCache::open`] deletes leftovers in `tmp/`, reads the header (not the body) of every entry
//! file on a blocking thread, deletes damaged or misnamed files, and rebuilds the in-memory index
//! (key → size, expiry, last use). The LRU order after a restart is the order of the files'
//! modification times (the last write).
//!
//! The total of entry file sizes (prefix, header and body) never exceeds
//! [`DiskConfig::capacity`], counting the files of writes in flight too: a write first reserves its
//! size, evicting least recently used entries (by last `get` or `put`) until it fits. An object
//! larger than [`DiskConfig::max_object`] or than the capacity is not stored, nor is one that
//! cannot fit beside the writes in flight (`put` returns `Ok`: this is a cache).
//!
//! # Write errors
//!
//! Any I/O error while writing (disk full, EIO, permissions) removes the temporary file, counts in
//! `edge_disk_cache_write_errors_total` and suspends writes for [`DiskConfig::write_suspend`]:
//! `put` then fails at once with [`DiskError::Suspended`] without touching the disk, one warning is
//! logged per suspension, and reads keep working. Writes resume by themselves afterwards.
//!
//! # Concurrency
//!
//! [`DiskCache`] is cheap to clone and shared between tasks. File I/O runs on blocking threads
//! (and every operation finishes there even if its caller is cancelled). The index lock is never
//! held across an `.await`; renames and deletions of entry files happen under a second lock,
//! together with the matching index update, so the index always describes the files on disk:
//! two concurrent `put`s of a key leave one complete entry, and a write that started before a
//! [`DiskCache::remove`] or [`DiskCache::purge_prefix`] of its key is dropped rather than landing
//! after it. A caller whose body was read before a purge (a fill that began with a lookup here)
//! takes a [`PurgeMark`] first and writes with [`DiskCache::put_since`]: the write is dropped if
//! its key was removed or purged after the mark.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use edge_disk_cache::{DiskCache, DiskConfig, DiskMetrics, Meta};
//! use std::time::{Duration, SystemTime};
//! let dir = tempfile::tempdir().unwrap();
//! let cache = DiskCache::open(DiskConfig::new(dir.path(), 64 << 20), DiskMetrics::default())
//!     .await
//!     .unwrap();
//! let now = SystemTime::now();
//! let meta = Meta::new(now, now + Duration::from_secs(60), "origin");
//! cache.put("/vod/a.ts", bytes::Bytes::from_static(b"seg"), meta).await.unwrap();
//! assert_eq!(&cache.get("/vod/a.ts").await.unwrap().body[..], b"seg");
//! # });
//! ```

mod format;
mod index;
mod metrics;
mod scan;

pub use metrics::DiskMetrics;

use bytes::Bytes;
use format::{Header, Invalid, PREFIX_LEN, TMP_DIR};
use index::{Index, Slot};
use parking_lot::Mutex;
use std::{
    fs::File,
    io::{ErrorKind, Write},
    path::{Path, PathBuf},
    sync::{
        Arc, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};
use tracing::{debug, info, warn};

/// Where and how much the disk cache keeps.
#[derive(Debug, Clone)]
pub struct DiskConfig {
    /// The cache directory (created if missing). One [`DiskCache`] at a time may use it.
    pub dir: PathBuf,
    /// Bytes of entry files (headers and bodies) kept at most.
    pub capacity: u64,
    /// Bodies larger than this are not stored.
    pub max_object: u64,
    /// How long writes pause after a write error (e.g. 30 s).
    pub write_suspend: Duration,
}

impl DiskConfig {
    /// `capacity` bytes in `dir`, objects of up to 64 MiB, writes paused 30 s after an error.
    pub fn new(dir: impl Into<PathBuf>, capacity: u64) -> Self {
        Self {
            dir: dir.into(),
            capacity,
            max_object: 64 << 20,
            write_suspend: Duration::from_secs(30),
        }
    }
}

/// What is stored with a body. Times are kept to the millisecond.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// The origin's `ETag`.
    pub etag: Option<String>,
    /// The origin's `Last-Modified`.
    pub last_modified: Option<SystemTime>,
    /// The origin's `Cache-Control`.
    pub cache_control: Option<String>,
    /// When the object was fetched.
    pub stored_at: SystemTime,
    /// When it stops being fresh (it is kept, and returned, after that).
    pub expires_at: SystemTime,
    /// Where it came from: `origin` or `seeder`.
    pub source: String,
    /// When the body is a slice of a larger object: the whole object's size (`None`: the body
    /// is the whole object).
    pub object_size: Option<u64>,
}

impl Meta {
    /// Metadata without validators or `Cache-Control`.
    pub fn new(stored_at: SystemTime, expires_at: SystemTime, source: &str) -> Self {
        Self {
            etag: None,
            last_modified: None,
            cache_control: None,
            stored_at,
            expires_at,
            source: source.to_owned(),
            object_size: None,
        }
    }

    /// Whether the object is still fresh at `now`.
    pub fn is_fresh(&self, now: SystemTime) -> bool {
        now < self.expires_at
    }
}

/// A cached object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The body.
    pub body: Bytes,
    /// Its metadata.
    pub meta: Meta,
}

/// Why a disk cache operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiskError {
    /// An I/O error, with the path involved.
    #[error("disk cache I/O error: {0}")]
    Io(String),
    /// Writes are paused after a write error; see [`DiskConfig::write_suspend`].
    #[error("disk cache writes are suspended after a write error")]
    Suspended,
    /// Another cache (this process or another) uses the directory.
    #[error("disk cache directory {0} is in use by another process")]
    Locked(String),
    /// A blocking task panicked or was cancelled at shutdown.
    #[error("disk cache task failed: {0}")]
    Task(String),
}

fn io_error(path: &Path, e: &std::io::Error) -> DiskError {
    DiskError::Io(format!("{}: {e}", path.display()))
}

fn task_error(e: tokio::task::JoinError) -> DiskError {
    DiskError::Task(e.to_string())
}

/// A point in the history of removals and purges, from [`DiskCache::purge_mark`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgeMark(u64);

/// Makes temporary file names unique within the process (the pid makes them unique across).
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The disk cache. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct DiskCache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DiskCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskCache")
            .field("dir", &self.inner.cfg.dir)
            .field("entries", &self.len())
            .field("bytes", &self.bytes())
            .field(
                "suspensions",
                &self.inner.suspensions.load(Ordering::Relaxed),
            )
            .finish_non_exhaustive()
    }
}

struct Inner {
    cfg: DiskConfig,
    metrics: DiskMetrics,
    index: Mutex<Index>,
    /// Held (on blocking threads only) around every rename or deletion of an entry file and the
    /// matching index update. Taken before `index`, never the other way round.
    fs: Mutex<()>,
    /// Until when writes are paused.
    suspended: Mutex<Option<Instant>>,
    /// Suspensions so far (one warning each).
    suspensions: AtomicU64,
    runtime: tokio::runtime::Handle,
    /// This, for the timer that ends a suspension (which must not keep the cache alive).
    me: Weak<Inner>,
    /// The flock on `dir/lock`, released when the cache is dropped.
    _lock: File,
}

impl DiskCache {
    /// Opens the cache in `cfg.dir`: creates the directories, deletes leftover temporary files,
    /// rebuilds the index from the entry headers (deleting damaged or misnamed files) and evicts
    /// down to the capacity. Fails if the directory cannot be created or read, or if another cache
    /// uses it.
    pub async fn open(cfg: DiskConfig, metrics: DiskMetrics) -> Result<Self, DiskError> {
        let runtime = tokio::runtime::Handle::current();
        let (c, m) = (cfg.clone(), metrics.clone());
        let (lock, index) = tokio::task::spawn_blocking(move || scan::scan(&c, &m))
            .await
            .map_err(task_error)??;
        let inner = Arc::new_cyclic(|me| Inner {
            cfg,
            metrics,
            index: Mutex::new(index),
            fs: Mutex::new(()),
            suspended: Mutex::new(None),
            suspensions: AtomicU64::new(0),
            runtime,
            me: me.clone(),
            _lock: lock,
        });
        inner.metrics.writes_suspended.set(0);
        inner.update_gauges(&inner.index.lock());
        Ok(Self { inner })
    }

    /// The entry of `key`, expired or not (the caller may serve it stale when the origin fails);
    /// now the most recently used. The whole file is read and checked: a damaged one is deleted,
    /// counted in `edge_disk_cache_corrupt_total`, and reads as `None`.
    pub async fn get(&self, key: &str) -> Option<Entry> {
        let slot = self.inner.index.lock().touch(key)?;
        let (inner, key) = (self.inner.clone(), key.to_owned());
        tokio::task::spawn_blocking(move || inner.read(&key, slot))
            .await
            .ok()
            .flatten()
    }

    /// Stores `body` under `key`, replacing any previous entry. Objects larger than
    /// [`DiskConfig::max_object`] or the capacity are not stored (`Ok`). Fails with
    /// [`DiskError::Suspended`] while writes are paused, and with [`DiskError::Io`] on the write
    /// error that pauses them.
    pub async fn put(&self, key: &str, body: Bytes, meta: Meta) -> Result<(), DiskError> {
        self.put_since(key, body, meta, self.purge_mark()).await
    }

    /// The current point in the history of removals and purges, for [`DiskCache::put_since`].
    pub fn purge_mark(&self) -> PurgeMark {
        PurgeMark(self.inner.index.lock().purge_mark())
    }

    /// [`DiskCache::put`], dropped (`Ok`) when `key` was removed or purged since `mark`: for a
    /// body read before then, which a purge must not see land after it.
    pub async fn put_since(
        &self,
        key: &str,
        body: Bytes,
        meta: Meta,
        mark: PurgeMark,
    ) -> Result<(), DiskError> {
        if !self.inner.writes_allowed() {
            return Err(DiskError::Suspended);
        }
        if body.len() as u64 > self.inner.cfg.max_object.min(self.inner.cfg.capacity) {
            return Ok(());
        }
        let (inner, key) = (self.inner.clone(), key.to_owned());
        tokio::task::spawn_blocking(move || inner.write(&key, &body, &meta, mark.0))
            .await
            .map_err(task_error)?
    }

    /// Removes the entry of `key` (and drops a write of it in flight); returns whether it was
    /// cached.
    pub async fn remove(&self, key: &str) -> bool {
        let (inner, key) = (self.inner.clone(), key.to_owned());
        tokio::task::spawn_blocking(move || inner.remove(&key))
            .await
            .unwrap_or(false)
    }

    /// Removes every entry whose key starts with `prefix` (and drops writes of them in flight);
    /// returns how many were removed.
    pub async fn purge_prefix(&self, prefix: &str) -> usize {
        let (inner, prefix) = (self.inner.clone(), prefix.to_owned());
        tokio::task::spawn_blocking(move || inner.purge_prefix(&prefix))
            .await
            .unwrap_or(0)
    }

    /// When the entry of `key` expires, from the index (no disk access, LRU order unchanged).
    pub fn expires_at(&self, key: &str) -> Option<SystemTime> {
        self.inner.index.lock().peek(key).map(|s| s.expires_at)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.inner.index.lock().len()
    }

    /// Whether the cache holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of all entry files (headers and bodies).
    pub fn bytes(&self) -> u64 {
        self.inner.index.lock().bytes()
    }

    /// Whether writes are paused after a write error.
    pub fn writes_suspended(&self) -> bool {
        self.inner.suspended_until().is_some()
    }

    /// The configuration.
    pub fn config(&self) -> &DiskConfig {
        &self.inner.cfg
    }
}

/// Space reserved in the index for a write in flight; returned when dropped unless settled.
struct Reservation<'a> {
    inner: &'a Inner,
    bytes: u64,
}

impl Reservation<'_> {
    /// Returns the reservation into `index` (already locked by the caller).
    fn settle(mut self, index: &mut Index) {
        index.release(self.bytes);
        self.bytes = 0;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.inner.index.lock().release(self.bytes);
        }
    }
}

impl Inner {
    fn update_gauges(&self, index: &Index) {
        self.metrics.bytes.set(index.bytes() as i64);
        self.metrics.entries.set(index.len() as i64);
    }

    fn path(&self, key: &str) -> PathBuf {
        format::entry_path(&self.cfg.dir, key)
    }

    /// Deletes entry files of keys already removed from the index (`fs` lock held).
    fn unlink(&self, key: &str) {
        let path = self.path(key);
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != ErrorKind::NotFound
        {
            warn!(path = %path.display(), error = %e, "disk cache: cannot delete an entry file");
        }
    }

    /// Moves the file of `victim` (already removed from the index; `fs` lock held) to `to`
    /// and cuts or grows it to `len`, to be overwritten by a new entry; `None` when it cannot
    /// be (a file that cannot be moved is left to [`Inner::unlink`]). Cut under the lock, so
    /// the disk never holds the victim's bytes beyond what the index counts. A reader that
    /// opened it before sees another key, a checksum mismatch or an entry gone from the
    /// index, all of them a miss.
    fn recycle(&self, victim: &str, to: &Path, len: u64) -> Option<File> {
        use std::os::unix::fs::OpenOptionsExt;
        if let Err(e) = std::fs::rename(self.path(victim), to) {
            // The tmp directory vanished, or the file did: nothing to recycle.
            debug!(victim, error = %e, "disk cache: evicted file not recycled");
            return None;
        }
        // Only a plain file of ours, as `create_new` would make: not through a symlink planted
        // under an entry's name (O_NOFOLLOW), not a FIFO (O_NONBLOCK: an open that would wait
        // for a reader, under the lock), not another name of some other file (one link).
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(to)
            .and_then(|file| {
                use std::os::unix::fs::MetadataExt;
                let meta = file.metadata()?;
                if !meta.file_type().is_file() || meta.nlink() != 1 {
                    return Err(std::io::Error::other("not a plain file with one link"));
                }
                file.set_len(len)?;
                Ok(file)
            });
        match opened {
            Ok(file) => Some(file),
            Err(e) => {
                warn!(victim, error = %e, "disk cache: evicted file not recycled");
                let _ = std::fs::remove_file(to);
                None
            }
        }
    }

    fn read(&self, key: &str, slot: Slot) -> Option<Entry> {
        let path = self.path(key);
        let read =
            format::read_entry(&path).and_then(|data| format::decode(Bytes::from(data), key));
        match read {
            // The file may have been recycled for another entry while it was read, its bytes
            // overwritten under the reader (see `recycle`). Its index entry is removed before
            // the rename, so bytes read while the entry is still indexed are nobody else's.
            Ok(_) if self.index.lock().peek(key).map(|s| s.generation) != Some(slot.generation) => {
                debug!(key, "disk cache: entry evicted while it was read");
                None
            }
            Ok((header, body)) => Some(Entry {
                body,
                meta: header.meta(),
            }),
            Err(Invalid::Corrupt(why)) => {
                let _fs = self.fs.lock();
                let mut index = self.index.lock();
                // Only if not replaced meanwhile: the damaged file may be the one just replaced.
                if index.remove_if(key, slot.generation).is_some() {
                    self.update_gauges(&index);
                    drop(index);
                    self.unlink(key);
                    self.metrics.corrupt.inc();
                    warn!(path = %path.display(), key, why, "disk cache: damaged entry deleted");
                }
                None
            }
            Err(Invalid::Io(e)) if e.kind() == ErrorKind::NotFound => {
                // Evicted or removed since the lookup, or deleted behind our back.
                let _fs = self.fs.lock();
                let mut index = self.index.lock();
                if index.remove_if(key, slot.generation).is_some() {
                    self.update_gauges(&index);
                    warn!(path = %path.display(), "disk cache: entry file vanished");
                }
                None
            }
            Err(Invalid::Io(e)) => {
                warn!(path = %path.display(), error = %e, "disk cache: read failed");
                None
            }
        }
    }

    /// Writes an entry, unless `key` is removed or purged since `mark` before it is in place.
    fn write(&self, key: &str, body: &[u8], meta: &Meta, mark: u64) -> Result<(), DiskError> {
        if !self.writes_allowed() {
            return Err(DiskError::Suspended);
        }
        let header = Header::new(key, body, meta);
        let prefix = header.encode();
        let size = (prefix.len() + body.len()) as u64;
        if prefix.len() - PREFIX_LEN > format::MAX_HEADER
            || body.len() as u64 > self.cfg.max_object
            || size > self.cfg.capacity
        {
            return Ok(());
        }

        let tmp = self.cfg.dir.join(TMP_DIR).join(format!(
            "{}-{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let (reservation, recycled) = {
            let _fs = self.fs.lock();
            let mut index = self.index.lock();
            let Some(victims) = index.reserve(size, self.cfg.capacity) else {
                debug!(key, size, "disk cache: no room beside the writes in flight");
                return Ok(());
            };
            self.update_gauges(&index);
            drop(index);
            self.metrics.evictions.inc_by(victims.len() as u64);
            // The first victim's file becomes this write's temporary file (renamed, not
            // unlinked): a full cache then writes without allocating an inode, which on ext4
            // without a journal scans for recently deleted inodes, the largest cost of a fill.
            let mut recycled = None;
            for (victim, _) in &victims {
                if recycled.is_none() {
                    recycled = self.recycle(victim, &tmp, size);
                    if recycled.is_some() {
                        continue;
                    }
                }
                self.unlink(victim);
            }
            let reservation = Reservation {
                inner: self,
                bytes: size,
            };
            (reservation, recycled)
        };

        if let Err(e) = write_file(&tmp, recycled, &prefix, body) {
            let _ = std::fs::remove_file(&tmp);
            return Err(self.write_failed(io_error(&tmp, &e)));
        }

        let _fs = self.fs.lock();
        if self.index.lock().purged_since(mark, key) {
            let _ = std::fs::remove_file(&tmp);
            debug!(
                key,
                "disk cache: write dropped, the key was purged meanwhile"
            );
            return Ok(());
        }
        let path = self.path(key);
        if let Err(e) = rename_into(&tmp, &path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(self.write_failed(io_error(&path, &e)));
        }
        let mut index = self.index.lock();
        reservation.settle(&mut index);
        index.insert(key, size, header.expires_at());
        self.update_gauges(&index);
        Ok(())
    }

    fn remove(&self, key: &str) -> bool {
        let _fs = self.fs.lock();
        let mut index = self.index.lock();
        let found = index.take(key).is_some();
        self.update_gauges(&index);
        drop(index);
        // Also when not indexed: nothing else may be there.
        self.unlink(key);
        found
    }

    fn purge_prefix(&self, prefix: &str) -> usize {
        let _fs = self.fs.lock();
        let mut index = self.index.lock();
        let keys = index.take_prefix(prefix);
        self.update_gauges(&index);
        drop(index);
        for key in &keys {
            self.unlink(key);
        }
        keys.len()
    }

    fn suspended_until(&self) -> Option<Instant> {
        (*self.suspended.lock()).filter(|until| Instant::now() < *until)
    }

    /// Whether writes may proceed; ends a suspension that is over.
    fn writes_allowed(&self) -> bool {
        let mut suspended = self.suspended.lock();
        match *suspended {
            Some(until) if Instant::now() < until => false,
            Some(_) => {
                *suspended = None;
                self.metrics.writes_suspended.set(0);
                info!(dir = %self.cfg.dir.display(), "disk cache writes resumed");
                true
            }
            None => true,
        }
    }

    /// Counts a write error and suspends writes (unless already suspended); returns `error`.
    fn write_failed(&self, error: DiskError) -> DiskError {
        self.metrics.write_errors.inc();
        let mut suspended = self.suspended.lock();
        let now = Instant::now();
        if matches!(*suspended, Some(until) if now < until) {
            debug!(%error, "disk cache write failed while suspended");
            return error;
        }
        let until = now + self.cfg.write_suspend;
        *suspended = Some(until);
        self.metrics.writes_suspended.set(1);
        self.suspensions.fetch_add(1, Ordering::Relaxed);
        warn!(
            dir = %self.cfg.dir.display(),
            %error,
            "disk cache write failed; writes suspended for {:?}",
            self.cfg.write_suspend
        );
        drop(suspended);
        self.schedule_resume(until);
        error
    }

    /// Ends the suspension at `until` even if no write comes, so the gauge drops back to 0.
    fn schedule_resume(&self, until: Instant) {
        let this = self.me.clone();
        self.runtime.spawn(async move {
            loop {
                tokio::time::sleep_until(until.into()).await;
                let Some(inner) = this.upgrade() else {
                    return;
                };
                // Done when resumed, or when a later suspension (with its own timer) took over.
                if inner.writes_allowed() || *inner.suspended.lock() != Some(until) {
                    return;
                }
            }
        });
    }
}

/// Writes `prefix` then `body` to the file at `path`: `recycled` (an evicted entry's file
/// moved there, already at the new length: see [`Inner::recycle`]), otherwise a new file
/// (creating its directory if missing).
fn write_file(
    path: &Path,
    recycled: Option<File>,
    prefix: &[u8],
    body: &[u8],
) -> std::io::Result<()> {
    let mut file = match recycled {
        Some(file) => file,
        None => match File::create_new(path) {
            Err(e) if e.kind() == ErrorKind::NotFound => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                File::create_new(path)?
            }
            other => other?,
        },
    };
    file.write_all(prefix)?;
    file.write_all(body)?;
    Ok(())
}

/// Renames `from` to `to`, creating the directory of `to` if missing.
fn rename_into(from: &Path, to: &Path) -> std::io::Result<()> {
    match std::fs::rename(from, to) {
        Err(e) if e.kind() == ErrorKind::NotFound && from.exists() => {
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::rename(from, to)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests;
