//! The periodic scan: walk the cache, checksum, expire, publish, withdraw.

use crate::{
    ScanReport, Seeder,
    files::{Catalog, Digests},
};
use edge_directory::{Holding, SegmentRef};
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, SystemTime},
};

/// What the disk part of a scan found.
#[derive(Debug, Default)]
struct DiskScan {
    /// Files kept.
    files: u64,
    /// Their bytes.
    bytes: u64,
    /// The segments among them (under the streams prefix), with their size, checksum and last
    /// access.
    segments: Vec<(SegmentRef, u64, Arc<str>, SystemTime)>,
    /// The slice checksums of the segments larger than a slice, by checksum.
    slice_lists: HashMap<Arc<str>, Digests>,
    /// Segments of the files deleted by retention.
    expired: Vec<SegmentRef>,
    /// Files deleted by retention.
    deleted: u64,
}

/// The blocking part of a scan.
fn scan_disk(catalog: &Catalog, prefix: &str, retention: Duration, now: SystemTime) -> DiskScan {
    let (found, errors) = catalog.walk();
    for error in errors {
        tracing::warn!(%error, "seeder scan cannot read a directory");
    }
    let mut scan = DiskScan::default();
    let mut present = HashSet::new();
    for f in &found {
        let segment = SegmentRef::from_path(prefix, &f.public);
        let last_access = catalog.last_access(&f.public, f.mtime);
        let idle = now.duration_since(last_access).unwrap_or_default();
        if !retention.is_zero() && idle > retention {
            match catalog.delete(f) {
                Ok(()) => {
                    tracing::debug!(
                        path = f.public,
                        idle_s = idle.as_secs(),
                        "expired file deleted"
                    );
                    scan.deleted += 1;
                    scan.expired.extend(segment);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(path = f.public, error = %e, "cannot delete an expired file")
                }
            }
        }
        present.insert(f.public.as_str());
        scan.files += 1;
        scan.bytes += f.len;
        let Some(segment) = segment else { continue };
        match catalog.checksum(f) {
            Ok(sha) => {
                if let Some((sum, list)) = catalog.slice_list(&f.public) {
                    scan.slice_lists.insert(sum, list);
                }
                scan.segments.push((segment, f.len, sha, last_access));
            }
            Err(e) => tracing::warn!(path = f.public, error = %e, "cannot checksum a file"),
        }
    }
    catalog.retain(&present);
    scan
}

impl Seeder {
    /// Scans the cache once: checksums new and changed files, deletes the files not accessed for
    /// `retention`, publishes a holding for every segment with `key_ttl` (renewing the keys),
    /// withdraws the segments that disappeared or expired, and retries withdrawals that failed
    /// before. Directory failures are reported, not fatal: the state on disk is still taken.
    /// Scans do not overlap; the first one makes the seeder [ready](Seeder::ready).
    pub async fn scan_once(&self) -> ScanReport {
        let _scan = self.scan_lock.lock().await;
        let catalog = self.catalog.clone();
        let (prefix, retention) = (self.cfg.streams_prefix.clone(), self.cfg.retention);
        let disk = tokio::task::spawn_blocking(move || {
            scan_disk(&catalog, &prefix, retention, SystemTime::now())
        })
        .await;
        let disk = match disk {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "seeder scan task failed");
                return ScanReport::default();
            }
        };
        self.metrics.deleted.inc_by(disk.deleted);
        let current: HashMap<SegmentRef, Holding> = disk
            .segments
            .into_iter()
            .map(|(seg, size, sha, last)| (seg, self.holding(size, &sha, last)))
            .collect();

        // Segments published before and not found now: withdrawn, unless a pull stored them
        // after the walk.
        let before: Vec<SegmentRef> = self
            .state
            .lock()
            .holdings
            .keys()
            .filter(|s| !current.contains_key(*s))
            .cloned()
            .collect();
        let catalog = self.catalog.clone();
        let prefix = self.cfg.streams_prefix.clone();
        let mut stale: Vec<SegmentRef> = tokio::task::spawn_blocking(move || {
            before
                .into_iter()
                .filter(|s| catalog.file(&s.path(&prefix)).is_none_or(|p| !p.is_file()))
                .collect()
        })
        .await
        .unwrap_or_default();
        stale.extend(disk.expired);
        {
            let mut state = self.state.lock();
            let stale: HashSet<&SegmentRef> = stale.iter().collect();
            let carried: Vec<(SegmentRef, Holding)> = state
                .holdings
                .drain()
                .filter(|(s, _)| !current.contains_key(s) && !stale.contains(s))
                .collect();
            state.holdings = current;
            state.holdings.extend(carried);
            state.slice_lists = disk.slice_lists;
            state.files = disk.files;
            state.bytes = disk.bytes;
        }
        self.update_gauges();

        let mut report = ScanReport {
            files: disk.files,
            bytes: disk.bytes,
            deleted: disk.deleted,
            ..ScanReport::default()
        };
        if let Some(dir) = &self.directory {
            let _gate = self.gate.read().await;
            if !self.stopping() {
                (report.published, report.withdrawn, report.directory_error) =
                    self.sync_directory(dir, stale).await;
            }
        }
        if !self.stopping() && !self.ready.swap(true, std::sync::atomic::Ordering::AcqRel) {
            self.metrics.ready.set(1);
        }
        report
    }
}
