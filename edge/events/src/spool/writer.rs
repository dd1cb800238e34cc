//! The writer: one thread owning the active segment. It takes everything queued (appends,
//! emits, flushes) into one buffer, writes it with one `write`, syncs once per the policy and
//! then answers every waiter (group commit). Under `Always` only a batch somebody waits for is
//! synced at once; emitted records alone are synced within the interval, as under `Interval`.
//! A batch that starts with an emitted record lingers briefly to gather more.

use super::{
    FsyncPolicy,
    recover::{self, HINT_FILE},
    segment::{self, HEADER_LEN},
    state::{Segment, Shared},
};
use crate::{EventKind, NewRecord, Record, SpoolError, metrics::DropReason};
use std::{
    fs::File,
    io::{self, Seek, SeekFrom, Write},
    sync::{Arc, atomic::Ordering, mpsc},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};
use tokio::sync::{oneshot, watch};
use tracing::{error, warn};

/// A batch stops collecting at this many bytes.
const BATCH_BYTES: usize = 4 << 20;
/// How long a batch that starts with an emitted record waits for more (unless an append or a
/// flush arrives): one write and one wake-up per batch instead of per record.
const LINGER: Duration = Duration::from_millis(20);
/// At most one backlog warning per this.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// What handles send the writer.
#[derive(Debug)]
pub(crate) enum Msg {
    /// A record whose seq is answered once durable per the policy.
    Append(NewRecord, oneshot::Sender<Result<u64, SpoolError>>),
    /// A record nobody waits for.
    Emit(NewRecord),
    /// Answered once everything before it is written and synced.
    Flush(oneshot::Sender<Result<(), SpoolError>>),
}

struct Waiter {
    seq: u64,
    kind: EventKind,
    tx: Option<oneshot::Sender<Result<u64, SpoolError>>>,
}

pub(crate) struct Writer {
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Msg>,
    visible: watch::Sender<u64>,
    file: File,
    seg_first: u64,
    /// Bytes of the active segment written without error.
    seg_len: u64,
    /// A failed write could not be cut off: the next record starts a new segment.
    poisoned: bool,
    next_seq: u64,
    buf: Vec<u8>,
    waiters: Vec<Waiter>,
    flushes: Vec<oneshot::Sender<Result<(), SpoolError>>>,
    unsynced_since: Option<Instant>,
    last_warn: Option<Instant>,
    now_ms: u64,
}

impl Writer {
    /// Opens the active (last) segment for appending and starts the writer thread.
    pub(crate) fn spawn(
        shared: Arc<Shared>,
        rx: mpsc::Receiver<Msg>,
        visible: watch::Sender<u64>,
        active: Segment,
        next_seq: u64,
    ) -> Result<std::thread::JoinHandle<()>, SpoolError> {
        let path = shared.segment_path(active.first);
        let mut file = File::options()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| SpoolError::io(&path, e))?;
        file.seek(SeekFrom::Start(active.len))
            .map_err(|e| SpoolError::io(&path, e))?;
        let writer = Writer {
            shared,
            rx,
            visible,
            file,
            seg_first: active.first,
            seg_len: active.len,
            poisoned: false,
            next_seq,
            buf: Vec::with_capacity(64 << 10),
            waiters: Vec::new(),
            flushes: Vec::new(),
            unsynced_since: None,
            last_warn: None,
            now_ms: 0,
        };
        std::thread::Builder::new()
            .name("edge-events-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| SpoolError::io(&path, e))
    }

    fn run(mut self) {
        let policy = self.shared.cfg.fsync;
        let interval = self.shared.cfg.fsync_interval;
        loop {
            let msg = match self.unsynced_since {
                Some(since) if policy != FsyncPolicy::Never => {
                    let wait = (since + interval).saturating_duration_since(Instant::now());
                    match self.rx.recv_timeout(wait) {
                        Ok(msg) => msg,
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            self.sync_logged();
                            continue;
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
                _ => match self.rx.recv() {
                    Ok(msg) => msg,
                    Err(mpsc::RecvError) => break,
                },
            };
            self.now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            if matches!(msg, Msg::Emit(_)) {
                std::thread::park_timeout(LINGER);
            }
            self.handle(msg);
            while self.buf.len() < BATCH_BYTES {
                match self.rx.try_recv() {
                    Ok(msg) => self.handle(msg),
                    Err(_) => break,
                }
            }
            self.finish_chunk();
            self.answer_flushes();
            if policy != FsyncPolicy::Never
                && self.unsynced_since.is_some_and(|t| t.elapsed() >= interval)
            {
                self.sync_logged();
            }
            self.warn_backlog();
        }
        if self.unsynced_since.is_some() {
            self.sync_logged();
        }
        self.write_hint(true);
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Append(rec, tx) => self.add(rec, Some(tx)),
            Msg::Emit(rec) => self.add(rec, None),
            Msg::Flush(tx) => self.flushes.push(tx),
        }
    }

    fn add(&mut self, rec: NewRecord, tx: Option<oneshot::Sender<Result<u64, SpoolError>>>) {
        let kind = rec.kind;
        let shared = &self.shared;
        if shared.open_cursors.load(Ordering::Relaxed) > 0 {
            let backlog = shared.backlog.load(Ordering::Relaxed) + self.buf.len() as u64;
            let limit = shared.cfg.max_backlog;
            if backlog >= limit {
                shared.metrics.dropped(kind, DropReason::Full).inc();
                if let Some(tx) = tx {
                    let _ = tx.send(Err(SpoolError::Full { backlog, limit }));
                }
                return;
            }
        }
        let size = self.seg_len + self.buf.len() as u64;
        if self.poisoned || (size > HEADER_LEN && size >= shared.cfg.segment_bytes) {
            self.finish_chunk();
            if let Err(e) = self.roll() {
                error!(error = %e, "events spool: cannot start a new segment");
                self.refuse(kind, tx, e);
                return;
            }
        }
        let seq = self.next_seq;
        let record = Record {
            seq,
            kind,
            key: rec.key,
            publish: rec.publish,
            at_ms: self.now_ms,
            payload: rec.payload,
        };
        match segment::encode_frame(&mut self.buf, &record) {
            Ok(_) => {
                self.next_seq += 1;
                self.waiters.push(Waiter { seq, kind, tx });
            }
            Err(reason) => {
                let e = io::Error::new(io::ErrorKind::InvalidInput, reason);
                let path = self.shared.segment_path(self.seg_first);
                self.refuse(kind, tx, SpoolError::io(&path, e));
            }
        }
    }

    fn refuse(
        &self,
        kind: EventKind,
        tx: Option<oneshot::Sender<Result<u64, SpoolError>>>,
        e: SpoolError,
    ) {
        match tx {
            Some(tx) => drop(tx.send(Err(e))),
            None => self.shared.metrics.dropped(kind, DropReason::Io).inc(),
        }
    }

    /// Writes the buffer to the active segment (and syncs under `Always`), then answers its
    /// waiters; on error cuts the segment back and answers them the error.
    fn finish_chunk(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        match self.write_buf() {
            Ok(synced) => {
                self.seg_len += self.buf.len() as u64;
                if !synced {
                    self.unsynced_since.get_or_insert_with(Instant::now);
                }
                {
                    let mut st = self.shared.lock();
                    if let Some(last) = st.segments.last_mut() {
                        last.len = self.seg_len;
                    }
                    st.next_seq = self.next_seq;
                    self.shared.publish(&st);
                }
                self.visible.send_replace(self.next_seq);
                for w in self.waiters.drain(..) {
                    self.shared.metrics.appended(w.kind).inc();
                    if let Some(tx) = w.tx {
                        let _ = tx.send(Ok(w.seq));
                    }
                }
            }
            Err(e) => {
                let path = self.shared.segment_path(self.seg_first);
                error!(file = %path.display(), error = %e, records = self.waiters.len(),
                    "events spool: write failed, the batch is refused");
                let cut = self
                    .file
                    .set_len(self.seg_len)
                    .and_then(|()| self.file.seek(SeekFrom::Start(self.seg_len)));
                match cut {
                    // Nothing of the batch remains: its seqs were never seen by anyone.
                    Ok(_) => self.next_seq = self.waiters[0].seq,
                    Err(e) => {
                        error!(file = %path.display(), error = %e,
                            "events spool: cannot cut the failed write off, starting a new segment");
                        self.poisoned = true;
                    }
                }
                let err = SpoolError::io(&path, e);
                for w in std::mem::take(&mut self.waiters) {
                    self.refuse(w.kind, w.tx, err.duplicate());
                }
            }
        }
        self.buf.clear();
    }

    /// Writes the buffer; true when it was also synced.
    fn write_buf(&mut self) -> io::Result<bool> {
        #[cfg(test)]
        if self
            .shared
            .fail_writes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
        {
            // Half the batch reaches the file, as in a disk that fills up mid-write.
            self.file.write_all(&self.buf[..self.buf.len() / 2])?;
            return Err(io::Error::other("injected write failure"));
        }
        self.file.write_all(&self.buf)?;
        let awaited = self.waiters.iter().any(|w| w.tx.is_some());
        if self.shared.cfg.fsync == FsyncPolicy::Always && awaited {
            self.sync()?;
            return Ok(true);
        }
        Ok(false)
    }

    fn sync(&mut self) -> io::Result<()> {
        let start = Instant::now();
        self.file.sync_data()?;
        self.shared
            .metrics
            .fsync
            .observe(start.elapsed().as_secs_f64());
        self.shared.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.unsynced_since = None;
        Ok(())
    }

    fn sync_logged(&mut self) {
        if let Err(e) = self.sync() {
            let path = self.shared.segment_path(self.seg_first);
            error!(file = %path.display(), error = %e, "events spool: fdatasync failed");
            self.unsynced_since = Some(Instant::now());
        }
    }

    fn answer_flushes(&mut self) {
        if self.flushes.is_empty() {
            return;
        }
        let result = match self.unsynced_since {
            Some(_) => self
                .sync()
                .map_err(|e| SpoolError::io(&self.shared.segment_path(self.seg_first), e)),
            None => Ok(()),
        };
        for tx in self.flushes.drain(..) {
            let _ = tx.send(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(e.duplicate()),
            });
        }
    }

    /// Closes the active segment (synced) and starts the next one at `next_seq`; then applies
    /// retention.
    fn roll(&mut self) -> Result<(), SpoolError> {
        if self.unsynced_since.is_some() {
            self.sync()
                .map_err(|e| SpoolError::io(&self.shared.segment_path(self.seg_first), e))?;
        }
        let first = self.next_seq;
        let path = self.shared.segment_path(first);
        let file = recover::create_segment(&path).map_err(|e| SpoolError::io(&path, e))?;
        let dir = &self.shared.cfg.dir;
        recover::sync_dir(dir).map_err(|e| SpoolError::io(dir, e))?;
        self.file = file;
        self.seg_first = first;
        self.seg_len = HEADER_LEN;
        self.poisoned = false;
        {
            let mut st = self.shared.lock();
            st.segments.push(Segment {
                first,
                len: HEADER_LEN,
            });
            self.shared.publish(&st);
        }
        self.write_hint(false);
        if let Err(e) = self.shared.collect_garbage() {
            warn!(error = %e, "events spool: retention failed");
        }
        Ok(())
    }

    fn write_hint(&self, sync: bool) {
        let path = self.shared.cfg.dir.join(HINT_FILE);
        let text = format!("{}\n", self.next_seq);
        if let Err(e) = recover::write_atomic(&path, text.as_bytes(), sync) {
            warn!(file = %path.display(), error = %e, "events spool: cannot write the next seq");
        }
    }

    fn warn_backlog(&mut self) {
        let cfg = &self.shared.cfg;
        let backlog = self.shared.backlog.load(Ordering::Relaxed);
        if cfg.max_backlog == 0
            || (backlog as f64) < cfg.warn_ratio * cfg.max_backlog as f64
            || self.last_warn.is_some_and(|t| t.elapsed() < WARN_EVERY)
        {
            return;
        }
        self.last_warn = Some(Instant::now());
        let cursors = {
            let st = self.shared.lock();
            let mut c: Vec<String> = st
                .cursors
                .iter()
                .map(|(name, pos)| format!("{name}@{}", pos.seq))
                .collect();
            c.sort();
            c.join(", ")
        };
        warn!(
            dir = %cfg.dir.display(), backlog_bytes = backlog, limit_bytes = cfg.max_backlog,
            cursors = %cursors,
            "events spool backlog at {:.0}% of its limit: records are refused at 100% until the cursors catch up",
            100.0 * backlog as f64 / cfg.max_backlog as f64
        );
    }
}
