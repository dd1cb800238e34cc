//! The hedged chain of attempts: seeders in candidate order, then the origin.

use crate::{
    SeederOrigin,
    fetch::{self, Ask, Expected, Failure},
    metrics::FetchResult,
    route::Candidate,
};
use edge_origin::{Opened, OriginError};
use futures::{StreamExt, stream::FuturesUnordered};
use sha2::{Digest, Sha256};
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

/// What the origin's answer must hash to, to count as the seeders' version of the object: its
/// bytes are then the same as theirs, so it gets their entity tag and a response started on a
/// seeder's slice can go on with the origin's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verify {
    /// SHA-256 of the bytes asked for (the whole object's, or the slice's from the directory).
    pub(crate) sha256: [u8; 32],
    /// The seeders' entity tag of the object (unquoted).
    pub(crate) etag: String,
    /// The object's size, when known.
    pub(crate) size: Option<u64>,
    /// Whether another answer is an error ([`OriginError::Changed`]: the read asked for the
    /// seeders' version) rather than the origin's own version.
    pub(crate) required: bool,
}

/// How the origin takes part in a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OriginLink {
    /// The last link, reading `range` (at most `limit` bytes), started by the hedge timer like a seeder (a whole object:
    /// whichever answers first wins).
    Hedged {
        range: Option<Range<u64>>,
        limit: u64,
        verify: Option<Verify>,
    },
    /// The last link, reading `range`, started only once every seeder failed: a slice of a
    /// larger object, which should be of the version the response started on.
    AfterSeeders {
        range: Option<Range<u64>>,
        limit: u64,
        verify: Option<Verify>,
    },
    /// Not a link: the read asks for the seeders' version and nothing tells whether the
    /// origin's bytes are the same.
    Never,
}

impl SeederOrigin {
    /// One attempt at a seeder, its outcome counted (an attempt dropped because another won
    /// counts nothing).
    async fn attempt(
        &self,
        candidate: &Candidate,
        ask: &Ask<'_>,
        slice: Option<[u8; 32]>,
    ) -> Option<Opened> {
        let seeder = &candidate.seeder;
        let expected = Expected {
            checksum: candidate.checksum.as_deref(),
            size: candidate.size,
            slice,
        };
        let path = ask.path;
        match fetch::fetch(&self.client, &candidate.address, ask, expected).await {
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
            Err(Failure::CannotServe(error)) => {
                tracing::debug!(seeder = %seeder.id, path, %error, "seeder cannot serve this part");
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

    /// The origin's read of `range` of `path`, whole (at most `limit` bytes), as a seeder's
    /// answer is: the origin does not win a race against a seeder by answering its head first.
    /// With `verify`, bytes that hash as expected are labelled the seeders' version.
    async fn origin_whole(
        &self,
        path: &str,
        range: Option<Range<u64>>,
        limit: u64,
        verify: Option<&Verify>,
    ) -> Link {
        let read = match self.fallback.open(path, range, None).await {
            Ok(opened) => {
                let (mut info, got) = (opened.info.clone(), opened.range.clone());
                match edge_origin::collect(opened, limit).await {
                    Ok(o) => match verify {
                        None => Ok(Opened::whole(info, got, o.body)),
                        Some(v) => {
                            let same = v.size.is_none_or(|s| s == info.size) && {
                                let body = o.body.clone();
                                tokio::task::spawn_blocking(move || {
                                    <[u8; 32]>::from(Sha256::digest(&body))
                                })
                                .await
                                .is_ok_and(|d| d == v.sha256)
                            };
                            if same {
                                info.etag = Some(v.etag.clone());
                                Ok(Opened::whole(info, got, o.body))
                            } else if v.required {
                                Err(OriginError::Changed)
                            } else {
                                Ok(Opened::whole(info, got, o.body))
                            }
                        }
                    },
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        Link::Origin(read)
    }

    /// Runs the chain `candidates` → origin (as `origin` says) for `ask` (`slice`: the slice's
    /// checksum from the directory, which seeders' answers must match too): the next seeder starts
    /// when the running attempt failed, or when it has not finished within `hedge_delay`; the
    /// first success wins and the attempts still running are dropped. When every link failed,
    /// the origin's error.
    pub(crate) async fn hedged(
        &self,
        ask: &Ask<'_>,
        candidates: &[Candidate],
        slice: Option<[u8; 32]>,
        origin: OriginLink,
    ) -> Result<Opened, OriginError> {
        let seeders = candidates.len();
        let links = seeders + usize::from(origin != OriginLink::Never);
        let hedged_links = match origin {
            OriginLink::Hedged { .. } => links,
            _ => seeders,
        };
        let start = |i: usize| -> Attempt<'_> {
            match (candidates.get(i), &origin) {
                (Some(c), _) => {
                    Box::pin(async move { Link::Seeder(self.attempt(c, ask, slice).await) })
                }
                (
                    None,
                    OriginLink::Hedged {
                        range,
                        limit,
                        verify,
                    }
                    | OriginLink::AfterSeeders {
                        range,
                        limit,
                        verify,
                    },
                ) => Box::pin(self.origin_whole(ask.path, range.clone(), *limit, verify.as_ref())),
                (None, OriginLink::Never) => Box::pin(async { Link::Seeder(None) }),
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
                    // The origin after the seeders starts once none of them is still running.
                    let wait = next >= seeders
                        && matches!(origin, OriginLink::AfterSeeders { .. })
                        && !running.is_empty();
                    if next < links && !wait {
                        running.push(start(next));
                        next += 1;
                        hedge.as_mut().reset(Instant::now() + self.cfg.hedge_delay);
                    } else if running.is_empty() {
                        if origin != OriginLink::Never {
                            self.metrics.fallbacks.inc();
                        }
                        return Err(origin_error.unwrap_or_else(|| {
                            OriginError::Unavailable(format!(
                                "no seeder or origin answered for {}",
                                ask.path
                            ))
                        }));
                    }
                }
                () = &mut hedge, if next < hedged_links => {
                    self.metrics.hedges.inc();
                    running.push(start(next));
                    next += 1;
                    hedge.as_mut().reset(Instant::now() + self.cfg.hedge_delay);
                }
            }
        }
    }
}
