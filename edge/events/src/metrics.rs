//! Spool and shipper metrics. Label children are resolved once, so counting on the request path
//! is one atomic add.

use crate::EventKind;
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, core::Collector,
};
use tracing::warn;

/// `reason` label values of `edge_events_dropped_total`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum DropReason {
    /// The backlog reached `max_backlog`.
    Full = 0,
    /// The writer's queue was full (`emit` only).
    Queue = 1,
    /// The write failed (`emit` only: an `append` caller gets the error).
    Io = 2,
}

const REASONS: [&str; 3] = ["full", "queue", "io"];

fn kind_index(kind: EventKind) -> usize {
    EventKind::ALL
        .iter()
        .position(|k| *k == kind)
        .unwrap_or_default()
}

/// Spool metrics:
///
/// | metric | type | meaning |
/// |---|---|---|
/// | `edge_events_appended_total{kind}` | counter | records written (and synced per the policy) |
/// | `edge_events_dropped_total{kind,reason}` | counter | records refused: `full` (backlog limit, `append` or `emit`), `queue` (`emit` with the writer's queue full), `io` (`emit` lost to a write error) |
/// | `edge_events_spool_bytes` | gauge | bytes of segment files |
/// | `edge_events_spool_backlog_bytes` | gauge | bytes not yet committed by every open cursor |
/// | `edge_events_spool_limit_bytes` | gauge | `max_backlog` |
/// | `edge_events_fsync_seconds` | histogram | duration of each fdatasync of a segment |
/// | `edge_events_corrupt_frames_total` | counter | damaged frames found (truncated at open or skipped by a cursor) |
#[derive(Debug, Clone)]
pub(crate) struct SpoolMetrics {
    appended: [IntCounter; EventKind::ALL.len()],
    dropped: [[IntCounter; 3]; EventKind::ALL.len()],
    pub(crate) bytes: IntGauge,
    pub(crate) backlog: IntGauge,
    pub(crate) limit: IntGauge,
    pub(crate) fsync: Histogram,
    pub(crate) corrupt: IntCounter,
}

impl SpoolMetrics {
    pub(crate) fn new(registry: Option<&Registry>) -> Self {
        let appended = IntCounterVec::new(
            Opts::new(
                "edge_events_appended_total",
                "Events written to the spool (synced per its fsync policy)",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let dropped = IntCounterVec::new(
            Opts::new(
                "edge_events_dropped_total",
                "Events refused by the spool (full: backlog limit, queue: writer queue full, io: write error)",
            ),
            &["kind", "reason"],
        )
        .expect("valid metric");
        let m = Self {
            appended: EventKind::ALL.map(|k| appended.with_label_values(&[k.as_str()])),
            dropped: EventKind::ALL
                .map(|k| REASONS.map(|r| dropped.with_label_values(&[k.as_str(), r]))),
            bytes: IntGauge::new(
                "edge_events_spool_bytes",
                "Bytes of events spool segment files",
            )
            .expect("valid metric"),
            backlog: IntGauge::new(
                "edge_events_spool_backlog_bytes",
                "Bytes of spooled events not yet committed by every open cursor",
            )
            .expect("valid metric"),
            limit: IntGauge::new(
                "edge_events_spool_limit_bytes",
                "Backlog at which the events spool refuses records",
            )
            .expect("valid metric"),
            fsync: Histogram::with_opts(
                HistogramOpts::new(
                    "edge_events_fsync_seconds",
                    "Duration of each fdatasync of an events spool segment",
                )
                .buckets(prometheus::exponential_buckets(0.000_05, 2.0, 16).expect("valid")),
            )
            .expect("valid metric"),
            corrupt: IntCounter::new(
                "edge_events_corrupt_frames_total",
                "Damaged events spool frames found (truncated at open or skipped)",
            )
            .expect("valid metric"),
        };
        if let Some(registry) = registry {
            let collectors: [Box<dyn Collector>; 7] = [
                Box::new(appended),
                Box::new(dropped),
                Box::new(m.bytes.clone()),
                Box::new(m.backlog.clone()),
                Box::new(m.limit.clone()),
                Box::new(m.fsync.clone()),
                Box::new(m.corrupt.clone()),
            ];
            register(registry, collectors);
        }
        m
    }

    pub(crate) fn appended(&self, kind: EventKind) -> &IntCounter {
        &self.appended[kind_index(kind)]
    }

    pub(crate) fn dropped(&self, kind: EventKind, why: DropReason) -> &IntCounter {
        &self.dropped[kind_index(kind)][why as usize]
    }
}

/// Shipper metrics, told apart by const labels so several shippers share a registry:
///
/// | metric | type | meaning |
/// |---|---|---|
/// | `edge_events_shipped_total{sink}` | counter | records the sink acknowledged |
/// | `edge_events_ship_failures_total{sink}` | counter | failed deliveries (each retried) |
/// | `edge_events_cursor_lag_records{cursor}` | gauge | records appended but not yet committed by the cursor |
#[derive(Debug, Clone)]
pub(crate) struct ShipperMetrics {
    pub(crate) shipped: IntCounter,
    pub(crate) failures: IntCounter,
    pub(crate) lag: IntGauge,
}

impl ShipperMetrics {
    pub(crate) fn new(registry: Option<&Registry>, sink: &str, cursor: &str) -> Self {
        let m = Self {
            shipped: IntCounter::with_opts(
                Opts::new(
                    "edge_events_shipped_total",
                    "Spooled events acknowledged by the sink",
                )
                .const_label("sink", sink),
            )
            .expect("valid metric"),
            failures: IntCounter::with_opts(
                Opts::new(
                    "edge_events_ship_failures_total",
                    "Failed deliveries of spooled events (retried)",
                )
                .const_label("sink", sink),
            )
            .expect("valid metric"),
            lag: IntGauge::with_opts(
                Opts::new(
                    "edge_events_cursor_lag_records",
                    "Spooled events not yet committed by the cursor",
                )
                .const_label("cursor", cursor),
            )
            .expect("valid metric"),
        };
        if let Some(registry) = registry {
            register(
                registry,
                [
                    Box::new(m.shipped.clone()) as Box<dyn Collector>,
                    Box::new(m.failures.clone()),
                    Box::new(m.lag.clone()),
                ],
            );
        }
        m
    }
}

/// Registers each collector; one that cannot be (registered twice) still counts, unexported.
fn register<const N: usize>(registry: &Registry, collectors: [Box<dyn Collector>; N]) {
    for c in collectors {
        let name = c
            .desc()
            .first()
            .map(|d| d.fq_name.clone())
            .unwrap_or_default();
        if let Err(e) = registry.register(c) {
            warn!(metric = %name, error = %e, "events metric not registered");
        }
    }
}
