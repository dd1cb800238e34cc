//! Opening a spool directory: lock, leftovers, segment list, validation of the last segment's
//! tail, and the next seq (never one that was used before).

use super::{
    SpoolConfig,
    segment::{self, Frame, FrameReader, HEADER_LEN},
    state::Segment,
};
use crate::{SpoolError, cursor, metrics::SpoolMetrics};
use std::{
    fs::File,
    io::{self, Write},
    path::Path,
};
use tracing::warn;

/// Directory of the cursor files.
pub(crate) const CURSORS_DIR: &str = "cursors";
/// A lower bound of the next seq, rewritten at every roll and when the writer stops: seqs stay
/// unique even if every segment file is deleted by hand.
pub(crate) const HINT_FILE: &str = "next_seq";
const LOCK_FILE: &str = "LOCK";

/// The result of [`recover`].
#[derive(Debug)]
pub(crate) struct Recovered {
    pub(crate) lock: File,
    pub(crate) segments: Vec<Segment>,
    pub(crate) next_seq: u64,
}

/// The blocking part of `Spool::open`.
pub(crate) fn recover(cfg: &SpoolConfig, metrics: &SpoolMetrics) -> Result<Recovered, SpoolError> {
    let dir = &cfg.dir;
    let cursors = dir.join(CURSORS_DIR);
    std::fs::create_dir_all(&cursors).map_err(|e| SpoolError::io(&cursors, e))?;

    let lock_path = dir.join(LOCK_FILE);
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| SpoolError::io(&lock_path, e))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Err(SpoolError::Locked(dir.clone())),
        Err(std::fs::TryLockError::Error(e)) => return Err(SpoolError::io(&lock_path, e)),
    }
    remove_temporaries(dir)?;
    remove_temporaries(&cursors)?;

    let mut next_seq = read_hint(dir).unwrap_or(1).max(1);
    for entry in std::fs::read_dir(&cursors).map_err(|e| SpoolError::io(&cursors, e))? {
        let path = entry.map_err(|e| SpoolError::io(&cursors, e))?.path();
        if let Ok(Some(c)) = cursor::read_cursor_file(&path) {
            next_seq = next_seq.max(c.next);
        }
    }

    let files = segment::list_segments(dir).map_err(|e| SpoolError::io(dir, e))?;
    let mut segments = Vec::with_capacity(files.len() + 1);
    for (i, (first, path)) in files.iter().enumerate() {
        if i + 1 == files.len() {
            let (len, end) =
                validate_tail(path, *first, metrics).map_err(|e| SpoolError::io(path, e))?;
            segments.push(Segment { first: *first, len });
            next_seq = next_seq.max(end);
        } else {
            let len = std::fs::metadata(path)
                .map_err(|e| SpoolError::io(path, e))?
                .len();
            segments.push(Segment { first: *first, len });
        }
    }
    if segments.is_empty() {
        let path = dir.join(segment::segment_name(next_seq));
        create_segment(&path).map_err(|e| SpoolError::io(&path, e))?;
        sync_dir(dir).map_err(|e| SpoolError::io(dir, e))?;
        segments.push(Segment {
            first: next_seq,
            len: HEADER_LEN,
        });
    }
    Ok(Recovered {
        lock,
        segments,
        next_seq,
    })
}

/// Creates (or empties) a segment file holding only the header, synced.
pub(crate) fn create_segment(path: &Path) -> io::Result<File> {
    let mut file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    file.write_all(&segment::header())?;
    file.sync_data()?;
    Ok(file)
}

/// fsync of a directory, so that files created, renamed or deleted in it stay so.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `contents` to `path` through a synced temporary file and a rename.
pub(crate) fn write_atomic(path: &Path, contents: &[u8], sync: bool) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = Path::new(&tmp);
    let mut file = File::create(tmp)?;
    file.write_all(contents)?;
    if sync {
        file.sync_all()?;
    }
    std::fs::rename(tmp, path)?;
    if sync && let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

fn read_hint(dir: &Path) -> Option<u64> {
    std::fs::read_to_string(dir.join(HINT_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn remove_temporaries(dir: &Path) -> Result<(), SpoolError> {
    for entry in std::fs::read_dir(dir).map_err(|e| SpoolError::io(dir, e))? {
        let path = entry.map_err(|e| SpoolError::io(dir, e))?.path();
        if path.extension().is_some_and(|e| e == "tmp") {
            std::fs::remove_file(&path).map_err(|e| SpoolError::io(&path, e))?;
        }
    }
    Ok(())
}

/// Reads the last segment to its end and truncates a torn or damaged tail away. Returns the
/// valid length and the seq after its last record (its first seq when it has none).
fn validate_tail(path: &Path, first: u64, metrics: &SpoolMetrics) -> io::Result<(u64, u64)> {
    let file = File::options().read(true).write(true).open(path)?;
    let len = file.metadata()?.len();
    let mut reader = FrameReader::open(path, HEADER_LEN)?;
    if let Err(reason) = reader.check_header(len)? {
        if len > 0 {
            metrics.corrupt.inc();
            warn!(file = %path.display(), dropped_bytes = len, %reason,
                "events spool: damaged header of the last segment, segment emptied");
        }
        drop(file);
        create_segment(path)?;
        return Ok((HEADER_LEN, first));
    }
    let mut next = first;
    let bad = loop {
        let at = reader.pos();
        match reader.next(len)? {
            Frame::Record(rec) if rec.seq >= next => next = rec.seq + 1,
            Frame::Record(rec) => {
                break Some((at, format!("seq {} not after {}", rec.seq, next - 1)));
            }
            Frame::End => break None,
            Frame::Partial => break Some((at, "torn frame".to_string())),
            Frame::Corrupt(reason) => break Some((at, reason)),
        }
    };
    let Some((at, reason)) = bad else {
        return Ok((len, next));
    };
    metrics.corrupt.inc();
    warn!(file = %path.display(), offset = at, dropped_bytes = len - at, %reason,
        "events spool: damaged tail of the last segment truncated");
    file.set_len(at)?;
    file.sync_all()?;
    Ok((at, next))
}
