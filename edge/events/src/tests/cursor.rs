use super::*;
use crate::SpoolError;
use std::io::{Read, Seek, SeekFrom, Write};

#[tokio::test]
async fn a_damaged_middle_segment_is_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SpoolConfig {
        segment_bytes: 1_000,
        ..cfg(dir.path())
    };
    let spool = Spool::open(cfg.clone(), None).await.unwrap();
    append_n(&spool, 1..=40).await;
    drop(spool);
    let files = segment_files(dir.path());
    assert!(files.len() >= 4, "{files:?}");
    let second =
        crate::spool::segment::parse_segment_name(files[1].file_name().unwrap().to_str().unwrap())
            .unwrap();
    let third =
        crate::spool::segment::parse_segment_name(files[2].file_name().unwrap().to_str().unwrap())
            .unwrap();
    // Damage the body of the second frame of the second segment.
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&files[1])
        .unwrap();
    let mut len = [0; 4];
    f.seek(SeekFrom::Start(8)).unwrap();
    f.read_exact(&mut len).unwrap();
    let second_frame = 8 + 8 + u64::from(u32::from_le_bytes(len));
    f.seek(SeekFrom::Start(second_frame + 8 + 20)).unwrap();
    f.write_all(b"#").unwrap();
    drop(f);

    let registry = prometheus::Registry::new();
    let spool = Spool::open(cfg, Some(&registry)).await.unwrap();
    let mut cursor = spool.cursor("kafka").unwrap();
    let expected: Vec<u64> = (1..=second).chain(third..=40).collect();
    let records = read_n(&mut cursor, expected.len()).await;
    assert_eq!(seqs(&records), expected);
    assert!(nothing_more(&mut cursor).await);
    assert_eq!(
        metric(&registry, "edge_events_corrupt_frames_total", &[]),
        1.0
    );
}

#[tokio::test]
async fn two_cursors_progress_independently_and_persist() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path()).await;
    let mut kafka = spool.cursor("kafka").unwrap();
    let mut progress_cursor = spool.cursor("progress").unwrap();
    append_n(&spool, 1..=20).await;

    assert_eq!(seqs(&read_n(&mut kafka, 20).await).last(), Some(&20));
    kafka.commit(15).await.unwrap();
    assert_eq!(
        seqs(&read_n(&mut progress_cursor, 5).await),
        [1, 2, 3, 4, 5]
    );
    progress_cursor.commit(3).await.unwrap();
    assert_eq!(
        spool.stats().cursors,
        [("kafka".to_string(), 16), ("progress".to_string(), 4)]
    );
    drop((kafka, progress_cursor, spool));

    let spool = open(dir.path()).await;
    let mut kafka = spool.cursor("kafka").unwrap();
    let mut progress_cursor = spool.cursor("progress").unwrap();
    assert_eq!((kafka.position(), progress_cursor.position()), (16, 4));
    assert_eq!(seqs(&read_n(&mut kafka, 5).await), [16, 17, 18, 19, 20]);
    assert_eq!(seqs(&read_n(&mut progress_cursor, 2).await), [4, 5]);
    // The restored positions carry their byte offsets: the backlog is exact.
    let file = segment_files(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&file).unwrap().len();
    let mut frames = crate::spool::segment::FrameReader::open(&file, 8).unwrap();
    for _ in 1..=3 {
        frames.next(len).unwrap();
    }
    assert_eq!(spool.stats().backlog_bytes, len - frames.pos());
}

#[tokio::test]
async fn a_cursor_opens_once_and_needs_a_plain_name() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path()).await;
    let cursor = spool.cursor("kafka").unwrap();
    assert!(matches!(spool.cursor("kafka"), Err(SpoolError::CursorInUse(n)) if n == "kafka"));
    drop(cursor);
    spool.cursor("kafka").unwrap();
    for bad in ["", "../x", "a.tmp", "a b"] {
        assert!(
            matches!(spool.cursor(bad), Err(SpoolError::Io { .. })),
            "{bad:?}"
        );
    }
}

#[tokio::test]
async fn next_batch_waits_for_an_append() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path()).await;
    let mut cursor = spool.cursor("kafka").unwrap();
    let reader = tokio::spawn(async move { read_n(&mut cursor, 2).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    append_n(&spool, 1..=2).await;
    let records = tokio::time::timeout(PATIENCE, reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(positions(&records), [1, 2]);
}

#[tokio::test]
async fn rewind_reads_again_after_the_committed_position() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path()).await;
    let mut cursor = spool.cursor("kafka").unwrap();
    append_n(&spool, 1..=6).await;
    assert_eq!(seqs(&read_n(&mut cursor, 5).await), [1, 2, 3, 4, 5]);
    cursor.commit(2).await.unwrap();
    assert_eq!(cursor.position(), 6);
    cursor.rewind_to_committed();
    assert_eq!(cursor.position(), 3);
    assert_eq!(seqs(&read_n(&mut cursor, 4).await), [3, 4, 5, 6]);
    // Committing past what was read moves the reading too.
    append_n(&spool, 7..=9).await;
    cursor.commit(8).await.unwrap();
    assert_eq!(seqs(&read_n(&mut cursor, 1).await), [9]);
}

#[tokio::test]
async fn a_closed_spool_ends_its_cursors_after_the_last_record() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path()).await;
    let mut cursor = spool.cursor("kafka").unwrap();
    append_n(&spool, 1..=3).await;
    drop(spool);
    assert_eq!(seqs(&read_n(&mut cursor, 3).await), [1, 2, 3]);
    let end = tokio::time::timeout(PATIENCE, cursor.next_batch(10))
        .await
        .unwrap();
    assert!(matches!(end, Err(SpoolError::Closed)), "{end:?}");
}

#[tokio::test]
async fn a_cancelled_next_batch_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SpoolConfig {
        segment_bytes: 600,
        ..cfg(dir.path())
    };
    let spool = Spool::open(cfg, None).await.unwrap();
    let mut cursor = spool.cursor("kafka").unwrap();
    append_n(&spool, 1..=100).await;
    let mut read = Vec::new();
    let mut attempts = 0;
    while cursor.position() <= 100 {
        attempts += 1;
        assert!(attempts < 100_000, "stuck at {:?}", seqs(&read).last());
        // Give up after 1 to 8 polls, 30 µs apart: reads are cut at every await point.
        let limit = 1 + attempts % 8;
        let mut polls = 0;
        let next = cursor.next_batch(7);
        let mut next = std::pin::pin!(next);
        let batch = std::future::poll_fn(|cx| {
            polls += 1;
            match next.as_mut().poll(cx) {
                std::task::Poll::Ready(r) => std::task::Poll::Ready(Some(r)),
                std::task::Poll::Pending if polls >= limit => std::task::Poll::Ready(None),
                std::task::Poll::Pending => {
                    std::thread::sleep(Duration::from_micros(30));
                    cx.waker().wake_by_ref();
                    std::task::Poll::Pending
                }
            }
        })
        .await;
        if let Some(batch) = batch {
            read.extend(batch.unwrap());
        }
    }
    assert_eq!(seqs(&read), (1..=100).collect::<Vec<_>>());
}
