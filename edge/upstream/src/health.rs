//! What this edge knows about each seeder: address, health, outcome counts; the prober that
//! brings unhealthy seeders back and the reporter that adds the counts to the directory.

use crate::{SeederOrigin, SeederView, fetch, metrics::Metrics};
use parking_lot::{Mutex, RwLock};
use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

/// One seeder as this edge sees it.
#[derive(Debug)]
pub(crate) struct SeederState {
    pub(crate) id: String,
    address: Mutex<String>,
    healthy: AtomicBool,
    ok: AtomicU64,
    failed: AtomicU64,
    /// Outcomes not yet added to the directory.
    unreported_ok: AtomicU64,
    unreported_failed: AtomicU64,
}

impl SeederState {
    fn new(id: &str, address: &str) -> Self {
        Self {
            id: id.to_owned(),
            address: Mutex::new(address.to_owned()),
            healthy: AtomicBool::new(true),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            unreported_ok: AtomicU64::new(0),
            unreported_failed: AtomicU64::new(0),
        }
    }

    /// Where it serves, as last heard (heartbeat, or the directory entry before that).
    pub(crate) fn address(&self) -> String {
        self.address.lock().clone()
    }

    /// Whether requests may go to it.
    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Sets health; whether that changed it.
    fn set_healthy(&self, healthy: bool) -> bool {
        self.healthy.swap(healthy, Ordering::Relaxed) != healthy
    }

    /// This edge's `ok / (ok + failed)`, `None` before any outcome.
    fn success_rate(&self) -> Option<f64> {
        let ok = self.ok.load(Ordering::Relaxed);
        let total = ok + self.failed.load(Ordering::Relaxed);
        (total > 0).then(|| ok as f64 / total as f64)
    }

    fn view(&self) -> SeederView {
        SeederView {
            id: self.id.clone(),
            address: self.address(),
            healthy: self.is_healthy(),
            ok: self.ok.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            success_rate: self.success_rate(),
        }
    }
}

/// Every seeder this edge currently tracks, by id.
#[derive(Debug, Default)]
pub(crate) struct Seeders {
    map: RwLock<HashMap<String, Arc<SeederState>>>,
}

impl Seeders {
    /// The state of `id`, created (healthy) at `address` if unknown. A known seeder's address is
    /// updated when `authoritative` (it comes from the seeder's heartbeat).
    pub(crate) fn get_or_insert(
        &self,
        id: &str,
        address: &str,
        authoritative: bool,
        metrics: &Metrics,
    ) -> Arc<SeederState> {
        if let Some(s) = self.map.read().get(id) {
            if authoritative && *s.address.lock() != address {
                tracing::info!(seeder = id, address, "seeder moved");
                *s.address.lock() = address.to_owned();
            }
            return s.clone();
        }
        self.map
            .write()
            .entry(id.to_owned())
            .or_insert_with(|| {
                metrics.healthy(id, true);
                Arc::new(SeederState::new(id, address))
            })
            .clone()
    }

    /// Forgets the seeders not in `keep` (gone, or heartbeat stale).
    pub(crate) fn retain(&self, keep: &HashSet<&str>, metrics: &Metrics) {
        self.map.write().retain(|id, _| {
            let kept = keep.contains(id.as_str());
            if !kept {
                tracing::info!(seeder = %id, "seeder left");
                metrics.forget(id);
            }
            kept
        });
    }

    pub(crate) fn all(&self) -> Vec<Arc<SeederState>> {
        self.map.read().values().cloned().collect()
    }

    pub(crate) fn views(&self) -> Vec<SeederView> {
        let mut v: Vec<_> = self.map.read().values().map(|s| s.view()).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }
}

impl SeederOrigin {
    /// Counts a verified fetch from `seeder`.
    pub(crate) fn succeeded(&self, seeder: &SeederState) {
        seeder.ok.fetch_add(1, Ordering::Relaxed);
        seeder.unreported_ok.fetch_add(1, Ordering::Relaxed);
        self.rate_changed(seeder);
    }

    /// Counts a failed fetch from `seeder` and takes it out of use until a probe succeeds.
    pub(crate) fn failed(&self, seeder: &SeederState, error: &str) {
        seeder.failed.fetch_add(1, Ordering::Relaxed);
        seeder.unreported_failed.fetch_add(1, Ordering::Relaxed);
        self.rate_changed(seeder);
        if seeder.set_healthy(false) {
            tracing::warn!(seeder = %seeder.id, address = %seeder.address(), error, "seeder unhealthy");
            self.metrics.healthy(&seeder.id, false);
        }
    }

    fn rate_changed(&self, seeder: &SeederState) {
        if let Some(rate) = seeder.success_rate() {
            self.metrics.success_rate(&seeder.id, rate);
        }
    }

    /// Probes every unhealthy seeder once (concurrently); those answering 200 are used again.
    pub(crate) async fn probe_unhealthy(&self) {
        let unhealthy: Vec<_> = self
            .seeders
            .all()
            .into_iter()
            .filter(|s| !s.is_healthy())
            .collect();
        let probes = unhealthy.iter().map(|s| async move {
            let address = s.address();
            if fetch::probe(&self.client, &address, self.cfg.request_timeout).await
                && s.set_healthy(true)
            {
                tracing::info!(seeder = %s.id, %address, "seeder healthy again");
                self.metrics.healthy(&s.id, true);
            }
        });
        futures::future::join_all(probes).await;
    }

    /// Adds the outcomes counted since the last report to each seeder's record in the
    /// directory (`ok`, `failed`, `successRate` of `seeder:<id>`). Only seeders listed in the
    /// directory's last membership are reported, so no record is recreated for one that left;
    /// counts that could not be written are kept for the next report.
    pub(crate) async fn report(&self) {
        let listed = self.membership.load().listed.clone();
        for s in self.seeders.all() {
            if !listed.contains(&s.id) {
                continue;
            }
            let ok = s.unreported_ok.swap(0, Ordering::Relaxed);
            let failed = s.unreported_failed.swap(0, Ordering::Relaxed);
            if ok == 0 && failed == 0 {
                continue;
            }
            match self.directory.record(&s.id, ok, failed).await {
                Ok(rate) => {
                    tracing::debug!(seeder = %s.id, ok, failed, rate, "reported seeder outcomes");
                }
                Err(e) => {
                    s.unreported_ok.fetch_add(ok, Ordering::Relaxed);
                    s.unreported_failed.fetch_add(failed, Ordering::Relaxed);
                    self.directory_error(&e);
                    return;
                }
            }
        }
    }
}
