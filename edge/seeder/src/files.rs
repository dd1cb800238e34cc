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
    ops::Range,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

/// The SHA-256 of each slice of a file, in order.
pub(crate) type Digests = Arc<[[u8; 32]]>;

/// Where pulls write before renaming into place; hidden, so never scanned or served.
pub(crate) const TMP_DIR: &str = ".tmp";

/// The checksums of a file version (size and mtime): of the whole file and, for a file larger
/// than a slice, of each slice.
#[derive(Debug, Clone)]
struct Hashed {
    len: u64,
    mtime: SystemTime,
    sha256: Arc<str>,
    /// SHA-256 of each `slice` bytes of the file (the last one shorter); empty when the file is
    /// one slice or less, whose slice checksum is `sha256`.
    slices: Digests,
}

/// One slice of a file, read by [`Catalog::read_slice`].
#[derive(Debug, Clone)]
pub(crate) struct Part {
    pub(crate) bytes: Bytes,
    /// Lowercase hex SHA-256 of the slice, as computed when the file was scanned or stored (so a
    /// file that rotted on disk since is caught by the edge that verifies it).
    pub(crate) sha256: String,
    /// Lowercase hex SHA-256 of the whole file: the version the slice belongs to.
    pub(crate) object_sha256: Arc<str>,
    /// Offset of the slice in the file.
    pub(crate) start: u64,
    /// Size of the whole file.
    pub(crate) size: u64,
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
    /// The range asked for is not one slice of the file (`size`: the file's).
    NotASlice(u64),
    /// The file changed since it was last checksummed: it is not served by slice until the
    /// next scan has checksummed it again.
    NotChecksummed,
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
    /// Bytes per slice (the edges' `cache.slice`).
    slice: u64,
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

/// The checksums of a file as its bytes pass: the whole file's and each slice's.
struct Hashes {
    slice: u64,
    /// Whether slices are hashed too (not for content known to be one slice or less).
    sliced: bool,
    whole: Sha256,
    part: Sha256,
    /// Bytes of the current slice hashed so far.
    in_part: u64,
    slices: Vec<[u8; 32]>,
    len: u64,
}

impl Hashes {
    /// Checksums of content of about `len` bytes (the file's size when hashing starts).
    fn new(slice: u64, len: u64) -> Self {
        Self {
            slice,
            sliced: len > slice,
            whole: Sha256::new(),
            part: Sha256::new(),
            in_part: 0,
            slices: Vec::new(),
            len: 0,
        }
    }

    fn of(slice: u64, bytes: &[u8], mtime: SystemTime) -> Hashed {
        let mut h = Self::new(slice, bytes.len() as u64);
        h.update(bytes);
        let len = h.len;
        h.finish(len, mtime)
    }

    fn update(&mut self, mut bytes: &[u8]) {
        self.whole.update(bytes);
        self.len += bytes.len() as u64;
        while self.sliced && !bytes.is_empty() {
            let room = usize::try_from(self.slice - self.in_part).unwrap_or(usize::MAX);
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            self.part.update(now);
            self.in_part += now.len() as u64;
            bytes = rest;
            if self.in_part == self.slice {
                self.slices.push(self.part.finalize_reset().into());
                self.in_part = 0;
            }
        }
    }

    /// The checksums of the file version of size `len` and `mtime`.
    fn finish(mut self, len: u64, mtime: SystemTime) -> Hashed {
        if self.in_part > 0 {
            self.slices.push(self.part.finalize().into());
        }
        if self.len <= self.slice || !self.sliced {
            // One slice (its checksum is the whole one's), or a file that grew while hashed
            // (`len` no longer matches: not remembered).
            self.slices.clear();
        }
        Hashed {
            len,
            mtime,
            sha256: hex::encode(self.whole.finalize()).into(),
            slices: self.slices.into(),
        }
    }
}

/// Hashing a file with [`io::copy`].
impl Write for Hashes {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Catalog {
    /// A catalog of `root` (absolute, existing) whose files are checksummed in slices of
    /// `slice` bytes (at least 1) too.
    pub(crate) fn new(root: PathBuf, slice: u64) -> Self {
        Self {
            root,
            slice: slice.max(1),
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

    /// Opens the regular file of `public` with its metadata (the version opened: files are
    /// replaced by rename, never rewritten in place); `None` when there is no such file.
    fn open(&self, public: &str) -> io::Result<Option<(fs::File, fs::Metadata)>> {
        let Some(path) = self.file(public) else {
            return Ok(None);
        };
        // Check the type before opening: opening a FIFO would block; a symbolic link (which the
        // scan skips too) could lead out of the cache directory.
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Ok(None),
            Err(e) if is_gone(&e) => return Ok(None),
            Err(e) => return Err(e),
        }
        let file = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if is_gone(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        Ok(Some((file, meta)))
    }

    /// Reads the file of `public` whole with its checksum; `None` when there is no such file.
    pub(crate) fn read(&self, public: &str, max_object: u64) -> Result<Option<Body>, ReadError> {
        let Some((mut file, meta)) = self.open(public)? else {
            return Ok(None);
        };
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
                let hashed = Hashes::of(self.slice, &buf, mtime);
                let sha = hashed.sha256.clone();
                if buf.len() as u64 == len {
                    self.remember(public, hashed);
                }
                sha
            }
        };
        Ok(Some(Body {
            bytes: Bytes::from(buf),
            sha256,
        }))
    }

    /// The slice of the file of `public` that `range` picks given the file's size (it must be
    /// one slice: `start` on a slice boundary, `end` the next one or the end of the file), with
    /// its checksum from the last scan or store; `None` when there is no such file. Reads only
    /// the slice.
    pub(crate) fn read_slice(
        &self,
        public: &str,
        range: impl FnOnce(u64) -> Option<Range<u64>>,
    ) -> Result<Option<Part>, ReadError> {
        let Some((file, meta)) = self.open(public)? else {
            return Ok(None);
        };
        let (len, mtime) = (meta.len(), meta.modified()?);
        let range = range(len).ok_or(ReadError::NotASlice(len))?;
        let hashed = self
            .hashes
            .lock()
            .get(public)
            .filter(|h| h.len == len && h.mtime == mtime)
            .cloned()
            .ok_or(ReadError::NotChecksummed)?;
        let index = range.start / self.slice;
        let one_slice = range.start % self.slice == 0
            && range.start < len
            && range.end == range.start.saturating_add(self.slice).min(len);
        if !one_slice {
            return Err(ReadError::NotASlice(len));
        }
        let sha256 = if hashed.slices.is_empty() {
            hashed.sha256.to_string()
        } else {
            let i = usize::try_from(index).map_err(|_| ReadError::NotASlice(len))?;
            hex::encode(hashed.slices.get(i).ok_or(ReadError::NotASlice(len))?)
        };
        let n = usize::try_from(range.end - range.start).map_err(|_| ReadError::NotASlice(len))?;
        let mut buf = vec![0; n];
        file.read_exact_at(&mut buf, range.start)?;
        Ok(Some(Part {
            bytes: Bytes::from(buf),
            sha256,
            object_sha256: hashed.sha256,
            start: range.start,
            size: len,
        }))
    }

    /// The checksum and slice checksums of the file of `public` as last checksummed, when it is
    /// larger than a slice.
    pub(crate) fn slice_list(&self, public: &str) -> Option<(Arc<str>, Digests)> {
        self.hashes
            .lock()
            .get(public)
            .filter(|h| !h.slices.is_empty())
            .map(|h| (h.sha256.clone(), h.slices.clone()))
    }

    fn cached(&self, public: &str, len: u64, mtime: SystemTime) -> Option<Arc<str>> {
        self.hashes
            .lock()
            .get(public)
            .filter(|h| h.len == len && h.mtime == mtime)
            .map(|h| h.sha256.clone())
    }

    fn remember(&self, public: &str, hashed: Hashed) {
        self.hashes.lock().insert(public.to_owned(), hashed);
    }

    /// The checksum of a found file: remembered when its size and mtime did not change, else
    /// computed (streaming, with the checksum of every slice) and remembered.
    pub(crate) fn checksum(&self, found: &Found) -> io::Result<Arc<str>> {
        if let Some(sha) = self.cached(&found.public, found.len, found.mtime) {
            return Ok(sha);
        }
        let mut file = fs::File::open(&found.path)?;
        let mut hashes = Hashes::new(self.slice, found.len);
        let n = io::copy(&mut file, &mut hashes)?;
        let hashed = hashes.finish(found.len, found.mtime);
        let sha = hashed.sha256.clone();
        if n == found.len {
            self.remember(&found.public, hashed);
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
        let hashed = Hashes::of(self.slice, body, mtime);
        let (len, sha256) = (hashed.len, hashed.sha256.clone());
        self.remember(public, hashed);
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
