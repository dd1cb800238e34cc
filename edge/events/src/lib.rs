//! Edge events: typed structs (one per kind), the durable spool they are appended to before
//! anyone is told "done", and the loop that ships the spool to a [`Sink`] (Kafka in
//! `edge-kafka`) in order, advancing a persisted cursor.
//!
//! ```text
//!  API handler ──append (waits: written + synced per FsyncPolicy)──►┐
//!  pipeline ─────emit (never waits; dropped + counted when full)────►├─ Spool (segment files)
//!                                                                    │   cursors: "kafka", "progress"
//!                                  shipper (spawn_shipper) ◄─────────┘   (persisted, one file each)
//!                                    └─► Sink::deliver(batch) ─► commit cursor
//! ```
//!
//! The JSON of the streaming events is exactly what the replaced streaming service published
//! (`user_id`, `movie_id`, `action`, `position_seconds`, `timestamp`, in that order).
//!
//! # The spool directory
//!
//! ```text
//! dir/LOCK                       flock held by the open Spool: a second opener gets SpoolError::Locked
//! dir/00000000000000000001.log   segments, named by the seq of their first record (20 digits)
//! dir/cursors/<name>             {"next":…,"segment":…,"offset":…}: everything below next is committed
//! dir/next_seq                   a lower bound of the next seq (seqs are never reused)
//! ```
//!
//! A segment starts with the magic `EDEV` and the version (u32 LE, 1); then frames of
//! `u32 LE body length | u32 LE crc32 of the body | body`, the body being the JSON of a
//! [`Record`] (its payload byte for byte). A segment is closed once it reaches
//! [`SpoolConfig::segment_bytes`]; only the last one is written to.
//!
//! **Writing.** One writer thread owns the last segment (a thread rather than a tokio task:
//! every `write` and fdatasync blocks, for up to milliseconds, and on a 2-core machine a blocked
//! runtime worker is half the request path). It takes everything queued
//! ([`Spool::append`], [`Spool::emit`], [`Spool::flush`]) into one buffer, writes it with one
//! `write`, syncs once per [`FsyncPolicy`] and then answers every waiter (group commit). A failed
//! write or sync is cut off the file and answered with [`SpoolError::Io`] to each waiter of the
//! batch; later appends go on. Records become visible to cursors once acknowledged.
//!
//! **Opening.** The tail of the last segment is read: a torn or damaged frame at its end, and
//! everything after it, is truncated away (logged with the bytes dropped). Other segments are
//! checked when read: a cursor skips the rest of a segment after a damaged frame (logged and
//! counted in `edge_events_corrupt_frames_total`).
//!
//! **Backlog and retention.** The backlog is the bytes of records after the lowest committed
//! position of the cursors open in this process (0 without cursors); at
//! [`SpoolConfig::max_backlog`] records are refused. Segments entirely below every open cursor's
//! committed position (without cursors: every closed segment) are history: the oldest are
//! deleted beyond [`SpoolConfig::retain`] bytes of it, when a cursor commits or a segment is
//! closed. Records nobody has consumed are never deleted while their cursor is open.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use edge_events::{NewRecord, Spool, SpoolConfig, StreamStart, timestamp};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let cfg = SpoolConfig { dir: dir.path().into(), ..SpoolConfig::default() };
//! let spool = Spool::open(cfg, None).await?;
//! let mut cursor = spool.cursor("kafka")?;
//!
//! let event = StreamStart {
//!     user_id: "u1".into(),
//!     movie_id: "m1".into(),
//!     action: "stream_start".into(),
//!     timestamp: timestamp(std::time::SystemTime::now()),
//! };
//! let seq = spool.append(NewRecord::new(&event, "session-1")).await?; // durable now
//!
//! let batch = cursor.next_batch(100).await?;
//! assert_eq!(batch[0].decode::<StreamStart>(), Some(event));
//! cursor.commit(seq).await?; // persisted: a restart resumes after it
//! # Ok::<(), edge_events::SpoolError>(())
//! # }).unwrap();
//! ```

mod cursor;
mod error;
mod metrics;
mod ship;
mod spool;
mod tail;
#[cfg(test)]
mod tests;
mod types;

pub use cursor::Cursor;
pub use error::SpoolError;
pub use ship::{ShipperConfig, spawn_shipper};
pub use spool::{FsyncPolicy, Spool, SpoolConfig, SpoolStats};
pub use tail::{TailOptions, tail};
pub use types::{
    CacheFill, Event, EventKind, NewRecord, PolicyDenied, ProgressUpdate, Record, SignalingPeers,
    StreamStart, StreamStop, Topics, timestamp,
};

/// A destination the shipper drains the spool into.
#[async_trait::async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Short name for logs and metrics (`kafka`).
    fn name(&self) -> &str;

    /// Delivers `batch` (in spool order, only records with `publish = true`) and returns once
    /// every record is acknowledged by the destination. On failure, reports how many records
    /// at the *front* of the batch were delivered; the shipper commits those and retries the
    /// rest after a back-off. A sink must keep per-key order: a record is never acknowledged
    /// before an earlier record with the same key.
    async fn deliver(&self, batch: &[Record]) -> Result<(), Undelivered>;
}

/// A batch was not (entirely) delivered.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{delivered} of the batch delivered, then: {reason}")]
pub struct Undelivered {
    /// How many records at the front of the batch were delivered.
    pub delivered: usize,
    /// Why the rest was not.
    pub reason: String,
}
