//! Pull-through: a missing segment is read once from the origin, however many edges ask for it at
//! the same time, stored atomically and published at once.

use crate::{Seeder, files::Body};
use edge_directory::{Holding, SegmentRef};
use edge_origin::OriginError;
use futures::{
    FutureExt,
    future::{BoxFuture, Shared},
};
use std::sync::Arc;

/// One pull in flight, awaited by every request for its path.
pub(crate) type Flight = Shared<BoxFuture<'static, Result<Pulled, PullError>>>;

/// A pulled object.
#[derive(Debug, Clone)]
pub(crate) struct Pulled {
    pub(crate) body: Body,
}

/// Why a pull failed; cloneable so one failure answers every waiter.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum PullError {
    /// The origin refused or failed.
    #[error(transparent)]
    Origin(#[from] OriginError),
    /// It could not be stored.
    #[error("cannot store the object: {0}")]
    Store(String),
    /// The pull task died.
    #[error("pull task failed: {0}")]
    Task(String),
}

/// Removes a flight from the map when its task ends, however it ends (after the file is in
/// place, so a request arriving later finds it on disk).
struct Landing<'a> {
    seeder: &'a Seeder,
    path: &'a str,
}

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        self.seeder.flights.lock().remove(self.path);
    }
}

impl Seeder {
    /// The object at `path`, pulled from the origin by the first request and shared with the
    /// others. The pull runs in its own task, so a request that goes away does not cancel it.
    pub(crate) async fn pull(&self, path: &str) -> Result<Pulled, PullError> {
        let Some(me) = self.me.upgrade() else {
            return Err(PullError::Task("seeder dropped".into()));
        };
        let flight = {
            let mut flights = self.flights.lock();
            match flights.get(path) {
                Some(f) => f.clone(),
                None => {
                    let task = tokio::spawn(me.pull_task(path.to_owned()));
                    let flight = async move {
                        task.await
                            .unwrap_or_else(|e| Err(PullError::Task(e.to_string())))
                    }
                    .boxed()
                    .shared();
                    flights.insert(path.to_owned(), flight.clone());
                    flight
                }
            }
        };
        flight.await
    }

    async fn pull_task(self: Arc<Self>, path: String) -> Result<Pulled, PullError> {
        let _landing = Landing {
            seeder: &self,
            path: &path,
        };
        // A pull that finished just before this one started left the file in place.
        let (catalog, p, max) = (self.catalog.clone(), path.clone(), self.cfg.max_object);
        if let Ok(Ok(Some(body))) = tokio::task::spawn_blocking(move || catalog.read(&p, max)).await
        {
            self.catalog.touch(&path);
            return Ok(Pulled { body });
        }
        let origin = self.origin.clone().ok_or(OriginError::NotFound)?;
        let object = origin.get_within(&path, self.cfg.max_object).await?;
        let len = object.body.len() as u64;
        let (catalog, p, bytes) = (self.catalog.clone(), path.clone(), object.body.clone());
        let stored = tokio::task::spawn_blocking(move || catalog.store(&p, &bytes))
            .await
            .map_err(|e| PullError::Task(e.to_string()))?
            .map_err(|e| PullError::Store(e.to_string()))?;
        self.catalog.touch(&path);
        tracing::info!(
            seeder = self.cfg.id,
            path,
            bytes = len,
            origin = origin.describe(),
            "pulled from the origin"
        );

        {
            let mut state = self.state.lock();
            state.files += 1;
            state.bytes += stored.len;
        }
        if let Some(segment) = SegmentRef::from_path(&self.cfg.streams_prefix, &path) {
            let holding = self.holding(stored.len, &stored.sha256, stored.mtime);
            self.state
                .lock()
                .holdings
                .insert(segment.clone(), holding.clone());
            let me = self.clone();
            tokio::spawn(async move { me.publish_pulled(segment, holding).await });
        }
        self.update_gauges();
        Ok(Pulled {
            body: Body {
                bytes: object.body,
                sha256: stored.sha256,
            },
        })
    }

    /// Publishes a pulled segment without waiting for the next scan.
    async fn publish_pulled(&self, segment: SegmentRef, holding: Holding) {
        let Some(dir) = &self.directory else { return };
        let _gate = self.gate.read().await;
        if self.stopping() {
            return;
        }
        let published = dir.publish(&[(segment, holding)], self.cfg.key_ttl).await;
        if self.note(published) == Ok(true) {
            let _ = self.sync_directory(dir, Vec::new()).await;
        }
    }
}
