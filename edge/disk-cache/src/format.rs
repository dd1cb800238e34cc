//! The entry file: where it lives, how it is encoded, how it is checked.
//!
//! See the crate documentation for the layout; everything here is synchronous and is called from
//! blocking threads.

use crate::Meta;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::{
    fs::{File, Metadata},
    io::Read,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// First four bytes of every entry file.
pub(crate) const MAGIC: &[u8; 4] = b"EDGC";
/// Format version written after the magic: 2, whose header carries the body's XXH3-128.
/// Version 1 files (SHA-256 of the body) are still read, so an upgrade keeps the cache; files of
/// any other version are discarded.
pub(crate) const VERSION: u8 = 2;
/// The version whose body checksum is a SHA-256.
const VERSION_SHA256: u8 = 1;
/// Bytes before the JSON header: magic, version, header length.
pub(crate) const PREFIX_LEN: usize = 4 + 1 + 4;
/// Longest JSON header accepted, so a garbage length cannot make the scan allocate gigabytes.
pub(crate) const MAX_HEADER: usize = 64 * 1024;
/// Name of the directory holding files being written.
pub(crate) const TMP_DIR: &str = "tmp";

/// The JSON header of an entry file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Header {
    pub(crate) key: String,
    pub(crate) etag: Option<String>,
    pub(crate) last_modified_ms: Option<u64>,
    pub(crate) cache_control: Option<String>,
    pub(crate) stored_at_ms: u64,
    pub(crate) expires_at_ms: u64,
    pub(crate) source: String,
    /// Size of the whole object when the body is one slice of it; absent (older entries, whole
    /// objects) = the body is the whole object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) object_len: Option<u64>,
    pub(crate) body_len: u64,
    /// Version 2: XXH3-128 of the body, 32 lowercase hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) xxh3_128: Option<String>,
    /// Version 1: SHA-256 of the body, 64 lowercase hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) sha256: Option<String>,
}

impl Header {
    /// The header describing `body` stored under `key`.
    pub(crate) fn new(key: &str, body: &[u8], meta: &Meta) -> Self {
        Self {
            key: key.to_owned(),
            etag: meta.etag.clone(),
            last_modified_ms: meta.last_modified.map(to_ms),
            cache_control: meta.cache_control.clone(),
            stored_at_ms: to_ms(meta.stored_at),
            expires_at_ms: to_ms(meta.expires_at),
            source: meta.source.clone(),
            object_len: meta.object_size,
            body_len: body.len() as u64,
            xxh3_128: Some(body_checksum(body)),
            sha256: None,
        }
    }

    /// Whether `body` hashes to the checksum this header carries.
    fn checks(&self, body: &[u8]) -> bool {
        match (&self.xxh3_128, &self.sha256) {
            (Some(x), _) => *x == body_checksum(body),
            (None, Some(s)) => *s == hex::encode(Sha256::digest(body)),
            (None, None) => false,
        }
    }

    /// The metadata this header carries.
    pub(crate) fn meta(&self) -> Meta {
        Meta {
            etag: self.etag.clone(),
            last_modified: self.last_modified_ms.map(from_ms),
            cache_control: self.cache_control.clone(),
            stored_at: from_ms(self.stored_at_ms),
            expires_at: from_ms(self.expires_at_ms),
            source: self.source.clone(),
            object_size: self.object_len,
        }
    }

    /// When the entry expires.
    pub(crate) fn expires_at(&self) -> SystemTime {
        from_ms(self.expires_at_ms)
    }

    /// Bytes of the whole file for a JSON header of `header_len` bytes.
    /// Saturates: a hostile `body_len` near `u64::MAX` matches no file instead of overflowing.
    pub(crate) fn file_len(&self, header_len: usize) -> u64 {
        ((PREFIX_LEN + header_len) as u64).saturating_add(self.body_len)
    }

    /// Magic, version, header length and JSON header: everything that precedes the body.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let json = serde_json::to_vec(self).expect("a header of strings and integers serialises");
        let mut out = Vec::with_capacity(PREFIX_LEN + json.len());
        out.extend_from_slice(MAGIC);
        // A header that carries only a SHA-256 (read from a version 1 file) stays version 1.
        out.push(if self.xxh3_128.is_some() {
            VERSION
        } else {
            VERSION_SHA256
        });
        out.extend_from_slice(&(json.len() as u32).to_le_bytes());
        out.extend_from_slice(&json);
        out
    }
}

/// Why a file is not a valid entry.
#[derive(Debug)]
pub(crate) enum Invalid {
    /// Reading failed (the file may be fine).
    Io(std::io::Error),
    /// The content is wrong: the file is to be deleted.
    Corrupt(String),
}

impl From<std::io::Error> for Invalid {
    fn from(e: std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::UnexpectedEof => Self::Corrupt("truncated".into()),
            _ => Self::Io(e),
        }
    }
}

fn corrupt(why: impl Into<String>) -> Invalid {
    Invalid::Corrupt(why.into())
}

/// The checksum of an entry's body: XXH3-128 in lowercase hex. It guards against a damaged
/// disk or a torn write, not an attacker (who could write a matching checksum as easily), so a
/// hash at memory speed replaces version 1's SHA-256, which cost more CPU than serving the entry.
pub(crate) fn body_checksum(body: &[u8]) -> String {
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(body))
}

/// Parses the fixed prefix; returns the JSON header length and the format version.
fn parse_prefix(prefix: &[u8]) -> Result<(usize, u8), Invalid> {
    if prefix.len() < PREFIX_LEN {
        return Err(corrupt("truncated prefix"));
    }
    if &prefix[..4] != MAGIC {
        return Err(corrupt("bad magic"));
    }
    let version = prefix[4];
    if version != VERSION && version != VERSION_SHA256 {
        return Err(corrupt(format!("unknown version {version}")));
    }
    let len = u32::from_le_bytes(prefix[5..9].try_into().expect("4 bytes")) as usize;
    if len > MAX_HEADER {
        return Err(corrupt(format!("header of {len} bytes")));
    }
    Ok((len, version))
}

/// Parses the JSON header of a file of `version`: it must carry that version's checksum (and
/// only that one).
fn parse_header(json: &[u8], version: u8) -> Result<Header, Invalid> {
    let header: Header =
        serde_json::from_slice(json).map_err(|e| corrupt(format!("header: {e}")))?;
    let lower_hex = |s: &str, digits: usize| {
        s.len() == digits
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let ok = match (version, &header.xxh3_128, &header.sha256) {
        (VERSION, Some(x), None) => lower_hex(x, 32),
        (VERSION_SHA256, None, Some(s)) => lower_hex(s, 64),
        _ => false,
    };
    if !ok {
        return Err(corrupt(format!(
            "header: no valid body checksum for version {version} (xxh3_128: 32 lowercase hex \
             digits; version 1 sha256: 64)"
        )));
    }
    Ok(header)
}

/// Reads only the prefix and header of the file at `path` (the scan at open) and checks that the
/// file length matches; returns the header and the file's metadata.
pub(crate) fn read_header(path: &Path) -> Result<(Header, Metadata), Invalid> {
    let (mut file, metadata) = open_entry(path)?;
    let mut prefix = [0u8; PREFIX_LEN];
    file.read_exact(&mut prefix)?;
    let (len, version) = parse_prefix(&prefix)?;
    let mut json = vec![0u8; len];
    file.read_exact(&mut json)?;
    let header = parse_header(&json, version)?;
    let expected = header.file_len(len);
    if metadata.len() != expected {
        return Err(corrupt(format!(
            "{} bytes, the header says {expected}",
            metadata.len()
        )));
    }
    Ok((header, metadata))
}

/// Opens the entry file at `path` for reading: only a plain file. Not a FIFO planted under an
/// entry's name (its open would wait for a writer: `O_NONBLOCK`), not a symlink (`O_NOFOLLOW`);
/// either is damage, to be deleted.
fn open_entry(path: &Path) -> Result<(File, Metadata), Invalid> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => corrupt("a symlink, not an entry file"),
            _ => e.into(),
        })?;
    let metadata = file.metadata()?;
    if !metadata.file_type().is_file() {
        return Err(corrupt("not a plain file"));
    }
    Ok((file, metadata))
}

/// The bytes of the entry file at `path` (see [`open_entry`]).
pub(crate) fn read_entry(path: &Path) -> Result<Vec<u8>, Invalid> {
    let (mut file, metadata) = open_entry(path)?;
    let mut data = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
    file.read_to_end(&mut data)?;
    Ok(data)
}

/// Decodes a whole entry file: checks magic, version, lengths, that it holds `key`, and the body's
/// checksum. Returns the header and the body (a slice of `file`, no copy).
pub(crate) fn decode(file: Bytes, key: &str) -> Result<(Header, Bytes), Invalid> {
    let (len, version) = parse_prefix(&file)?;
    let body_start = PREFIX_LEN + len;
    let json = file
        .get(PREFIX_LEN..body_start)
        .ok_or_else(|| corrupt("truncated header"))?;
    let header = parse_header(json, version)?;
    if header.key != key {
        return Err(corrupt(format!("holds key {:?}", header.key)));
    }
    let expected = header.file_len(len);
    if file.len() as u64 != expected {
        return Err(corrupt(format!(
            "{} bytes, the header says {expected}",
            file.len()
        )));
    }
    let body = file.slice(body_start..);
    if !header.checks(&body) {
        return Err(corrupt("body checksum mismatch"));
    }
    Ok((header, body))
}

/// Lowercase hex sha256 of `key`: the entry's file name.
pub(crate) fn key_hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// `dir/<first 2 hex>/<sha256(key) hex>`.
pub(crate) fn entry_path(dir: &Path, key: &str) -> PathBuf {
    let name = key_hash(key);
    dir.join(&name[..2]).join(name)
}

/// Whether `name` is a shard directory name: two lowercase hex digits.
pub(crate) fn is_shard_name(name: &str) -> bool {
    name.len() == 2
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Milliseconds since the Unix epoch (0 for earlier times, saturating far in the future).
pub(crate) fn to_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The time `ms` milliseconds after the Unix epoch.
pub(crate) fn from_ms(ms: u64) -> SystemTime {
    // Cannot overflow where `SystemTime` has 64-bit seconds; elsewhere, an unrepresentable time
    // reads as the epoch (expired), never as a panic.
    UNIX_EPOCH
        .checked_add(Duration::from_millis(ms))
        .unwrap_or(UNIX_EPOCH)
}
