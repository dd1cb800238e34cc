//! Cost of the events spool on this machine's disk (a temporary directory): `append` throughput
//! with 1 and 64 concurrent appenders under each fsync policy (time per append: with 64
//! appenders, group commit shares each write and fdatasync), the cost of `emit` on the
//! request path (queueing only; the writer drains between measured chunks), and of a whole
//! `cache.fill` event as `Tiers::fill` records it (build, timestamp, serialize, emit).
//!
//! `cargo bench -p edge-bench --bench spool`

#![allow(missing_docs, reason = "criterion_group! generates undocumented items")]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use edge_events::{CacheFill, FsyncPolicy, NewRecord, ProgressUpdate, Spool, SpoolConfig};
use std::time::{Duration, Instant, SystemTime};

fn record() -> NewRecord {
    let event = ProgressUpdate {
        user_id: "user-0123456789".into(),
        movie_id: "movie-42".into(),
        action: "progress_update".into(),
        position_seconds: 1234,
        timestamp: "2024-11-15T10:30:00.123456".into(),
    };
    NewRecord::new(&event, "session-0123456789abcdef")
}

/// No cursor is open: the spool is a bounded log, old segments are deleted as it rolls.
fn open(rt: &tokio::runtime::Runtime, dir: &std::path::Path, fsync: FsyncPolicy) -> Spool {
    let cfg = SpoolConfig {
        dir: dir.to_path_buf(),
        retain: 0,
        segment_bytes: 4 << 20,
        fsync,
        fsync_interval: Duration::from_millis(100),
        ..SpoolConfig::default()
    };
    rt.block_on(Spool::open(cfg, None)).unwrap()
}

fn append(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("spool_append");
    group.throughput(Throughput::Elements(1));
    for fsync in [
        FsyncPolicy::Always,
        FsyncPolicy::Interval,
        FsyncPolicy::Never,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let spool = open(&rt, dir.path(), fsync);
        for appenders in [1u64, 64] {
            group.bench_function(format!("{fsync:?}/{appenders}"), |b| {
                b.to_async(&rt).iter_custom(|iters| {
                    let spool = spool.clone();
                    async move {
                        let per = iters.div_ceil(appenders);
                        let start = Instant::now();
                        let mut tasks = tokio::task::JoinSet::new();
                        for _ in 0..appenders {
                            let spool = spool.clone();
                            tasks.spawn(async move {
                                for _ in 0..per {
                                    spool.append(record()).await.unwrap();
                                }
                            });
                        }
                        tasks.join_all().await;
                        // Per append, scaled to the `iters` criterion asked for.
                        start
                            .elapsed()
                            .mul_f64(iters as f64 / (per * appenders) as f64)
                    }
                });
            });
        }
    }
    group.finish();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `iters` emits in chunks the writer can queue, timing only `timed(n)` (which emits `n`
/// records); the spool is flushed between chunks, outside the measurement.
fn chunked(
    rt: &tokio::runtime::Runtime,
    spool: &Spool,
    iters: u64,
    mut timed: impl FnMut(u64) -> Duration,
) -> Duration {
    const CHUNK: u64 = 10_000;
    let mut measured = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(CHUNK);
        measured += timed(n);
        rt.block_on(spool.flush()).unwrap();
        left -= n;
    }
    measured
}

fn emit(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let spool = open(&rt, dir.path(), FsyncPolicy::Never);
    c.bench_function("spool_emit", |b| {
        b.iter_custom(|iters| {
            chunked(&rt, &spool, iters, |n| {
                let records: Vec<NewRecord> = (0..n).map(|_| record()).collect();
                let start = Instant::now();
                for r in records {
                    assert!(spool.emit(r), "queue full: the writer fell behind");
                }
                start.elapsed()
            })
        });
    });
}

fn cache_fill_event(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let spool = open(&rt, dir.path(), FsyncPolicy::Always);
    let key = "vod/movies/demo/fill/part_0042.ts";
    c.bench_function("cache_fill_event", |b| {
        b.iter_custom(|iters| {
            chunked(&rt, &spool, iters, |n| {
                let start = Instant::now();
                for _ in 0..n {
                    let fill = CacheFill {
                        path: key.to_owned(),
                        source: "origin".to_owned(),
                        result: "ok".to_owned(),
                        bytes: 16384,
                        millis: 1,
                        timestamp: edge_events::timestamp(SystemTime::now()),
                    };
                    assert!(spool.emit(NewRecord::new(&fill, key)), "queue full");
                }
                start.elapsed()
            })
        });
    });
}

criterion_group!(benches, append, emit, cache_fill_event);
criterion_main!(benches);
