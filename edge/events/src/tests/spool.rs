use super::*;
use crate::{FsyncPolicy, SpoolError};
use std::{
    io::{Seek, SeekFrom, Write},
    sync::atomic::Ordering,
};

#[tokio::test]
async fn append_and_reopen_recover_seq_and_records() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path()).await;
    assert_eq!(append_n(&spool, 1..=10).await, (1..=10).collect::<Vec<_>>());
    let payloads: Vec<String> = (1..=10).map(|i| progress(i).payload.to_string()).collect();
    drop(spool);

    let spool = open(dir.path()).await;
    let stats = spool.stats();
    assert_eq!(
        (stats.next_seq, stats.oldest_seq, stats.segments),
        (11, 1, 1)
    );
    let mut cursor = spool.cursor("local").unwrap();
    let records = read_n(&mut cursor, 10).await;
    assert_eq!(seqs(&records), (1..=10).collect::<Vec<_>>());
    let read: Vec<String> = records.iter().map(|r| r.payload.get().to_owned()).collect();
    assert_eq!(read, payloads, "payloads byte for byte");
    assert_eq!(records[4].key, "s2");
    assert!(records.iter().all(|r| r.publish && r.at_ms > 0));
    assert_eq!(spool.append(progress(11)).await.unwrap(), 11);
}

#[tokio::test]
async fn torn_tail_is_truncated_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path()).await;
    append_n(&spool, 1..=5).await;
    drop(spool);
    let file = segment_files(dir.path()).pop().unwrap();
    let good = std::fs::metadata(&file).unwrap().len();
    // A frame header announcing 200 bytes, then only 10 of them.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap();
    f.write_all(&200u32.to_le_bytes()).unwrap();
    f.write_all(&[7; 14]).unwrap();
    drop(f);

    let registry = prometheus::Registry::new();
    let spool = Spool::open(cfg(dir.path()), Some(&registry)).await.unwrap();
    assert_eq!(std::fs::metadata(&file).unwrap().len(), good);
    assert_eq!(
        metric(&registry, "edge_events_corrupt_frames_total", &[]),
        1.0
    );
    let mut cursor = spool.cursor("local").unwrap();
    assert_eq!(positions(&read_n(&mut cursor, 5).await), [1, 2, 3, 4, 5]);
    assert_eq!(spool.append(progress(6)).await.unwrap(), 6);
    assert_eq!(seqs(&read_n(&mut cursor, 1).await), [6]);
}

#[tokio::test]
async fn damaged_last_frame_is_truncated_and_its_seq_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path()).await;
    append_n(&spool, 1..=5).await;
    drop(spool);
    let file = segment_files(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&file).unwrap().len();
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&file)
        .unwrap();
    f.seek(SeekFrom::Start(len - 3)).unwrap();
    f.write_all(b"X").unwrap();
    drop(f);

    let spool = open(dir.path()).await;
    assert!(std::fs::metadata(&file).unwrap().len() < len);
    let mut cursor = spool.cursor("local").unwrap();
    assert_eq!(positions(&read_n(&mut cursor, 4).await), [1, 2, 3, 4]);
    assert!(nothing_more(&mut cursor).await);
    // Seq 5 was acknowledged once: it is never given to another record.
    assert_eq!(spool.append(progress(6)).await.unwrap(), 6);
}

#[tokio::test]
async fn seq_continues_after_every_segment_was_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path()).await;
    append_n(&spool, 1..=3).await;
    drop(spool);
    for f in segment_files(dir.path()) {
        std::fs::remove_file(f).unwrap();
    }
    let spool = open(dir.path()).await;
    assert_eq!(spool.stats().next_seq, 4);
    assert_eq!(spool.append(progress(4)).await.unwrap(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_writes_and_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let registry = prometheus::Registry::new();
    let spool = Spool::open(cfg(dir.path()), Some(&registry)).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 1..=200 {
        let spool = spool.clone();
        tasks.spawn(async move { spool.append(progress(i)).await.unwrap() });
    }
    let mut acked = tasks.join_all().await;
    acked.sort_unstable();
    assert_eq!(acked, (1..=200).collect::<Vec<_>>());
    let mut cursor = spool.cursor("local").unwrap();
    assert_eq!(seqs(&read_n(&mut cursor, 200).await), acked);
    let fsyncs = spool.shared().fsyncs.load(Ordering::Relaxed);
    assert!(fsyncs > 0 && fsyncs < 50, "{fsyncs} fsyncs for 200 appends");
    assert_eq!(
        metric(&registry, "edge_events_fsync_seconds_count", &[]),
        fsyncs as f64
    );
    assert_eq!(
        metric(
            &registry,
            "edge_events_appended_total",
            &[("kind", "stream.progress")]
        ),
        200.0
    );
}

#[tokio::test]
async fn every_policy_appends_emits_and_flushes() {
    for fsync in [
        FsyncPolicy::Always,
        FsyncPolicy::Interval,
        FsyncPolicy::Never,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SpoolConfig {
            fsync,
            fsync_interval: Duration::from_millis(20),
            ..cfg(dir.path())
        };
        let spool = Spool::open(cfg, None).await.unwrap();
        assert_eq!(spool.append(progress(1)).await.unwrap(), 1);
        for i in 2..=100 {
            assert!(spool.emit(progress(i)));
        }
        spool.flush().await.unwrap();
        assert_eq!(spool.stats().next_seq, 101, "{fsync:?}");
        let mut cursor = spool.cursor("local").unwrap();
        assert_eq!(
            positions(&read_n(&mut cursor, 100).await),
            (1..=100).collect::<Vec<_>>()
        );
        if fsync == FsyncPolicy::Interval {
            let synced = spool.shared().fsyncs.load(Ordering::Relaxed);
            spool.append(progress(101)).await.unwrap();
            tokio::time::timeout(PATIENCE, async {
                while spool.shared().fsyncs.load(Ordering::Relaxed) == synced {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .expect("the interval timer syncs");
        }
    }
}

#[tokio::test]
async fn under_always_emits_are_synced_with_the_next_append_or_within_the_interval() {
    let fsyncs = |spool: &Spool| spool.shared().fsyncs.load(Ordering::Relaxed);
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(
        SpoolConfig {
            fsync_interval: Duration::from_secs(3600),
            ..cfg(dir.path())
        },
        None,
    )
    .await
    .unwrap();
    let mut cursor = spool.cursor("local").unwrap();
    for i in 1..=50 {
        assert!(spool.emit(progress(i)));
    }
    read_n(&mut cursor, 50).await;
    assert_eq!(fsyncs(&spool), 0, "written, nobody waits: not synced yet");
    spool.append(progress(51)).await.unwrap();
    assert_eq!(
        fsyncs(&spool),
        1,
        "the append's sync covers the emits before it"
    );
    drop((cursor, spool));

    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(
        SpoolConfig {
            fsync_interval: Duration::from_millis(20),
            ..cfg(dir.path())
        },
        None,
    )
    .await
    .unwrap();
    assert!(spool.emit(progress(1)));
    tokio::time::timeout(PATIENCE, async {
        while fsyncs(&spool) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the interval timer syncs emitted records");
}

#[tokio::test]
async fn backlog_limit_refuses_records_until_a_commit() {
    let dir = tempfile::tempdir().unwrap();
    let registry = prometheus::Registry::new();
    let cfg = SpoolConfig {
        max_backlog: 2_000,
        ..cfg(dir.path())
    };
    let spool = Spool::open(cfg, Some(&registry)).await.unwrap();
    // Without a cursor the spool is a bounded log: nothing is refused.
    append_n(&spool, 1..=20).await;
    assert_eq!(spool.stats().backlog_bytes, 0);

    let mut cursor = spool.cursor("kafka").unwrap();
    let records = read_n(&mut cursor, 20).await;
    cursor.commit(records[19].seq).await.unwrap();
    assert_eq!(spool.stats().backlog_bytes, 0);
    let mut accepted = 0;
    let refused = loop {
        match spool.append(progress(100 + accepted)).await {
            Ok(_) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 100, "never refused");
    };
    assert!(
        matches!(refused, SpoolError::Full { backlog, limit: 2_000 } if backlog >= 2_000),
        "{refused:?}"
    );
    assert!(!spool.emit(fill(1)));
    let next = spool.stats().next_seq;
    assert!(spool.stats().backlog_bytes >= 2_000);
    assert_eq!(
        metric(
            &registry,
            "edge_events_dropped_total",
            &[("reason", "full")]
        ),
        2.0
    );
    assert_eq!(
        metric(&registry, "edge_events_spool_limit_bytes", &[]),
        2_000.0
    );

    let records = read_n(&mut cursor, accepted as usize).await;
    assert_eq!(
        records.last().unwrap().seq,
        next - 1,
        "nothing refused was written"
    );
    cursor.commit(next - 1).await.unwrap();
    assert_eq!(spool.stats().backlog_bytes, 0);
    assert!(spool.emit(fill(2)));
    assert_eq!(spool.append(progress(1)).await.unwrap(), next + 1);
}

#[tokio::test]
async fn retention_deletes_consumed_segments_beyond_retain_only() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SpoolConfig {
        segment_bytes: 1_000,
        retain: 2_000,
        ..cfg(dir.path())
    };
    let spool = Spool::open(cfg.clone(), None).await.unwrap();
    let mut cursor = spool.cursor("kafka").unwrap();
    append_n(&spool, 1..=100).await;
    let all = segment_files(dir.path()).len();
    assert!(all >= 15, "{all} segments");
    assert_eq!(
        spool.stats().oldest_seq,
        1,
        "nothing consumed, nothing deleted"
    );

    read_n(&mut cursor, 60).await;
    cursor.commit(50).await.unwrap();
    let stats = spool.stats();
    assert!(stats.oldest_seq > 1 && stats.oldest_seq <= 51, "{stats:?}");
    assert!(segment_files(dir.path()).len() < all);
    // The history kept (consumed segments) is at most `retain`.
    let consumed: u64 = segment_files(dir.path())
        .iter()
        .zip(segment_files(dir.path()).iter().skip(1))
        .filter(|(_, next)| {
            crate::spool::segment::parse_segment_name(next.file_name().unwrap().to_str().unwrap())
                .unwrap()
                <= 51
        })
        .map(|(f, _)| std::fs::metadata(f).unwrap().len())
        .sum();
    assert!(consumed <= 2_000, "{consumed} bytes of history");
    drop(cursor);

    // Everything not consumed is still there for the cursor.
    let mut cursor = spool.cursor("kafka").unwrap();
    assert_eq!(cursor.position(), 51);
    assert_eq!(
        positions(&read_n(&mut cursor, 50).await),
        (51..=100).collect::<Vec<_>>()
    );
    drop(cursor);

    // Without cursors, the oldest segments beyond `retain` go when a segment is closed.
    append_n(&spool, 101..=200).await;
    let bytes = spool.stats().bytes_on_disk;
    assert!(bytes <= 2_000 + 2 * 1_000, "{bytes} bytes on disk");
}

#[tokio::test]
async fn a_second_opener_is_refused_until_the_first_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path()).await;
    let cursor = spool.cursor("kafka").unwrap();
    match Spool::open(cfg(dir.path()), None).await {
        Err(SpoolError::Locked(d)) => assert_eq!(d, dir.path()),
        other => panic!("{other:?}"),
    }
    drop(spool);
    assert!(
        matches!(
            Spool::open(cfg(dir.path()), None).await,
            Err(SpoolError::Locked(_))
        ),
        "an open cursor still uses the directory"
    );
    drop(cursor);
    open(dir.path()).await;
}

#[tokio::test]
async fn a_failed_write_acknowledges_nothing_and_the_writer_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let registry = prometheus::Registry::new();
    let spool = Spool::open(cfg(dir.path()), Some(&registry)).await.unwrap();
    append_n(&spool, 1..=3).await;
    let file = segment_files(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&file).unwrap().len();

    spool.shared().fail_writes.store(1, Ordering::Relaxed);
    let err = spool.append(progress(4)).await.unwrap_err();
    assert!(matches!(err, SpoolError::Io { .. }), "{err:?}");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), len, "cut back");

    spool.shared().fail_writes.store(1, Ordering::Relaxed);
    assert!(spool.emit(fill(1)));
    spool.flush().await.unwrap();
    assert_eq!(
        metric(
            &registry,
            "edge_events_dropped_total",
            &[("kind", "cache.fill"), ("reason", "io")]
        ),
        1.0
    );

    assert_eq!(spool.append(progress(5)).await.unwrap(), 4);
    drop(spool);
    let spool = open(dir.path()).await;
    let mut cursor = spool.cursor("local").unwrap();
    assert_eq!(positions(&read_n(&mut cursor, 4).await), [1, 2, 3, 5]);
    assert!(nothing_more(&mut cursor).await);
}
