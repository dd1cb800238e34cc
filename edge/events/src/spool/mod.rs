//! The spool: a durable, segmented, append-only log of [`Record`]s in one directory.

mod recover;
pub(crate) mod segment;
pub(crate) mod state;
mod writer;

pub(crate) use recover::{CURSORS_DIR, write_atomic};

use crate::{Cursor, NewRecord, SpoolError, error::join_error, metrics::DropReason};
use state::{Shared, State};
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};
use tokio::sync::{oneshot, watch};
use writer::{Msg, Writer};

/// Messages the writer's queue holds before `emit` drops and `append` waits.
const QUEUE: usize = 64 * 1024;

/// When an acknowledged record is on stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// `append` returns after an fdatasync covering its record. Appends that arrive while the
    /// writer syncs share the next write and sync (group commit). Emitted records, which nobody
    /// waits for, are synced with the next append or within [`SpoolConfig::fsync_interval`].
    #[default]
    Always,
    /// `append` returns after `write(2)`; the writer fdatasyncs at most
    /// [`SpoolConfig::fsync_interval`] after a write. A power loss may lose that much.
    Interval,
    /// `append` returns after `write(2)`; the kernel writes back when it likes (segments are still
    /// synced when they are closed and on [`Spool::flush`]).
    Never,
}

/// Where and how the spool keeps records.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// Directory of the segment files, the cursor files and the lock (created if missing).
    pub dir: PathBuf,
    /// Bytes of records not yet committed by every open cursor at which records are refused
    /// ([`SpoolError::Full`], `emit` returns `false`). Without open cursors nothing is refused.
    pub max_backlog: u64,
    /// Bytes of fully consumed segments kept as history (for `edge events tail`); older ones are
    /// deleted first.
    pub retain: u64,
    /// A segment is closed and a new one started once it reaches this size.
    pub segment_bytes: u64,
    /// When an acknowledged record is durable.
    pub fsync: FsyncPolicy,
    /// Longest time written records stay unsynced under [`FsyncPolicy::Interval`] (and emitted
    /// ones under [`FsyncPolicy::Always`]).
    pub fsync_interval: Duration,
    /// Backlog / `max_backlog` from which a warning is logged (at most once per 10 s).
    pub warn_ratio: f64,
}

impl Default for SpoolConfig {
    /// `.edge-data/events`, backlog 1 GiB, history 64 MiB, segments of 16 MiB, `Always`, 1 s, 0.8.
    fn default() -> Self {
        Self {
            dir: PathBuf::from(".edge-data/events"),
            max_backlog: 1 << 30,
            retain: 64 << 20,
            segment_bytes: 16 << 20,
            fsync: FsyncPolicy::Always,
            fsync_interval: Duration::from_secs(1),
            warn_ratio: 0.8,
        }
    }
}

/// A snapshot of the spool, from [`Spool::stats`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolStats {
    /// Bytes of the segment files.
    pub bytes_on_disk: u64,
    /// Bytes of records after the lowest committed position of the open cursors.
    pub backlog_bytes: u64,
    /// Seq the next record gets.
    pub next_seq: u64,
    /// Seq of the oldest record kept (`next_seq` when there is none).
    pub oldest_seq: u64,
    /// Segment files.
    pub segments: usize,
    /// Open cursors by name, with the next seq each reads after its committed position.
    pub cursors: Vec<(String, u64)>,
}

/// A durable, segmented, append-only log of [`Record`](crate::Record)s. Cheap to clone; the
/// writer stops when the last clone is dropped (after writing and syncing what was queued).
#[derive(Debug, Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tx: Option<mpsc::SyncSender<Msg>>,
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Woken when a message somebody waits for is queued (it may be lingering on emits).
    writer_thread: std::thread::Thread,
}

impl Drop for Inner {
    /// Stops the writer and waits for it: once the last handle is gone, everything queued is on
    /// disk and (with no cursor left) the directory is unlocked.
    fn drop(&mut self) {
        self.tx = None;
        let handle = self
            .writer
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

impl Spool {
    /// Opens (or creates) the spool in `cfg.dir`: locks the directory (a second opener, in this
    /// process or another, gets [`SpoolError::Locked`]), truncates a torn or damaged tail of the
    /// last segment (logging what was dropped), recovers the next seq and starts the writer
    /// (a thread of its own: every write and sync blocks). Metrics are registered in `registry`.
    ///
    /// Open the cursors right after: until a cursor is open, nothing holds records back from
    /// retention.
    pub async fn open(
        cfg: SpoolConfig,
        registry: Option<&prometheus::Registry>,
    ) -> Result<Spool, SpoolError> {
        let metrics = crate::metrics::SpoolMetrics::new(registry);
        metrics.limit.set(cfg.max_backlog as i64);
        let (c, m) = (cfg.clone(), metrics.clone());
        let rec = tokio::task::spawn_blocking(move || recover::recover(&c, &m))
            .await
            .map_err(join_error)??;
        let (visible_tx, visible) = watch::channel(rec.next_seq);
        let active = *rec.segments.last().expect("recover leaves a segment");
        let shared = Arc::new(Shared {
            cfg,
            metrics,
            state: Mutex::new(State {
                segments: rec.segments,
                next_seq: rec.next_seq,
                cursors: HashMap::new(),
            }),
            backlog: AtomicU64::new(0),
            open_cursors: AtomicUsize::new(0),
            visible,
            fsyncs: AtomicU64::new(0),
            #[cfg(test)]
            fail_writes: Default::default(),
            _lock: rec.lock,
        });
        shared.publish(&shared.lock());
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let handle = Writer::spawn(shared.clone(), rx, visible_tx, active, rec.next_seq)?;
        Ok(Spool {
            inner: Arc::new(Inner {
                tx: Some(tx),
                shared,
                writer_thread: handle.thread().clone(),
                writer: Mutex::new(Some(handle)),
            }),
        })
    }

    /// Appends `rec` and returns its seq once it is durable per [`SpoolConfig::fsync`].
    /// [`SpoolError::Full`] when the backlog reached `max_backlog` and [`SpoolError::Io`] on a
    /// disk error: in both cases nothing of the record is kept.
    pub async fn append(&self, rec: NewRecord) -> Result<u64, SpoolError> {
        if let Some(e) = self.over_limit() {
            self.inner
                .shared
                .metrics
                .dropped(rec.kind, DropReason::Full)
                .inc();
            return Err(e);
        }
        let (tx, rx) = oneshot::channel();
        self.send(Msg::Append(rec, tx)).await?;
        rx.await.map_err(|_| SpoolError::Closed)?
    }

    /// Queues `rec` without waiting (analytics on the request path): `false`, counted in
    /// `edge_events_dropped_total`, when the backlog is at its limit or the writer's queue is full.
    /// The writer lets emitted records gather for a few milliseconds before it writes them (an
    /// append or a flush ends that at once), so a stream of emits costs one `write` per batch,
    /// not one wake-up and one `write` each.
    pub fn emit(&self, rec: NewRecord) -> bool {
        let kind = rec.kind;
        let why = if self.over_limit().is_some() {
            DropReason::Full
        } else {
            match self.inner.tx.as_ref().map(|tx| tx.try_send(Msg::Emit(rec))) {
                Some(Ok(())) => return true,
                _ => DropReason::Queue,
            }
        };
        self.inner.shared.metrics.dropped(kind, why).inc();
        false
    }

    /// Opens the cursor `name` (file `cursors/<name>`; ASCII letters, digits, `-` and `_`): at its
    /// committed position, or at the oldest record kept for a new name. An open cursor holds
    /// back retention and counts for the backlog; [`SpoolError::CursorInUse`] if it is already
    /// open in this process.
    pub fn cursor(&self, name: &str) -> Result<Cursor, SpoolError> {
        Cursor::open(self.inner.shared.clone(), name)
    }

    /// Returns once everything queued before (appends and emits) is written and synced.
    pub async fn flush(&self) -> Result<(), SpoolError> {
        let (tx, rx) = oneshot::channel();
        self.send(Msg::Flush(tx)).await?;
        rx.await.map_err(|_| SpoolError::Closed)?
    }

    /// Sizes, seqs and cursor positions now.
    pub fn stats(&self) -> SpoolStats {
        let st = self.inner.shared.lock();
        let mut cursors: Vec<(String, u64)> =
            st.cursors.iter().map(|(n, p)| (n.clone(), p.seq)).collect();
        cursors.sort();
        SpoolStats {
            bytes_on_disk: st.bytes(),
            backlog_bytes: st.backlog(),
            next_seq: st.next_seq,
            oldest_seq: st.oldest_seq(),
            segments: st.segments.len(),
            cursors,
        }
    }

    /// The spool's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.shared.cfg.dir
    }

    #[cfg(test)]
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    fn over_limit(&self) -> Option<SpoolError> {
        let shared = &self.inner.shared;
        let backlog = shared.backlog.load(Ordering::Relaxed);
        let limit = shared.cfg.max_backlog;
        (backlog >= limit && shared.open_cursors.load(Ordering::Relaxed) > 0)
            .then_some(SpoolError::Full { backlog, limit })
    }

    /// Queues a message somebody waits for and wakes the writer.
    async fn send(&self, msg: Msg) -> Result<(), SpoolError> {
        let tx = self.inner.tx.as_ref().ok_or(SpoolError::Closed)?;
        match tx.try_send(msg) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Disconnected(_)) => return Err(SpoolError::Closed),
            Err(mpsc::TrySendError::Full(msg)) => {
                // The queue is full: wait for room on a blocking thread, not on this one.
                let tx = tx.clone();
                tokio::task::spawn_blocking(move || tx.send(msg))
                    .await
                    .map_err(join_error)?
                    .map_err(|_| SpoolError::Closed)?;
            }
        }
        self.inner.writer_thread.unpark();
        Ok(())
    }
}
