//! `edge events tail`: prints the records of a spool directory, read-only, while an edge may be
//! appending to it.

use crate::{
    EventKind, Record, SpoolError,
    error::join_error,
    spool::segment::{self, Frame, FrameReader, HEADER_LEN},
    timestamp,
};
use serde::Serialize;
use serde_json::value::RawValue;
use std::{
    collections::VecDeque,
    io::{self, Write},
    path::{Path, PathBuf},
    time::{Duration, UNIX_EPOCH},
};
use tracing::warn;

/// How often a followed spool is read again.
const POLL: Duration = Duration::from_millis(200);

/// What [`tail`] prints.
#[derive(Debug, Clone, Default)]
pub struct TailOptions {
    /// Print only the last this many records (of `kind`) first; all of them when `None`.
    pub last: Option<usize>,
    /// Then keep printing records as they are appended, until the future is dropped.
    pub follow: bool,
    /// Only records of this kind.
    pub kind: Option<EventKind>,
}

/// Prints the records of the spool in `dir` to `out`, one JSON line each:
///
/// ```json
/// {"seq":42,"kind":"stream.start","key":"s1","publish":true,"at":"2024-11-15T10:30:00.123000","payload":{…}}
/// ```
///
/// Takes no lock and writes nothing: it works while an edge appends. A frame still being written
/// at the end is waited for (every 200 ms when following), a segment deleted by retention is
/// passed over, and a damaged frame is logged and its segment's rest skipped.
pub async fn tail(
    dir: &Path,
    opts: TailOptions,
    out: &mut (dyn Write + Send),
) -> Result<(), SpoolError> {
    let mut tail = Tail {
        dir: dir.to_path_buf(),
        kind: opts.kind,
        out,
    };
    let segments = list(dir).await?;
    // Where the next record is: a segment (first seq) and an offset in it.
    let mut pos = None;
    match opts.last {
        Some(n) => {
            let mut last: VecDeque<Record> = VecDeque::new();
            for (i, (first, path)) in segments.iter().enumerate().rev() {
                let Some(chunk) = read(path.clone(), HEADER_LEN).await? else {
                    continue;
                };
                if i + 1 == segments.len() {
                    pos = Some((*first, chunk.end));
                }
                let wanted = chunk.records.into_iter().filter(|r| tail.wanted(r));
                let mut newest_first: Vec<Record> = wanted.rev().take(n - last.len()).collect();
                newest_first.drain(..).for_each(|r| last.push_front(r));
                if last.len() >= n {
                    break;
                }
            }
            for r in &last {
                tail.print(r)?;
            }
        }
        None => {
            for (i, (first, path)) in segments.iter().enumerate() {
                if let Some(chunk) = read(path.clone(), HEADER_LEN).await? {
                    tail.print_chunk(path, &chunk, i + 1 == segments.len())?;
                    pos = Some((*first, chunk.end));
                }
            }
        }
    }
    tail.flush()?;
    if !opts.follow {
        return Ok(());
    }
    loop {
        let segments = list(dir).await?;
        let (current, offset) = match pos {
            Some(p) => p,
            None => match segments.first() {
                Some((first, _)) => (*first, HEADER_LEN),
                None => {
                    tokio::time::sleep(POLL).await;
                    continue;
                }
            },
        };
        // Listed before reading: when a newer segment exists, `current` is complete.
        let newer = segments.iter().map(|(f, _)| *f).find(|f| *f > current);
        let path = tail.dir.join(segment::segment_name(current));
        let chunk = read(path.clone(), offset).await?;
        let progressed = match &chunk {
            Some(chunk) => {
                tail.print_chunk(&path, chunk, newer.is_none())?;
                tail.flush()?;
                pos = Some((current, chunk.end));
                chunk.end > offset
            }
            None => false,
        };
        match newer {
            Some(next) if !progressed => pos = Some((next, HEADER_LEN)),
            Some(_) => {}
            None => tokio::time::sleep(POLL).await,
        }
    }
}

struct Tail<'a> {
    dir: PathBuf,
    kind: Option<EventKind>,
    out: &'a mut (dyn Write + Send),
}

#[derive(Serialize)]
struct Line<'a> {
    seq: u64,
    kind: EventKind,
    key: &'a str,
    publish: bool,
    at: String,
    payload: &'a RawValue,
}

impl Tail<'_> {
    fn wanted(&self, r: &Record) -> bool {
        self.kind.is_none_or(|k| k == r.kind)
    }

    /// Prints the wanted records of `chunk`; a damage that is not at the live end is logged.
    fn print_chunk(&mut self, path: &Path, chunk: &Chunk, live: bool) -> Result<(), SpoolError> {
        for r in &chunk.records {
            if self.wanted(r) {
                self.print(r)?;
            }
        }
        if let Some(reason) = &chunk.damage
            && !live
        {
            warn!(file = %path.display(), offset = chunk.end, %reason,
                "events tail: damaged frame, the rest of the segment is skipped");
        }
        Ok(())
    }

    fn print(&mut self, r: &Record) -> Result<(), SpoolError> {
        let line = Line {
            seq: r.seq,
            kind: r.kind,
            key: &r.key,
            publish: r.publish,
            at: timestamp(UNIX_EPOCH + Duration::from_millis(r.at_ms)),
            payload: &r.payload,
        };
        serde_json::to_writer(&mut *self.out, &line)
            .map_err(io::Error::from)
            .and_then(|()| self.out.write_all(b"\n"))
            .map_err(output_error)
    }

    fn flush(&mut self) -> Result<(), SpoolError> {
        self.out.flush().map_err(output_error)
    }
}

fn output_error(e: io::Error) -> SpoolError {
    SpoolError::io(Path::new("<output>"), e)
}

/// The complete frames of a segment from an offset.
struct Chunk {
    records: Vec<Record>,
    /// After the last complete frame.
    end: u64,
    /// Why reading stopped before the end of the file (a frame being written, or damage).
    damage: Option<String>,
}

async fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, SpoolError> {
    let d = dir.to_path_buf();
    tokio::task::spawn_blocking(move || segment::list_segments(&d))
        .await
        .map_err(join_error)?
        .map_err(|e| SpoolError::io(dir, e))
}

/// `None` when the segment no longer exists.
async fn read(path: PathBuf, offset: u64) -> Result<Option<Chunk>, SpoolError> {
    let p = path.clone();
    match tokio::task::spawn_blocking(move || read_blocking(&p, offset))
        .await
        .map_err(join_error)?
    {
        Ok(chunk) => Ok(Some(chunk)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SpoolError::io(&path, e)),
    }
}

fn read_blocking(path: &Path, offset: u64) -> io::Result<Chunk> {
    let mut reader = FrameReader::open(path, HEADER_LEN)?;
    let len = std::fs::metadata(path)?.len();
    if let Err(reason) = reader.check_header(len)? {
        return Ok(Chunk {
            records: Vec::new(),
            end: HEADER_LEN,
            damage: Some(reason),
        });
    }
    reader.seek(offset.max(HEADER_LEN))?;
    let mut records = Vec::new();
    let damage = loop {
        match reader.next(len)? {
            Frame::Record(r) => records.push(r),
            Frame::End => break None,
            Frame::Partial => break Some("incomplete frame".to_string()),
            Frame::Corrupt(reason) => break Some(reason),
        }
    };
    Ok(Chunk {
        records,
        end: reader.pos(),
        damage,
    })
}
