use super::*;
use crate::{ShipperConfig, Sink, Undelivered, spawn_shipper};
use std::sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering},
};
use tokio::sync::watch;

/// Fails its first `fail_first` calls, having delivered none, half, or all but one of the batch.
struct FlakySink {
    fail_first: usize,
    calls: AtomicUsize,
    delivered: Mutex<Vec<Record>>,
}

impl FlakySink {
    fn new(fail_first: usize) -> Arc<Self> {
        Arc::new(Self {
            fail_first,
            calls: AtomicUsize::new(0),
            delivered: Mutex::new(Vec::new()),
        })
    }

    fn delivered(&self) -> Vec<u64> {
        seqs(&self.delivered.lock().unwrap())
    }
}

#[async_trait::async_trait]
impl Sink for FlakySink {
    fn name(&self) -> &str {
        "fake"
    }

    async fn deliver(&self, batch: &[Record]) -> Result<(), Undelivered> {
        assert!(batch.iter().all(|r| r.publish), "only published records");
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        let n = if call < self.fail_first {
            match call % 3 {
                0 => 0,
                1 => batch.len() / 2,
                _ => batch.len() - 1,
            }
        } else {
            batch.len()
        };
        self.delivered
            .lock()
            .unwrap()
            .extend_from_slice(&batch[..n]);
        if n < batch.len() {
            return Err(Undelivered {
                delivered: n,
                reason: "broker down".into(),
            });
        }
        Ok(())
    }
}

fn quick() -> ShipperConfig {
    ShipperConfig {
        batch: 40,
        backoff_min: Duration::from_millis(1),
        backoff_max: Duration::from_millis(20),
    }
}

/// Appends `range`, every third record unpublished; returns the published seqs.
async fn append_mixed(spool: &Spool, range: std::ops::RangeInclusive<u64>) -> Vec<u64> {
    let mut published = Vec::new();
    for i in range {
        let rec = if i % 3 == 0 {
            progress(i).unpublished()
        } else {
            progress(i)
        };
        let seq = spool.append(rec).await.unwrap();
        if i % 3 != 0 {
            published.push(seq);
        }
    }
    published
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    tokio::time::timeout(PATIENCE, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} in time"));
}

#[tokio::test]
async fn every_published_record_is_delivered_once_in_order_despite_failures() {
    let dir = tempfile::tempdir().unwrap();
    let registry = prometheus::Registry::new();
    let spool = Spool::open(cfg(dir.path()), Some(&registry)).await.unwrap();
    let cursor = spool.cursor("kafka").unwrap();
    let mut expected = append_mixed(&spool, 1..=300).await;
    let sink = FlakySink::new(5);
    let (stop, stop_rx) = watch::channel(false);
    let shipper = spawn_shipper(cursor, sink.clone(), quick(), Some(&registry), stop_rx);

    expected.extend(append_mixed(&spool, 301..=330).await);
    wait_until("every record delivered and committed", || {
        spool.stats().cursors == [("kafka".to_string(), 331)]
    })
    .await;
    assert_eq!(sink.delivered(), expected, "exactly once, in order");
    assert!(sink.calls.load(Ordering::Relaxed) > 5);

    stop.send(true).unwrap();
    tokio::time::timeout(PATIENCE, shipper)
        .await
        .unwrap()
        .unwrap();
    assert!(spool.stats().cursors.is_empty(), "the cursor is closed");
    assert_eq!(
        metric(&registry, "edge_events_shipped_total", &[("sink", "fake")]),
        220.0
    );
    assert_eq!(
        metric(
            &registry,
            "edge_events_ship_failures_total",
            &[("sink", "fake")]
        ),
        5.0
    );
    assert_eq!(
        metric(
            &registry,
            "edge_events_cursor_lag_records",
            &[("cursor", "kafka")]
        ),
        0.0
    );
    assert_eq!(spool.cursor("kafka").unwrap().position(), 331, "persisted");
}

#[tokio::test]
async fn the_shipper_stops_during_an_outage() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path()).await;
    let cursor = spool.cursor("kafka").unwrap();
    append_mixed(&spool, 1..=10).await;
    let sink = FlakySink::new(usize::MAX);
    let (stop, stop_rx) = watch::channel(false);
    let cfg = ShipperConfig {
        backoff_max: Duration::from_secs(60),
        ..quick()
    };
    let shipper = spawn_shipper(cursor, sink.clone(), cfg, None, stop_rx);
    wait_until("retries", || sink.calls.load(Ordering::Relaxed) >= 4).await;
    stop.send(true).unwrap();
    tokio::time::timeout(PATIENCE, shipper)
        .await
        .unwrap()
        .unwrap();
    // What was delivered before the outage went on is committed, nothing twice.
    let delivered = sink.delivered();
    let position = spool.cursor("kafka").unwrap().position();
    assert!(
        delivered.iter().all(|s| *s < position),
        "{delivered:?} {position}"
    );
    let mut unique = delivered.clone();
    unique.dedup();
    assert_eq!(unique, delivered);
}

#[tokio::test]
async fn unpublished_records_are_committed_without_the_sink() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path()).await;
    let cursor = spool.cursor("kafka").unwrap();
    for i in 1..=5 {
        spool.append(progress(i).unpublished()).await.unwrap();
    }
    let sink = FlakySink::new(0);
    let (_stop, stop_rx) = watch::channel(false);
    let shipper = spawn_shipper(cursor, sink.clone(), quick(), None, stop_rx);
    wait_until("committed", || {
        spool.stats().cursors == [("kafka".to_string(), 6)]
    })
    .await;
    assert_eq!(sink.calls.load(Ordering::Relaxed), 0);
    drop(spool);
    // The spool closed: the shipper ends by itself.
    tokio::time::timeout(PATIENCE, shipper)
        .await
        .unwrap()
        .unwrap();
}
