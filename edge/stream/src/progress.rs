//! Watch progress: every report is appended to the spool before it is acknowledged, then applied
//! to the [`ProgressStore`] by [`Progress::spawn_applier`] from the spool's `progress` cursor. A
//! report the store has not taken yet (Redis down, applier behind) is answered from memory, and
//! survives a restart in the spool.
//!
//! Reports of one viewer for one movie closer together than `min_interval` are all kept, but
//! only the first of each interval is published as a `stream.progress` event; the latest of the
//! rest is published when the interval ends ([`Progress::spawn_trailing`]). A coalesced report
//! still owed its event is not lost to a crash: the applier does not commit its cursor past it,
//! and after a restart it finds it again in the spool and publishes it when its interval ends.

use crate::store::{Position, ProgressStore, StoreError, ViewerKey, epoch_ms};
use edge_events::{EventKind, NewRecord, ProgressUpdate, Record, Spool, SpoolError, StreamStop};
use parking_lot::Mutex;
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};
use tokio::sync::watch;

struct Gate {
    last_published: Instant,
    trailing: Option<(String, ProgressUpdate)>,
}

/// Watch positions: recording, reading, applying.
pub struct Progress {
    store: Arc<dyn ProgressStore>,
    spool: Spool,
    min_interval: Duration,
    pending: Mutex<HashMap<ViewerKey, Position>>,
    gates: Mutex<HashMap<ViewerKey, Gate>>,
    /// Records before this sequence number were written by an earlier run.
    first_seq: u64,
}

/// Coalesced reports read by the applier whose event is still owed: the first unpublished
/// progress record per viewer not yet followed by a published one (or a stop).
#[derive(Default)]
struct Owed {
    first: HashMap<ViewerKey, (u64, u64)>,
    /// Owed by an earlier run: the newest such report per viewer, to publish again.
    recovered: HashMap<ViewerKey, (String, ProgressUpdate)>,
}

impl Owed {
    fn read(&mut self, r: &Record, report: &Report, first_seq: u64) {
        let viewer = &report.viewer;
        match &report.progress {
            Some(e) if !r.publish => {
                if r.seq < first_seq {
                    self.recovered
                        .insert(viewer.clone(), (r.key.clone(), e.clone()));
                }
                self.first.entry(viewer.clone()).or_insert((r.seq, r.at_ms));
            }
            _ => {
                self.recovered.remove(viewer);
                self.first.remove(viewer);
            }
        }
    }

    /// Forgets reports whose event should long have followed (its trailing publish failed or
    /// the viewer stopped meanwhile), judged by the newest record read.
    fn expire(&mut self, newest_ms: u64, patience: Duration) {
        let patience = patience.as_millis() as u64;
        self.first.retain(|viewer, (seq, at)| {
            let keep = at.saturating_add(patience) >= newest_ms;
            if !keep {
                tracing::warn!(
                    user = viewer.0,
                    movie = viewer.1,
                    seq = *seq,
                    "a coalesced progress event was never published"
                );
            }
            keep
        });
    }

    /// The cursor may be committed through the record before the oldest owed one.
    fn commit_limit(&self, last: u64) -> Option<u64> {
        match self.first.values().map(|(seq, _)| *seq).min() {
            None => Some(last),
            Some(0) => None,
            Some(seq) => Some(last.min(seq - 1)),
        }
    }
}

impl Progress {
    /// Positions kept in `store`, reports appended to `spool`.
    pub fn new(store: Arc<dyn ProgressStore>, spool: Spool, min_interval: Duration) -> Self {
        Self {
            store,
            min_interval,
            pending: Mutex::new(HashMap::new()),
            gates: Mutex::new(HashMap::new()),
            first_seq: spool.stats().next_seq,
            spool,
        }
    }

    /// The store behind (for `/health`).
    pub fn store(&self) -> &Arc<dyn ProgressStore> {
        &self.store
    }

    /// Records a report under the event key `key` (the stream session). Returns once it is in
    /// the spool.
    pub async fn record(
        &self,
        user: &str,
        movie: &str,
        position: u64,
        key: String,
    ) -> Result<Position, SpoolError> {
        let now = SystemTime::now();
        let event = ProgressUpdate {
            user_id: user.to_owned(),
            movie_id: movie.to_owned(),
            action: "progress_update".into(),
            position_seconds: position,
            timestamp: edge_events::timestamp(now),
        };
        let viewer = (user.to_owned(), movie.to_owned());
        let publish = {
            let mut gates = self.gates.lock();
            match gates.get_mut(&viewer) {
                Some(g) if g.last_published.elapsed() < self.min_interval => {
                    g.trailing = Some((key.clone(), event.clone()));
                    false
                }
                _ => {
                    gates.insert(
                        viewer.clone(),
                        Gate {
                            last_published: Instant::now(),
                            trailing: None,
                        },
                    );
                    true
                }
            }
        };
        let mut rec = NewRecord::new(&event, key);
        if !publish {
            rec = rec.unpublished();
        }
        self.spool.append(rec).await?;
        let p = Position {
            position_seconds: position,
            last_watched_at: event.timestamp,
            at_ms: epoch_ms(now),
        };
        self.remember(viewer, p.clone());
        Ok(p)
    }

    /// Records the final position of a stopped stream (its `stream.stop` event is appended by
    /// the caller); drops a coalesced report still waiting, which would follow the stop.
    pub fn stopped(&self, user: &str, movie: &str, event: &StreamStop) {
        let viewer = (user.to_owned(), movie.to_owned());
        self.gates.lock().remove(&viewer);
        self.remember(
            viewer,
            Position {
                position_seconds: event.position_seconds,
                last_watched_at: event.timestamp.clone(),
                at_ms: epoch_ms(SystemTime::now()),
            },
        );
    }

    fn remember(&self, viewer: ViewerKey, p: Position) {
        let mut pending = self.pending.lock();
        match pending.get(&viewer) {
            Some(cur) if cur.last_watched_at > p.last_watched_at => {}
            _ => {
                pending.insert(viewer, p);
            }
        }
    }

    /// The latest position of `user` in `movie`: a report not yet in the store, else the store.
    pub async fn get(&self, user: &str, movie: &str) -> Result<Option<Position>, StoreError> {
        let viewer = (user.to_owned(), movie.to_owned());
        let pending = self.pending.lock().get(&viewer).cloned();
        match self.store.get(user, movie).await {
            Ok(stored) => Ok(match (pending, stored) {
                (Some(p), Some(s)) if s.last_watched_at > p.last_watched_at => Some(s),
                (Some(p), _) => Some(p),
                (None, s) => s,
            }),
            Err(_) if pending.is_some() => Ok(pending),
            Err(e) => Err(e),
        }
    }

    /// Publishes the latest coalesced report of every viewer whose interval has ended. Returns
    /// how many were published.
    pub async fn publish_trailing(&self, all: bool) -> usize {
        let due: Vec<(String, ProgressUpdate)> = {
            let mut gates = self.gates.lock();
            let mut due = Vec::new();
            gates.retain(|_, g| {
                let elapsed = g.last_published.elapsed();
                if (elapsed >= self.min_interval || all)
                    && let Some(t) = g.trailing.take()
                {
                    due.push(t);
                    g.last_published = Instant::now();
                    return true;
                }
                elapsed < self.min_interval * 2
            });
            due
        };
        let mut n = 0;
        for (key, event) in due {
            match self.spool.append(NewRecord::new(&event, key.clone())).await {
                Ok(_) => n += 1,
                Err(e) => {
                    tracing::warn!(error = %e, user = event.user_id, movie = event.movie_id, "coalesced progress event not appended; retrying");
                    let viewer = (event.user_id.clone(), event.movie_id.clone());
                    if let Some(g) = self.gates.lock().get_mut(&viewer)
                        && g.trailing.is_none()
                    {
                        g.trailing = Some((key, event));
                    }
                }
            }
        }
        n
    }

    /// Takes over coalesced reports an earlier run still owed an event: each is published when
    /// an interval from now ends, unless this run has already recorded the viewer again.
    fn adopt(&self, recovered: impl IntoIterator<Item = (ViewerKey, (String, ProgressUpdate))>) {
        let mut gates = self.gates.lock();
        for (viewer, trailing) in recovered {
            gates.entry(viewer).or_insert_with(|| Gate {
                last_published: Instant::now(),
                trailing: Some(trailing),
            });
        }
    }

    /// Publishes coalesced reports as their intervals end, until `stop`; then publishes what is
    /// left.
    pub fn spawn_trailing(
        self: Arc<Self>,
        mut stop: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let period = (self.min_interval / 2).max(Duration::from_millis(50));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tokio::select! {
                    _ = tick.tick() => { self.publish_trailing(false).await; }
                    _ = stop.changed() => break,
                }
                if *stop.borrow() {
                    break;
                }
            }
            self.publish_trailing(true).await;
        })
    }

    /// Applies the spool's progress reports and stops (cursor `cursor`) to the store, newest per
    /// viewer, committing the cursor once the store has them (after a checkpoint for stores that
    /// need one). While the store is down, retries with back-off and keeps reports readable from
    /// memory.
    pub fn spawn_applier(
        self: Arc<Self>,
        mut cursor: edge_events::Cursor,
        mut stop: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut uncommitted: Option<u64> = None;
            let mut last_checkpoint = Instant::now();
            let every = self.store.checkpoint_every();
            let mut owed = Owed::default();
            let patience = self.min_interval * 3 + Duration::from_secs(30);
            loop {
                let wait = if uncommitted.is_some() {
                    every.saturating_sub(last_checkpoint.elapsed())
                } else {
                    Duration::from_secs(3600)
                };
                let batch = tokio::select! {
                    b = cursor.next_batch(1000) => Some(b),
                    _ = tokio::time::sleep(wait) => None,
                    _ = stop.changed() => break,
                };
                match batch {
                    Some(Ok(batch)) => {
                        let Some(last) = batch.last() else {
                            continue;
                        };
                        let (last, newest_ms) = (last.seq, last.at_ms);
                        let reports: Vec<(&Record, Report)> = batch
                            .iter()
                            .filter_map(|r| Some((r, Report::decode(r)?)))
                            .collect();
                        for (r, report) in &reports {
                            owed.read(r, report, self.first_seq);
                        }
                        owed.expire(newest_ms, patience);
                        if last + 1 >= self.first_seq {
                            self.adopt(owed.recovered.drain());
                        }
                        let fold = fold(reports.into_iter().map(|(_, report)| report));
                        for (viewer, p) in &fold {
                            self.remember(viewer.clone(), p.clone());
                        }
                        if !self.apply(&fold, &mut stop).await {
                            break;
                        }
                        uncommitted = owed.commit_limit(last).or(uncommitted);
                    }
                    Some(Err(e)) => {
                        tracing::error!(error = %e, "progress applier cannot read the spool");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                    None => {}
                }
                if let Some(seq) = uncommitted
                    && last_checkpoint.elapsed() >= every
                {
                    if self.checkpoint(&mut cursor, seq).await {
                        uncommitted = None;
                    }
                    last_checkpoint = Instant::now();
                }
            }
            if let Some(seq) = uncommitted {
                self.checkpoint(&mut cursor, seq).await;
            }
        })
    }

    async fn checkpoint(&self, cursor: &mut edge_events::Cursor, seq: u64) -> bool {
        if let Err(e) = self.store.checkpoint().await {
            tracing::warn!(error = %e, "progress checkpoint failed; the spool keeps the reports");
            return false;
        }
        if let Err(e) = cursor.commit(seq).await {
            tracing::warn!(error = %e, "cannot commit the progress cursor");
            return false;
        }
        true
    }

    /// Puts `fold` into the store, retrying until it succeeds or `stop`; false when stopped.
    async fn apply(
        &self,
        fold: &[(ViewerKey, Position)],
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        let mut backoff = Duration::from_millis(100);
        let mut down_since: Option<Instant> = None;
        loop {
            match self.store.put(fold).await {
                Ok(()) => {
                    if let Some(t) = down_since {
                        tracing::info!(
                            store = self.store.kind(),
                            after = ?t.elapsed(),
                            "progress store back; spooled reports applied"
                        );
                    }
                    let mut pending = self.pending.lock();
                    for (viewer, p) in fold {
                        if pending
                            .get(viewer)
                            .is_some_and(|cur| cur.last_watched_at <= p.last_watched_at)
                        {
                            pending.remove(viewer);
                        }
                    }
                    return true;
                }
                Err(e) => {
                    if down_since.is_none() {
                        tracing::warn!(store = self.store.kind(), error = %e, "progress store unavailable; reports stay in the spool and are applied when it returns");
                        down_since = Some(Instant::now());
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => return false,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

/// A progress or stop record of the spool, decoded once for the applier.
struct Report {
    viewer: ViewerKey,
    position: Position,
    /// The event of a progress record (`None` for a stop).
    progress: Option<ProgressUpdate>,
}

impl Report {
    fn decode(r: &Record) -> Option<Report> {
        let (user, movie, position_seconds, at, progress) = match r.kind {
            EventKind::ProgressUpdate => {
                let e = r.decode::<ProgressUpdate>()?;
                let (user, movie) = (e.user_id.clone(), e.movie_id.clone());
                (
                    user,
                    movie,
                    e.position_seconds,
                    e.timestamp.clone(),
                    Some(e),
                )
            }
            EventKind::StreamStop => {
                let e = r.decode::<StreamStop>()?;
                (e.user_id, e.movie_id, e.position_seconds, e.timestamp, None)
            }
            _ => return None,
        };
        Some(Report {
            viewer: (user, movie),
            position: Position {
                position_seconds,
                last_watched_at: at,
                at_ms: r.at_ms,
            },
            progress,
        })
    }
}

/// The newest position per viewer among `reports`.
fn fold(reports: impl IntoIterator<Item = Report>) -> Vec<(ViewerKey, Position)> {
    let mut newest: HashMap<ViewerKey, Position> = HashMap::new();
    for Report {
        viewer, position, ..
    } in reports
    {
        match newest.get(&viewer) {
            Some(cur) if cur.last_watched_at > position.last_watched_at => {}
            _ => {
                newest.insert(viewer, position);
            }
        }
    }
    newest.into_iter().collect()
}
