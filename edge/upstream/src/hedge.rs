//! The hedged chain of attempts: seeders in candidate order, then the origin.

use crate::{
    SeederOrigin,
    fetch::{self, Failure},
    metrics::FetchResult,
    route::Candidate,
};
use edge_origin::{Opened, OriginError};
use futures::{StreamExt, stream::FuturesUnordered};
use std::ops::Range;
use std::{future::Future, pin::Pin};
use tokio::time::{Instant, sleep};

/// How one link of the chain ended.
enum Link {
    /// A seeder's attempt: its object, or `None` when it failed (already counted against it).
    Seeder(Option<Opened>),
    /// The origin's answer.
    Origin(Result<Opened, OriginError>),
}

type Attempt<'a> = Pin<Box<dyn Future<Output = Link> + Send + 'a>>;

impl SeederOrigin {
    /// One attempt at a seeder, its outcome counted (an attempt dropped because another won
    /// counts nothing).
    async fn attempt(&self, candidate: &Candidate, path: &str, limit: u64) -> Option<Opened> {
        let seeder = &candidate.seeder;
        let result = fetch::fetch(
            &self.client,
            &candidate.address,
            path,
            self.cfg.request_timeout,
            limit,
            candidate.checksum.as_deref(),
        )
        .await;
        match result {
            Ok(obj) => {
                self.metrics.fetch(&seeder.id, FetchResult::Ok);
                self.succeeded(seeder);
                Some(obj)
            }
            Err(Failure::NotFound) => {
                tracing::debug!(seeder = %seeder.id, path, "seeder does not have it");
                self.metrics.fetch(&seeder.id, FetchResult::NotFound);
                None
            }
            Err(Failure::TooLarge(error)) => {
                tracing::debug!(seeder = %seeder.id, path, %error, "larger than asked for");
                None
            }
            Err(Failure::Upstream(error)) => {
                tracing::debug!(seeder = %seeder.id, path, %error, "seeder could not pull it");
                self.metrics.fetch(&seeder.id, FetchResult::Error);
                None
            }
            Err(Failure::Failed(error)) => {
                tracing::debug!(seeder = %seeder.id, path, %error, "seeder fetch failed");
                self.metrics.fetch(&seeder.id, FetchResult::Error);
                self.failed(seeder, &error);
                None
            }
        }
    }

    /// Runs the chain `candidates` → origin for `path` from its first byte (`range`: up to
    /// `range.end`; a seeder holding more than that is passed over): the next link starts when
    /// the running one failed, or when it has not finished within `hedge_delay`; the first
    /// success wins and the attempts still running are dropped. When every link failed, the
    /// origin's error.
    pub(crate) async fn hedged(
        &self,
        path: &str,
        range: Option<Range<u64>>,
        candidates: &[Candidate],
    ) -> Result<Opened, OriginError> {
        let links = candidates.len() + 1;
        let limit = range
            .as_ref()
            .map_or(self.cfg.max_object, |r| r.end.min(self.cfg.max_object));
        let start = |i: usize| -> Attempt<'_> {
            match candidates.get(i) {
                Some(c) => {
                    Box::pin(async move { Link::Seeder(self.attempt(c, path, limit).await) })
                }
                None => {
                    let range = range.clone();
                    // Read whole (at most `limit` bytes), as a seeder's answer is: the origin
                    // does not win a race against a seeder by answering its head first.
                    Box::pin(async move {
                        let read = match self.fallback.open(path, range, None).await {
                            Ok(opened) => {
                                let (info, got) = (opened.info.clone(), opened.range.clone());
                                edge_origin::collect(opened, limit)
                                    .await
                                    .map(|o| Opened::whole(info, got, o.body))
                            }
                            Err(e) => Err(e),
                        };
                        Link::Origin(read)
                    })
                }
            }
        };
        let mut running = FuturesUnordered::new();
        running.push(start(0));
        let mut next = 1;
        let hedge = sleep(self.cfg.hedge_delay);
        tokio::pin!(hedge);
        let mut origin_error = None;
        loop {
            tokio::select! {
                biased;
                Some(done) = running.next() => {
                    match done {
                        Link::Seeder(Some(obj)) => return Ok(obj),
                        Link::Seeder(None) => {}
                        Link::Origin(Ok(obj)) => {
                            self.metrics.fallbacks.inc();
                            return Ok(obj);
                        }
                        Link::Origin(Err(e)) => origin_error = Some(e),
                    }
                    if next < links {
                        running.push(start(next));
                        next += 1;
                        hedge.as_mut().reset(Instant::now() + self.cfg.hedge_delay);
                    } else if running.is_empty() {
                        self.metrics.fallbacks.inc();
                        return Err(origin_error.unwrap_or_else(|| {
                            OriginError::Unavailable("no seeder or origin answered".into())
                        }));
                    }
                }
                () = &mut hedge, if next < links => {
                    self.metrics.hedges.inc();
                    running.push(start(next));
                    next += 1;
                    hedge.as_mut().reset(Instant::now() + self.cfg.hedge_delay);
                }
            }
        }
    }
}
