//! The shipper: drains a cursor into a [`Sink`], in order, committing what was delivered.

use crate::{Cursor, Record, Sink, SpoolError, Undelivered, metrics::ShipperMetrics};
use std::{
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

/// Batching and back-off of [`spawn_shipper`].
#[derive(Debug, Clone)]
pub struct ShipperConfig {
    /// Records read from the spool per delivery (the published ones among them are delivered).
    pub batch: usize,
    /// First pause after a failed delivery; doubled after each further failure.
    pub backoff_min: Duration,
    /// Longest pause between attempts.
    pub backoff_max: Duration,
}

impl Default for ShipperConfig {
    /// 500 records, back-off from 100 ms to 5 s.
    fn default() -> Self {
        Self {
            batch: 500,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// Starts shipping `cursor` into `sink` on the current runtime: read a batch, deliver its
/// published records, commit. A failed delivery commits the records before the first one not
/// delivered, rewinds and retries after an exponential back-off; an outage is logged once when
/// it begins and once when it ends. When `stop` turns `true` (or its sender is dropped) the
/// delivery in progress finishes (bounded by the sink), is committed, and the task ends; it
/// also ends when the spool is closed.
///
/// Metrics (with `registry`): `edge_events_shipped_total` and `edge_events_ship_failures_total`
/// labelled `sink` (the sink's name), `edge_events_cursor_lag_records` labelled `cursor`.
pub fn spawn_shipper(
    cursor: Cursor,
    sink: Arc<dyn Sink>,
    cfg: ShipperConfig,
    metrics: Option<&prometheus::Registry>,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let metrics = ShipperMetrics::new(metrics, sink.name(), cursor.name());
    let shipper = Shipper {
        cursor,
        sink,
        cfg,
        metrics,
        stop,
        outage: None,
    };
    tokio::spawn(shipper.run())
}

struct Shipper {
    cursor: Cursor,
    sink: Arc<dyn Sink>,
    cfg: ShipperConfig,
    metrics: ShipperMetrics,
    stop: watch::Receiver<bool>,
    outage: Option<Outage>,
}

struct Outage {
    since: Instant,
    delivered: usize,
}

impl Shipper {
    async fn run(mut self) {
        let mut backoff = self.cfg.backoff_min;
        loop {
            self.metrics.lag.set(self.cursor.lag() as i64);
            let batch = tokio::select! {
                biased;
                () = stopped(&mut self.stop) => break,
                batch = self.cursor.next_batch(self.cfg.batch.max(1)) => batch,
            };
            let ok = match batch {
                Ok(batch) => self.ship(batch).await,
                Err(SpoolError::Closed) => {
                    debug!(
                        sink = self.sink.name(),
                        "events spool closed, shipper stops"
                    );
                    break;
                }
                Err(e) => {
                    error!(sink = self.sink.name(), cursor = self.cursor.name(), error = %e,
                        "events spool: cannot read");
                    false
                }
            };
            if ok {
                backoff = self.cfg.backoff_min;
                continue;
            }
            self.cursor.rewind_to_committed();
            tokio::select! {
                biased;
                () = stopped(&mut self.stop) => break,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(self.cfg.backoff_max);
        }
        self.metrics.lag.set(self.cursor.lag() as i64);
    }

    /// Delivers the published records of `batch` and commits; `false` when something is left to
    /// retry.
    async fn ship(&mut self, batch: Vec<Record>) -> bool {
        let Some(last_seq) = batch.last().map(|r| r.seq) else {
            return true;
        };
        let published: Vec<Record> = batch.into_iter().filter(|r| r.publish).collect();
        if published.is_empty() {
            return self.commit(last_seq).await;
        }
        match self.sink.deliver(&published).await {
            Ok(()) => {
                self.metrics.shipped.inc_by(published.len() as u64);
                if let Some(outage) = self.outage.take() {
                    info!(
                        sink = self.sink.name(),
                        "delivered {} spooled events after {:.1} s",
                        outage.delivered + published.len(),
                        outage.since.elapsed().as_secs_f64()
                    );
                }
                self.commit(last_seq).await
            }
            Err(Undelivered { delivered, reason }) => {
                let delivered = delivered.min(published.len());
                self.metrics.shipped.inc_by(delivered as u64);
                self.metrics.failures.inc();
                // Everything before the first undelivered published record is done, including
                // unpublished records interleaved with the delivered ones.
                let through = match published.get(delivered) {
                    Some(first_left) => first_left.seq.checked_sub(1),
                    None => Some(last_seq),
                };
                if let Some(through) = through {
                    self.commit(through).await;
                }
                match &mut self.outage {
                    Some(outage) => {
                        outage.delivered += delivered;
                        debug!(sink = self.sink.name(), %reason, "events delivery failed again");
                    }
                    None => {
                        warn!(
                            sink = self.sink.name(),
                            "events spooling: {} unavailable: {reason}; {} pending",
                            self.sink.name(),
                            self.cursor.lag()
                        );
                        self.outage = Some(Outage {
                            since: Instant::now(),
                            delivered,
                        });
                    }
                }
                false
            }
        }
    }

    async fn commit(&mut self, through: u64) -> bool {
        match self.cursor.commit(through).await {
            Ok(()) => true,
            Err(e) => {
                error!(sink = self.sink.name(), cursor = self.cursor.name(), error = %e,
                    "events spool: cannot commit the cursor (delivered records will be delivered again)");
                false
            }
        }
    }
}

/// Resolves once `stop` is `true` or its sender is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}
