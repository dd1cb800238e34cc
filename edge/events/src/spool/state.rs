//! What the writer, the cursors and `stats` share: the segment list, the visible end, the
//! committed positions of open cursors; backlog and retention are computed from them.

use super::{SpoolConfig, segment};
use crate::{SpoolError, metrics::SpoolMetrics};
use std::{
    collections::HashMap,
    fs::File,
    path::PathBuf,
    sync::{
        Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};
use tokio::sync::watch;
use tracing::info;

/// One segment file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Segment {
    /// Seq of its first record (its name); every record in it is below the next segment's.
    pub(crate) first: u64,
    /// Bytes (header included) readers may read: written and, under `FsyncPolicy::Always`,
    /// synced.
    pub(crate) len: u64,
}

/// A place in the spool: before the record `seq` (the first with a seq ≥ `seq`), which starts
/// at `off` in segment `seg` when known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pos {
    pub(crate) seq: u64,
    pub(crate) seg: u64,
    pub(crate) off: Option<u64>,
}

/// Under [`Shared::state`].
#[derive(Debug)]
pub(crate) struct State {
    /// Oldest first; the last one is the writer's. Never empty.
    pub(crate) segments: Vec<Segment>,
    /// Every record below this is readable; none at or above it is.
    pub(crate) next_seq: u64,
    /// Committed positions of the cursors open in this process.
    pub(crate) cursors: HashMap<String, Pos>,
}

/// Shared by the handles, the writer and the cursors.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) cfg: SpoolConfig,
    pub(crate) metrics: SpoolMetrics,
    pub(crate) state: Mutex<State>,
    /// [`State::backlog`] as of the last change, for the checks without the lock.
    pub(crate) backlog: AtomicU64,
    /// Cursors in [`State::cursors`], for the checks without the lock.
    pub(crate) open_cursors: AtomicUsize,
    /// A receiver of the writer's `next_seq` announcements, cloned for each cursor.
    pub(crate) visible: watch::Receiver<u64>,
    /// fdatasyncs by the writer.
    pub(crate) fsyncs: AtomicU64,
    /// Test hook: the next this many writes fail.
    #[cfg(test)]
    pub(crate) fail_writes: std::sync::atomic::AtomicU32,
    /// The flock on `dir/LOCK`, released with the last reference.
    pub(crate) _lock: File,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn segment_path(&self, first: u64) -> PathBuf {
        self.cfg.dir.join(segment::segment_name(first))
    }

    /// Recomputes the backlog and the gauges after `st` changed (called under the lock).
    pub(crate) fn publish(&self, st: &State) {
        let backlog = st.backlog();
        self.backlog.store(backlog, Ordering::Relaxed);
        self.metrics.backlog.set(backlog as i64);
        self.metrics.bytes.set(st.bytes() as i64);
    }

    /// Applies retention under the lock and deletes the files outside it.
    pub(crate) fn collect_garbage(&self) -> Result<(), SpoolError> {
        let removed = {
            let mut st = self.lock();
            let removed = st.collect_garbage(self.cfg.retain);
            if !removed.is_empty() {
                self.publish(&st);
            }
            removed
        };
        for first in removed {
            let path = self.segment_path(first);
            match std::fs::remove_file(&path) {
                Ok(()) => info!(file = %path.display(), "events spool: consumed segment deleted"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(SpoolError::io(&path, e)),
            }
        }
        Ok(())
    }
}

impl State {
    /// Bytes of every segment file.
    pub(crate) fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }

    /// Bytes of records after the lowest committed position of the open cursors (0 without
    /// cursors). A position whose offset is unknown counts its whole segment.
    pub(crate) fn backlog(&self) -> u64 {
        let Some(min) = self.cursors.values().min_by_key(|p| p.seq) else {
            return 0;
        };
        self.segments
            .iter()
            .map(|s| {
                if s.first > min.seg {
                    s.len.saturating_sub(segment::HEADER_LEN)
                } else if s.first == min.seg {
                    let off = min.off.unwrap_or(0).max(segment::HEADER_LEN);
                    s.len.saturating_sub(off)
                } else {
                    0
                }
            })
            .sum()
    }

    /// Seq of the oldest record kept (or `next_seq` when there is none).
    pub(crate) fn oldest_seq(&self) -> u64 {
        self.segments[0].first.min(self.next_seq)
    }

    /// The position before the first record with a seq ≥ `seq`; a seq below the oldest segment
    /// lands on the oldest record.
    pub(crate) fn locate(&self, seq: u64) -> Pos {
        let i = self
            .segments
            .partition_point(|s| s.first <= seq)
            .saturating_sub(1);
        let s = self.segments[i];
        if seq <= s.first {
            Pos {
                seq: s.first.min(seq.max(self.oldest_seq())),
                seg: s.first,
                off: Some(segment::HEADER_LEN),
            }
        } else {
            Pos {
                seq,
                seg: s.first,
                off: None,
            }
        }
    }

    /// Removes from the list the oldest fully consumed segments (every record below the lowest
    /// committed position of the open cursors, or any closed segment without cursors) beyond
    /// `retain` bytes of them, and returns their first seqs. The active segment stays.
    fn collect_garbage(&mut self, retain: u64) -> Vec<u64> {
        let min = self
            .cursors
            .values()
            .map(|p| p.seq)
            .min()
            .unwrap_or(u64::MAX);
        // Segment i is consumed when every seq in it (< the next segment's first) is below `min`.
        let consumed = self
            .segments
            .windows(2)
            .take_while(|w| w[1].first <= min)
            .count();
        let mut kept: u64 = self.segments[..consumed].iter().map(|s| s.len).sum();
        let mut drop = 0;
        while drop < consumed && kept > retain {
            kept -= self.segments[drop].len;
            drop += 1;
        }
        self.segments.drain(..drop).map(|s| s.first).collect()
    }
}
