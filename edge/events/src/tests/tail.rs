use super::*;
use crate::{EventKind, TailOptions, tail};
use serde_json::Value;
use tokio::sync::mpsc;

async fn tail_lines(dir: &Path, opts: TailOptions) -> Vec<Value> {
    let mut out = Vec::new();
    tail(dir, opts, &mut out).await.unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn tail_prints_one_json_line_per_record() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path()).await;
    spool.append(start(1)).await.unwrap();
    append_n(&spool, 2..=3).await;
    spool.append(fill(4).unpublished()).await.unwrap();

    let lines = tail_lines(dir.path(), TailOptions::default()).await;
    assert_eq!(lines.len(), 4);
    let first = &lines[0];
    assert_eq!(first["seq"], 1);
    assert_eq!(first["kind"], "stream.start");
    assert_eq!(first["key"], "s1");
    assert_eq!(first["publish"], true);
    assert_eq!(first["payload"]["action"], "stream_start");
    assert_eq!(first["payload"]["user_id"], "u1");
    let at = first["at"].as_str().unwrap();
    assert!(
        at.len() == 26 && at.as_bytes()[10] == b'T' && !at.ends_with('Z'),
        "{at}"
    );
    assert_eq!(lines[3]["kind"], "cache.fill");
    assert_eq!(lines[3]["publish"], false);
    // Keys are printed in the record's field order.
    let mut raw = Vec::new();
    tail(dir.path(), TailOptions::default(), &mut raw)
        .await
        .unwrap();
    let line = String::from_utf8(raw).unwrap();
    assert!(
        line.starts_with(
            "{\"seq\":1,\"kind\":\"stream.start\",\"key\":\"s1\",\"publish\":true,\"at\":"
        ),
        "{line}"
    );
}

#[tokio::test]
async fn tail_last_n_of_a_kind_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SpoolConfig {
        segment_bytes: 600,
        ..cfg(dir.path())
    };
    let spool = Spool::open(cfg, None).await.unwrap();
    for i in 1..=30 {
        let rec = if i % 2 == 0 { fill(i) } else { progress(i) };
        spool.append(rec).await.unwrap();
    }
    assert!(segment_files(dir.path()).len() > 3);
    let opts = TailOptions {
        last: Some(5),
        follow: false,
        kind: Some(EventKind::ProgressUpdate),
    };
    let lines = tail_lines(dir.path(), opts).await;
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [21, 23, 25, 27, 29]);
}

/// Sends what is written, line by line.
struct Lines(mpsc::UnboundedSender<Value>, Vec<u8>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.1.extend_from_slice(buf);
        while let Some(end) = self.1.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.1.drain(..=end).collect();
            let _ = self.0.send(serde_json::from_slice(&line).unwrap());
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn tail_follows_appends_and_new_segments() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SpoolConfig {
        segment_bytes: 600,
        ..cfg(dir.path())
    };
    let spool = Spool::open(cfg, None).await.unwrap();
    append_n(&spool, 1..=2).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let path = dir.path().to_path_buf();
    let follower = tokio::spawn(async move {
        let mut out = Lines(tx, Vec::new());
        let opts = TailOptions {
            last: Some(1),
            follow: true,
            kind: None,
        };
        tail(&path, opts, &mut out).await
    });
    let mut next = async || {
        tokio::time::timeout(PATIENCE, rx.recv())
            .await
            .expect("a line in time")
            .unwrap()["seq"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(next().await, 2);
    append_n(&spool, 3..=3).await;
    assert_eq!(next().await, 3);
    // Enough to roll over several segments.
    append_n(&spool, 4..=20).await;
    for seq in 4..=20 {
        assert_eq!(next().await, seq);
    }
    assert!(segment_files(dir.path()).len() > 2);
    follower.abort();
}
