//! Tests on real files in temporary directories.

mod cursor;
mod ship;
mod spool;
mod tail;

use crate::{
    CacheFill, Cursor, NewRecord, ProgressUpdate, Record, Spool, SpoolConfig, StreamStart,
};
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

/// Longest wait for anything that should happen at once.
const PATIENCE: Duration = Duration::from_secs(10);

fn cfg(dir: &Path) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_path_buf(),
        ..SpoolConfig::default()
    }
}

/// A `stream.progress` record numbered `i` (key `s<i % 3>`).
fn progress(i: u64) -> NewRecord {
    let event = ProgressUpdate {
        user_id: format!("u{i}"),
        movie_id: "m1".into(),
        action: "progress_update".into(),
        position_seconds: i,
        timestamp: "2024-11-15T10:30:00.123456".into(),
    };
    NewRecord::new(&event, format!("s{}", i % 3))
}

fn start(i: u64) -> NewRecord {
    let event = StreamStart {
        user_id: format!("u{i}"),
        movie_id: "m1".into(),
        action: "stream_start".into(),
        timestamp: "2024-11-15T10:30:00.123456".into(),
    };
    NewRecord::new(&event, format!("s{i}"))
}

fn fill(i: u64) -> NewRecord {
    let event = CacheFill {
        path: format!("/vod/m1/seg_{i}.ts"),
        source: "origin".into(),
        result: "ok".into(),
        bytes: 1000 + i,
        millis: 3,
        timestamp: "2024-11-15T10:30:00.123456".into(),
    };
    NewRecord::new(&event, "")
}

async fn open(dir: &Path) -> Spool {
    Spool::open(cfg(dir), None).await.unwrap()
}

async fn append_n(spool: &Spool, range: std::ops::RangeInclusive<u64>) -> Vec<u64> {
    let mut seqs = Vec::new();
    for i in range {
        seqs.push(spool.append(progress(i)).await.unwrap());
    }
    seqs
}

/// Reads until `n` records arrived (failing after [`PATIENCE`]).
async fn read_n(cursor: &mut Cursor, n: usize) -> Vec<Record> {
    let mut out = Vec::new();
    while out.len() < n {
        let batch = tokio::time::timeout(PATIENCE, cursor.next_batch(n - out.len()))
            .await
            .expect("records in time")
            .unwrap();
        out.extend(batch);
    }
    out
}

/// `true` when no record arrives within a short while.
async fn nothing_more(cursor: &mut Cursor) -> bool {
    tokio::time::timeout(Duration::from_millis(200), cursor.next_batch(10))
        .await
        .is_err()
}

fn positions(records: &[Record]) -> Vec<u64> {
    records
        .iter()
        .map(|r| r.decode::<ProgressUpdate>().unwrap().position_seconds)
        .collect()
}

fn seqs(records: &[Record]) -> Vec<u64> {
    records.iter().map(|r| r.seq).collect()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    crate::spool::segment::list_segments(dir)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

/// The sum of the samples of `name` (a counter, a gauge, or a histogram's `_count`) whose labels
/// include `labels`, read from the text exposition.
fn metric(registry: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}
