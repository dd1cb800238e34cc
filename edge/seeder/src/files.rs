//! The cache directory on disk: public paths to files, checksums, last access, atomic writes.
//!
//! Everything here blocks (file system calls); callers run it on `spawn_blocking`.

use bytes::Bytes;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::{
    collections::{HashMap, HashSet},
    fs,
    io::{self, Read, Write},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

/// Where pulls write before renaming into place; hidden, so never scanned or served.
pub(crate) const TMP_DIR: &str = ".tmp";

/// A checksum and the file version it belongs to.
#[derive(Debug, Clone)]
struct Hashed {
    len: u64,
    mtime: SystemTime,
    sha256: Arc<str>,
}

/// A file read whole.
#[derive(Debug, Clone)]
pub(crate) struct Body {
    pub(crate) bytes: Bytes,
    /// Lowercase hex SHA-256 of `bytes`.
    pub(crate) sha256: Arc<str>,
}

/// Why a file could not be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// Larger than `max_object`.
    TooLarge(u64),
    /// The file system failed.
    Io(io::Error),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// A regular file found by [`Catalog::walk`].
#[derive(Debug, Clone)]
pub(crate) struct Found {
    /// Its public path (`/vod/movies/m1/a.ts`).
    pub(crate) public: String,
    pub(crate) path: PathBuf,
    pub(crate) len: u64,
    pub(crate) mtime: SystemTime,
}

/// A file just stored by [`Catalog::store`].
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub(crate) len: u64,
    pub(crate) mtime: SystemTime,
    pub(crate) sha256: Arc<str>,
}

/// The cache directory, its checksums (by path, size and mtime, so rescans do not rehash) and the
/// last time each file was served.
#[derive(Debug)]
pub(crate) struct Catalog {
    root: PathBuf,
    hashes: Mutex<HashMap<String, Hashed>>,
    served: Mutex<HashMap<String, SystemTime>>,
    seq: AtomicU64,
}

fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

fn sha256_hex(bytes: &[u8]) -> Arc<str> {
    hex::encode(Sha256::digest(bytes)).into()
}

impl Catalog {
    /// A catalog of `root` (absolute, existing).
    pub(crate) fn new(root: PathBuf) -> Self {
        Self {
            root,
            hashes: Mutex::default(),
            served: Mutex::default(),
            seq: AtomicU64::new(0),
        }
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Removes what interrupted pulls left in [`TMP_DIR`].
    pub(crate) fn clear_tmp(&self) -> io::Result<()> {
        match fs::remove_dir_all(self.root.join(TMP_DIR)) {
            Err(e) if !is_gone(&e) => Err(e),
            _ => Ok(()),
        }
    }

    /// The file of a normalised public path; `None` for directories (a trailing `/`) and hidden
    /// components (dotfiles, [`TMP_DIR`]). Normalised paths hold no `.`/`..` segments, so the
    /// result is always below the root.
    pub(crate) fn file(&self, public: &str) -> Option<PathBuf> {
        let rel = public.strip_prefix('/')?;
        if rel.is_empty() || rel.ends_with('/') {
            return None;
        }
        let mut path = self.root.clone();
        for seg in rel.split('/') {
            if seg.is_empty() || seg.starts_with('.') {
                return None;
            }
            path.push(seg);
        }
        Some(path)
    }

    /// Reads the file of `public` whole with its checksum; `None` when there is no such file.
    pub(crate) fn read(&self, public: &str, max_object: u64) -> Result<Option<Body>, ReadError> {
        let Some(path) = self.file(public) else {
            return Ok(None);
        };
        // Check the type before opening: opening a FIFO would block; a symbolic link (which the
        // scan skips too) could lead out of the cache directory.
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Ok(None),
            Err(e) if is_gone(&e) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let mut file = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if is_gone(&e) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        // The version opened: files are replaced by rename, never rewritten in place.
        let meta = file.metadata()?;
        let len = meta.len();
        if len > max_object {
            return Err(ReadError::TooLarge(len));
        }
        let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        (&mut file)
            .take(max_object.saturating_add(1))
            .read_to_end(&mut buf)?;
        if buf.len() as u64 > max_object {
            return Err(ReadError::TooLarge(buf.len() as u64));
        }
        let mtime = meta.modified()?;
        let sha256 = match self.cached(public, len, mtime) {
            Some(sha) if buf.len() as u64 == len => sha,
            _ => {
                let sha = sha256_hex(&buf);
                if buf.len() as u64 == len {
                    self.remember(public, len, mtime, sha.clone());
                }
                sha
            }
        };
        Ok(Some(Body {
            bytes: Bytes::from(buf),
            sha256,
        }))
    }

    fn cached(&self, public: &str, len: u64, mtime: SystemTime) -> Option<Arc<str>> {
        self.hashes
            .lock()
            .get(public)
            .filter(|h| h.len == len && h.mtime == mtime)
            .map(|h| h.sha256.clone())
    }

    fn remember(&self, public: &str, len: u64, mtime: SystemTime, sha256: Arc<str>) {
        self.hashes
            .lock()
            .insert(public.to_owned(), Hashed { len, mtime, sha256 });
    }

    /// The checksum of a found file: remembered when its size and mtime did not change, else
    /// computed (streaming) and remembered.
    pub(crate) fn checksum(&self, found: &Found) -> io::Result<Arc<str>> {
        if let Some(sha) = self.cached(&found.public, found.len, found.mtime) {
            return Ok(sha);
        }
        let mut file = fs::File::open(&found.path)?;
        let mut hasher = Sha256::new();
        let n = io::copy(&mut file, &mut hasher)?;
        let sha: Arc<str> = hex::encode(hasher.finalize()).into();
        if n == found.len {
            self.remember(&found.public, found.len, found.mtime, sha.clone());
        }
        Ok(sha)
    }

    /// Records that `public` was served now.
    pub(crate) fn touch(&self, public: &str) {
        self.served
            .lock()
            .insert(public.to_owned(), SystemTime::now());
    }

    /// The later of `mtime` and the last time `public` was served.
    pub(crate) fn last_access(&self, public: &str, mtime: SystemTime) -> SystemTime {
        match self.served.lock().get(public) {
            Some(&t) if t > mtime => t,
            _ => mtime,
        }
    }

    /// Forgets checksums and access times of files not in `present`.
    pub(crate) fn retain(&self, present: &HashSet<&str>) {
        self.hashes
            .lock()
            .retain(|k, _| present.contains(k.as_str()));
        self.served
            .lock()
            .retain(|k, _| present.contains(k.as_str()));
    }

    /// Every regular file below the root, hidden ones and symbolic links excepted, with the
    /// directories that could not be read.
    pub(crate) fn walk(&self) -> (Vec<Found>, Vec<String>) {
        let mut found = Vec::new();
        let mut errors = Vec::new();
        let mut dirs = vec![(self.root.clone(), String::new())];
        while let Some((dir, public)) = dirs.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) => {
                    errors.push(format!("{}: {e}", dir.display()));
                    continue;
                }
            };
            for entry in entries.flatten() {
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    tracing::debug!(path = %entry.path().display(), "skipping a file name that is not UTF-8");
                    continue;
                };
                if name.starts_with('.') {
                    continue;
                }
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                let child = format!("{public}/{name}");
                if kind.is_dir() {
                    dirs.push((entry.path(), child));
                } else if kind.is_file() {
                    let Ok(meta) = entry.metadata() else { continue };
                    let Ok(mtime) = meta.modified() else { continue };
                    found.push(Found {
                        public: child,
                        path: entry.path(),
                        len: meta.len(),
                        mtime,
                    });
                }
            }
        }
        (found, errors)
    }

    /// Deletes a file and its directories left empty; a file already gone is not an error.
    pub(crate) fn delete(&self, found: &Found) -> io::Result<()> {
        match fs::remove_file(&found.path) {
            Err(e) if !is_gone(&e) => return Err(e),
            _ => {}
        }
        self.hashes.lock().remove(&found.public);
        self.served.lock().remove(&found.public);
        let mut dir = found.path.parent();
        while let Some(d) = dir {
            if d == self.root || !d.starts_with(&self.root) || fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
        Ok(())
    }

    /// Stores `body` as the file of `public`: written and synced under [`TMP_DIR`], then renamed
    /// into place, so readers see the whole file or none.
    pub(crate) fn store(&self, public: &str, body: &[u8]) -> io::Result<Stored> {
        let dest = self
            .file(public)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a storable path"))?;
        let tmp_dir = self.root.join(TMP_DIR);
        fs::create_dir_all(&tmp_dir)?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let tmp = tmp_dir.join(format!(
            "{}-{}-{nanos}",
            std::process::id(),
            self.seq.fetch_add(1, Ordering::Relaxed)
        ));
        let stored = Self::write_and_rename(&tmp, &dest, body);
        if stored.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        let mtime = stored?;
        let sha256 = sha256_hex(body);
        let len = body.len() as u64;
        self.remember(public, len, mtime, sha256.clone());
        Ok(Stored { len, mtime, sha256 })
    }

    fn write_and_rename(tmp: &Path, dest: &Path, body: &[u8]) -> io::Result<SystemTime> {
        let mut file = fs::File::create_new(tmp)?;
        file.write_all(body)?;
        file.sync_all()?;
        let mtime = file.metadata()?.modified()?;
        drop(file);
        // A scan may remove the parent directory when it deletes its last expired file.
        let mut attempts = 0;
        loop {
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent)?;
            }
            match fs::rename(tmp, dest) {
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < 3 => attempts += 1,
                other => return other.map(|()| mtime),
            }
        }
    }
}
