//! The segment file format: naming, header, frames, and a reader that stops cleanly at a torn
//! or damaged frame.

use crate::Record;
use std::{
    fs::File,
    io::{self, BufReader, Read, Seek, SeekFrom},
    path::{Path, PathBuf},
};

/// `EDEV`: the first bytes of every segment file.
pub(crate) const MAGIC: [u8; 4] = *b"EDEV";
/// Format version, after the magic (u32 little-endian).
pub(crate) const VERSION: u32 = 1;
/// Magic and version.
pub(crate) const HEADER_LEN: u64 = 8;
/// Length and CRC before every body.
pub(crate) const FRAME_HEADER: usize = 8;
/// The largest body accepted, written or read.
pub(crate) const MAX_BODY: usize = 16 << 20;

/// The header every segment file starts with.
pub(crate) fn header() -> [u8; HEADER_LEN as usize] {
    let mut h = [0; HEADER_LEN as usize];
    h[..4].copy_from_slice(&MAGIC);
    h[4..].copy_from_slice(&VERSION.to_le_bytes());
    h
}

/// `00000000000000000042.log`.
pub(crate) fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.log")
}

/// The first seq of a segment file name, `None` for any other file.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// The segment files of `dir`, oldest first.
pub(crate) fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(first) = entry.file_name().to_str().and_then(parse_segment_name) {
            out.push((first, entry.path()));
        }
    }
    out.sort_unstable_by_key(|(first, _)| *first);
    Ok(out)
}

/// Appends the frame of `rec` to `buf`: `u32 LE length | u32 LE crc32 of body | body`.
/// On error (a body over [`MAX_BODY`]) `buf` is left as it was.
pub(crate) fn encode_frame(buf: &mut Vec<u8>, rec: &Record) -> Result<usize, String> {
    let start = buf.len();
    buf.extend_from_slice(&[0; FRAME_HEADER]);
    if let Err(e) = serde_json::to_writer(&mut *buf, rec) {
        buf.truncate(start);
        return Err(e.to_string());
    }
    let body_len = buf.len() - start - FRAME_HEADER;
    if body_len > MAX_BODY {
        buf.truncate(start);
        return Err(format!(
            "record of {body_len} bytes over the {MAX_BODY}-byte limit"
        ));
    }
    let crc = crc32fast::hash(&buf[start + FRAME_HEADER..]);
    buf[start..start + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(buf.len() - start)
}

/// What [`FrameReader::next`] found at its position.
#[derive(Debug)]
pub(crate) enum Frame {
    /// A record; the reader is now past it.
    Record(Record),
    /// The position is exactly the limit.
    End,
    /// A frame starts here but does not end before the limit (a write in progress, or torn).
    Partial,
    /// The frame here is damaged (CRC, JSON, length); the reader did not move.
    Corrupt(String),
}

/// Reads frames of one segment file from a position, through its own file handle.
#[derive(Debug)]
pub(crate) struct FrameReader {
    file: BufReader<File>,
    pos: u64,
}

impl FrameReader {
    /// Opens `path` and positions at `pos` (at least [`HEADER_LEN`]).
    pub(crate) fn open(path: &Path, pos: u64) -> io::Result<Self> {
        let file = File::open(path)?;
        let mut r = Self {
            file: BufReader::with_capacity(64 << 10, file),
            pos: 0,
        };
        r.seek(pos.max(HEADER_LEN))?;
        Ok(r)
    }

    /// Where the next frame starts.
    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    /// Moves to `pos`.
    pub(crate) fn seek(&mut self, pos: u64) -> io::Result<()> {
        self.file.seek(SeekFrom::Start(pos))?;
        self.pos = pos;
        Ok(())
    }

    /// Checks the magic and version (`Err` names what is wrong); leaves the reader at
    /// [`HEADER_LEN`].
    pub(crate) fn check_header(&mut self, limit: u64) -> io::Result<Result<(), String>> {
        if limit < HEADER_LEN {
            return Ok(Err(format!("{limit} bytes, shorter than the header")));
        }
        self.seek(0)?;
        let mut h = [0; HEADER_LEN as usize];
        let read = self.file.read_exact(&mut h);
        self.seek(HEADER_LEN)?;
        match read {
            Ok(()) if h == header() => Ok(Ok(())),
            Ok(()) => Ok(Err(format!("bad magic or version {h:02x?}"))),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Ok(Err("shorter than the header".into()))
            }
            Err(e) => Err(e),
        }
    }

    /// Reads the frame at the position, considering only the bytes before `limit`.
    pub(crate) fn next(&mut self, limit: u64) -> io::Result<Frame> {
        if self.pos >= limit {
            return Ok(Frame::End);
        }
        if limit - self.pos < FRAME_HEADER as u64 {
            return Ok(Frame::Partial);
        }
        let mut head = [0; FRAME_HEADER];
        if let Err(e) = self.file.read_exact(&mut head) {
            return self.short_read(e);
        }
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if len == 0 || len > MAX_BODY {
            return self.corrupt(format!("frame length {len}"));
        }
        if limit - self.pos < (FRAME_HEADER + len) as u64 {
            return self.partial();
        }
        let mut body = vec![0; len];
        if let Err(e) = self.file.read_exact(&mut body) {
            return self.short_read(e);
        }
        if crc32fast::hash(&body) != crc {
            return self.corrupt("crc mismatch".into());
        }
        match serde_json::from_slice::<Record>(&body) {
            Ok(rec) => {
                self.pos += (FRAME_HEADER + len) as u64;
                Ok(Frame::Record(rec))
            }
            Err(e) => self.corrupt(format!("undecodable record: {e}")),
        }
    }

    fn short_read(&mut self, e: io::Error) -> io::Result<Frame> {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            // The file is shorter than the limit said (truncated under us).
            self.partial()
        } else {
            Err(e)
        }
    }

    fn partial(&mut self) -> io::Result<Frame> {
        self.seek(self.pos)?;
        Ok(Frame::Partial)
    }

    fn corrupt(&mut self, reason: String) -> io::Result<Frame> {
        self.seek(self.pos)?;
        Ok(Frame::Corrupt(reason))
    }
}
