//! Named, persisted readers of the spool.

use crate::{
    Record, SpoolError,
    error::join_error,
    spool::{
        CURSORS_DIR,
        segment::{Frame, FrameReader, HEADER_LEN},
        state::{Pos, Shared},
        write_atomic,
    },
};
use serde::{Deserialize, Serialize};
use std::{
    collections::VecDeque,
    io,
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
};
use tokio::sync::watch;
use tracing::{error, warn};

/// The content of `cursors/<name>`: everything below `next` is committed.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct CursorFile {
    pub(crate) next: u64,
    /// Segment (first seq) holding `next`.
    pub(crate) segment: u64,
    /// Where `next` starts in it, when known.
    #[serde(default)]
    pub(crate) offset: Option<u64>,
}

/// `None` when the file does not exist.
pub(crate) fn read_cursor_file(path: &Path) -> io::Result<Option<CursorFile>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// A named reader of the spool with a persisted position (`cursors/<name>` in the spool's
/// directory). [`Cursor::next_batch`] reads ahead in memory; [`Cursor::commit`] persists
/// progress and lets retention delete what every open cursor has committed. Dropping it closes
/// it: it no longer holds records back nor counts for the backlog.
#[derive(Debug)]
pub struct Cursor {
    shared: Arc<Shared>,
    name: String,
    path: PathBuf,
    committed: Pos,
    read: Pos,
    /// Positioned at `read` (when `read.off` is known).
    reader: Option<FrameReader>,
    /// The position after each record read since the committed one.
    read_positions: VecDeque<Pos>,
    visible: watch::Receiver<u64>,
}

impl Cursor {
    pub(crate) fn open(shared: Arc<Shared>, name: &str) -> Result<Self, SpoolError> {
        let path = shared.cfg.dir.join(CURSORS_DIR).join(name);
        let valid = !name.is_empty()
            && name.len() <= 100
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            let e = io::Error::new(io::ErrorKind::InvalidInput, "invalid cursor name");
            return Err(SpoolError::io(&path, e));
        }
        let saved = match read_cursor_file(&path) {
            Ok(saved) => saved,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                warn!(file = %path.display(), error = %e,
                    "events spool: damaged cursor file, the cursor starts at the oldest record");
                None
            }
            Err(e) => return Err(SpoolError::io(&path, e)),
        };
        let mut st = shared.lock();
        if st.cursors.contains_key(name) {
            return Err(SpoolError::CursorInUse(name.to_string()));
        }
        let oldest = st.oldest_seq();
        let pos = match saved {
            Some(c) if c.next < oldest => {
                warn!(
                    cursor = name,
                    from = c.next,
                    to = oldest,
                    "events spool: records deleted while the cursor was closed are skipped"
                );
                st.locate(oldest)
            }
            Some(c) => {
                let mut pos = st.locate(c.next);
                let seg = st.segments.iter().find(|s| s.first == c.segment);
                if let (Some(seg), Some(off)) = (seg, c.offset)
                    && pos.seg == c.segment
                    && (HEADER_LEN..=seg.len).contains(&off)
                {
                    pos.off = Some(off);
                }
                pos
            }
            None => st.locate(oldest),
        };
        st.cursors.insert(name.to_string(), pos);
        shared.open_cursors.fetch_add(1, Ordering::Relaxed);
        shared.publish(&st);
        drop(st);
        Ok(Cursor {
            visible: shared.visible.clone(),
            shared,
            name: name.to_string(),
            path,
            committed: pos,
            read: pos,
            reader: None,
            read_positions: VecDeque::new(),
        })
    }

    /// The cursor's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The next seq [`Cursor::next_batch`] returns (or a later one).
    pub fn position(&self) -> u64 {
        self.read.seq
    }

    /// Records appended but not yet committed by this cursor.
    pub(crate) fn lag(&self) -> u64 {
        self.shared
            .lock()
            .next_seq
            .saturating_sub(self.committed.seq)
    }

    /// Waits until a record at or after the position exists, then returns up to `max` of them in
    /// seq order and moves the (in-memory) position past them. Reads through the cursor's own
    /// file handles on blocking threads. A damaged frame is logged, counted in
    /// `edge_events_corrupt_frames_total` and skipped with the rest of its segment.
    /// [`SpoolError::Closed`] once the spool is closed and everything was read.
    ///
    /// Cancel-safe: dropping the future (in a `select!`) loses no record.
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<Record>, SpoolError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        loop {
            let visible = *self.visible.borrow_and_update();
            if self.read.seq < visible {
                let records = self.read_some(max).await?;
                if !records.is_empty() {
                    return Ok(records);
                }
            }
            if self.visible.changed().await.is_err() && self.read.seq >= *self.visible.borrow() {
                return Err(SpoolError::Closed);
            }
        }
    }

    /// Persists that every record up to `through_seq` is done (temporary file, fsync, rename),
    /// then deletes the segments every open cursor has committed beyond
    /// [`SpoolConfig::retain`](crate::SpoolConfig::retain). Committing past the read position
    /// moves the read position too. If the future is dropped before it completes, the commit
    /// may or may not be persisted.
    pub async fn commit(&mut self, through_seq: u64) -> Result<(), SpoolError> {
        let target = through_seq.saturating_add(1);
        if target <= self.committed.seq {
            return Ok(());
        }
        let mut after = None;
        while self.read_positions.front().is_some_and(|p| p.seq <= target) {
            after = self.read_positions.pop_front();
        }
        let pos = if target > self.read.seq {
            let pos = self.shared.lock().locate(target);
            self.rewind_to(pos);
            pos
        } else {
            Pos {
                seq: target,
                ..after.unwrap_or(self.committed)
            }
        };
        let file = CursorFile {
            next: pos.seq,
            segment: pos.seg,
            offset: pos.off,
        };
        let json = serde_json::to_vec(&file).expect("a cursor file serializes");
        let (shared, path, name) = (self.shared.clone(), self.path.clone(), self.name.clone());
        tokio::task::spawn_blocking(move || {
            write_atomic(&path, &json, true).map_err(|e| SpoolError::io(&path, e))?;
            {
                let mut st = shared.lock();
                if let Some(p) = st.cursors.get_mut(&name) {
                    *p = pos;
                }
                shared.publish(&st);
            }
            shared.collect_garbage()
        })
        .await
        .map_err(join_error)??;
        self.committed = pos;
        Ok(())
    }

    /// Makes [`Cursor::next_batch`] start again after the committed position (after a failed
    /// delivery).
    pub fn rewind_to_committed(&mut self) {
        self.rewind_to(self.committed);
    }

    fn rewind_to(&mut self, pos: Pos) {
        self.read = pos;
        self.reader = None;
        self.read_positions.clear();
    }

    /// Reads up to `max` records from the position (from one segment), passing over ended
    /// segments and damage; empty only when it reached the visible end (the position is then at
    /// it). The cursor only changes after the last await.
    async fn read_some(&mut self, max: usize) -> Result<Vec<Record>, SpoolError> {
        let mut out = Vec::new();
        loop {
            let (limit, next_first, visible) = {
                let st = self.shared.lock();
                let Ok(i) = st
                    .segments
                    .binary_search_by_key(&self.read.seg, |s| s.first)
                else {
                    let pos = st.locate(self.read.seq);
                    drop(st);
                    warn!(cursor = %self.name, seq = self.read.seq, "events spool: segment deleted under the cursor");
                    self.rewind_to(Pos {
                        seq: pos.seq.max(self.read.seq),
                        ..pos
                    });
                    continue;
                };
                let next = st.segments.get(i + 1).map(|s| s.first);
                (st.segments[i].len, next, st.next_seq)
            };
            let job = ReadJob {
                reader: self.reader.take(),
                path: self.shared.segment_path(self.read.seg),
                start: self.read.off,
                min_seq: self.read.seq,
                limit,
                max: max - out.len(),
            };
            let done = tokio::task::spawn_blocking(move || job.run())
                .await
                .map_err(join_error)?
                .map_err(|e| SpoolError::io(&self.shared.segment_path(self.read.seg), e))?;
            self.learn_committed_offset(done.first_at);
            self.read.off = Some(done.first_at);
            for (rec, end) in done.records {
                self.read = Pos {
                    seq: rec.seq + 1,
                    seg: self.read.seg,
                    off: Some(end),
                };
                self.read_positions.push_back(self.read);
                out.push(rec);
            }
            self.reader = done.reader;
            let end_of_log = match done.stop {
                Stop::Max => break,
                Stop::End => next_first.is_none(),
                Stop::Corrupt { offset, reason } => {
                    self.shared.metrics.corrupt.inc();
                    let file = self.shared.segment_path(self.read.seg);
                    error!(cursor = %self.name, file = %file.display(), offset, %reason,
                        "events spool: damaged frame, the rest of its segment is skipped");
                    if next_first.is_none() {
                        self.reader = None;
                        self.read.off = Some(limit);
                    }
                    next_first.is_none()
                }
            };
            if end_of_log {
                self.read.seq = self.read.seq.max(visible);
                break;
            }
            if let Some(first) = next_first {
                self.read = Pos {
                    seq: self.read.seq.max(first),
                    seg: first,
                    off: Some(HEADER_LEN),
                };
                self.reader = None;
            }
            // No await with records in hand: a cancelled `next_batch` loses nothing.
            if !out.is_empty() {
                break;
            }
        }
        Ok(out)
    }

    /// A position restored without its offset learns it from the first read.
    fn learn_committed_offset(&mut self, at: u64) {
        if self.committed.off.is_none()
            && self.committed.seq == self.read.seq
            && self.committed.seg == self.read.seg
        {
            self.committed.off = Some(at);
            let mut st = self.shared.lock();
            if let Some(p) = st.cursors.get_mut(&self.name) {
                *p = self.committed;
            }
            self.shared.publish(&st);
        }
    }
}

impl Drop for Cursor {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        if st.cursors.remove(&self.name).is_some() {
            self.shared.open_cursors.fetch_sub(1, Ordering::Relaxed);
        }
        self.shared.publish(&st);
    }
}

/// One blocking read of a segment.
struct ReadJob {
    reader: Option<FrameReader>,
    path: PathBuf,
    /// Where to start, when known (else the segment is scanned from its first frame).
    start: Option<u64>,
    /// Records below are skipped.
    min_seq: u64,
    limit: u64,
    max: usize,
}

struct ReadDone {
    reader: Option<FrameReader>,
    /// Where the first record returned starts (or where reading stopped, without records).
    first_at: u64,
    records: Vec<(Record, u64)>,
    stop: Stop,
}

enum Stop {
    Max,
    End,
    Corrupt { offset: u64, reason: String },
}

impl ReadJob {
    fn run(self) -> io::Result<ReadDone> {
        let start = self.start.unwrap_or(HEADER_LEN).max(HEADER_LEN);
        let mut reader = match self.reader {
            Some(mut r) if r.pos() == start => {
                // Drop read-ahead from beyond the last limit: a write may have been in progress
                // there (or failed and been cut off since).
                r.seek(start)?;
                r
            }
            _ => {
                let mut r = FrameReader::open(&self.path, HEADER_LEN)?;
                if let Err(reason) = r.check_header(self.limit)? {
                    return Ok(ReadDone {
                        reader: None,
                        first_at: HEADER_LEN,
                        records: Vec::new(),
                        stop: Stop::Corrupt { offset: 0, reason },
                    });
                }
                r.seek(start)?;
                r
            }
        };
        let mut records = Vec::new();
        let mut first_at = None;
        let mut rescanned = start == HEADER_LEN;
        let stop = loop {
            if records.len() >= self.max {
                break Stop::Max;
            }
            let at = reader.pos();
            match reader.next(self.limit)? {
                Frame::Record(rec) if rec.seq < self.min_seq => {}
                Frame::Record(rec) => {
                    first_at.get_or_insert(at);
                    records.push((rec, reader.pos()));
                }
                Frame::End => break Stop::End,
                // A saved offset that is not a frame boundary: scan the segment instead.
                Frame::Corrupt(_) | Frame::Partial if !rescanned && records.is_empty() => {
                    rescanned = true;
                    reader.seek(HEADER_LEN)?;
                }
                Frame::Partial => {
                    break Stop::Corrupt {
                        offset: at,
                        reason: "truncated frame".into(),
                    };
                }
                Frame::Corrupt(reason) => break Stop::Corrupt { offset: at, reason },
            }
        };
        let first_at = first_at.unwrap_or(reader.pos());
        Ok(ReadDone {
            reader: Some(reader),
            first_at,
            records,
            stop,
        })
    }
}
