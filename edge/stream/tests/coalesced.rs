//! A coalesced progress report owed its `stream.progress` event survives a crash: the next run
//! finds it in the spool and publishes it once; after a clean stop nothing is published twice.

use edge_events::{EventKind, ProgressUpdate, Record, Spool, SpoolConfig};
use edge_stream::{LocalProgress, Position, Progress, ProgressStore, StoreError, ViewerKey};
use std::{path::Path, sync::Arc, time::Duration};
use tokio::{sync::watch, task::JoinHandle};

const INTERVAL: Duration = Duration::from_millis(300);

/// The local store, checkpointed after every batch as Redis is: the applier would commit its
/// cursor right away if nothing held it back.
struct EveryBatch(LocalProgress);

#[async_trait::async_trait]
impl ProgressStore for EveryBatch {
    async fn get(&self, user: &str, movie: &str) -> Result<Option<Position>, StoreError> {
        self.0.get(user, movie).await
    }
    async fn put(&self, entries: &[(ViewerKey, Position)]) -> Result<(), StoreError> {
        self.0.put(entries).await
    }
    async fn checkpoint(&self) -> Result<(), StoreError> {
        self.0.checkpoint().await
    }
    fn kind(&self) -> &'static str {
        "local"
    }
}

struct Run {
    progress: Arc<Progress>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

async fn open_spool(dir: &Path) -> Spool {
    let cfg = SpoolConfig {
        dir: dir.join("events"),
        ..SpoolConfig::default()
    };
    Spool::open(cfg, None).await.unwrap()
}

async fn start(dir: &Path) -> Run {
    let spool = open_spool(dir).await;
    let store = LocalProgress::open(dir.join("progress.json"), Duration::from_secs(3600)).unwrap();
    let progress = Arc::new(Progress::new(
        Arc::new(EveryBatch(store)),
        spool.clone(),
        INTERVAL,
    ));
    let (stop, stop_rx) = watch::channel(false);
    let tasks = vec![
        progress
            .clone()
            .spawn_applier(spool.cursor("progress").unwrap(), stop_rx.clone()),
        progress.clone().spawn_trailing(stop_rx),
    ];
    Run {
        progress,
        stop,
        tasks,
    }
}

impl Run {
    async fn crash(self) {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
    }

    async fn shut_down(self) {
        self.stop.send(true).unwrap();
        for t in self.tasks {
            t.await.unwrap();
        }
    }
}

/// Positions of the published `stream.progress` records, in spool order.
async fn published(dir: &Path) -> Vec<u64> {
    let spool = open_spool(dir).await;
    let end = spool.stats().next_seq;
    let mut cursor = spool.cursor("check").unwrap();
    let mut records: Vec<Record> = Vec::new();
    while records.last().is_none_or(|r| r.seq + 1 < end) {
        records.extend(cursor.next_batch(100).await.unwrap());
    }
    records
        .iter()
        .filter(|r| r.publish && r.kind == EventKind::ProgressUpdate)
        .map(|r| r.decode::<ProgressUpdate>().unwrap().position_seconds)
        .collect()
}

#[tokio::test]
async fn a_coalesced_report_is_published_once_across_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let run = start(dir.path()).await;
    for position in [10, 20, 30] {
        run.progress
            .record("u1", "m1", position, "s1".into())
            .await
            .unwrap();
    }
    // Long enough for the applier to take every report (and try to commit), shorter than the
    // interval after which 30 would be published.
    tokio::time::sleep(INTERVAL / 3).await;
    run.crash().await;
    assert_eq!(published(dir.path()).await, [10], "30 is still owed");

    let run = start(dir.path()).await;
    tokio::time::sleep(INTERVAL * 3).await;
    assert_eq!(
        run.progress
            .get("u1", "m1")
            .await
            .unwrap()
            .unwrap()
            .position_seconds,
        30
    );
    run.shut_down().await;
    assert_eq!(published(dir.path()).await, [10, 30]);

    let run = start(dir.path()).await;
    tokio::time::sleep(INTERVAL * 3).await;
    run.shut_down().await;
    assert_eq!(
        published(dir.path()).await,
        [10, 30],
        "published once, not again by the next run"
    );
}

#[tokio::test]
async fn a_report_recorded_again_after_the_crash_supersedes_the_owed_one() {
    let dir = tempfile::tempdir().unwrap();
    let run = start(dir.path()).await;
    for position in [10, 20] {
        run.progress
            .record("u1", "m1", position, "s1".into())
            .await
            .unwrap();
    }
    tokio::time::sleep(INTERVAL / 3).await;
    run.crash().await;

    let run = start(dir.path()).await;
    run.progress
        .record("u1", "m1", 25, "s2".into())
        .await
        .unwrap();
    tokio::time::sleep(INTERVAL * 3).await;
    run.shut_down().await;
    assert_eq!(published(dir.path()).await, [10, 25]);
}
