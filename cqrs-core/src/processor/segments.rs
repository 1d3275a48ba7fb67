//! A processor run in segments: one worker per segment this instance holds, claims renewed,
//! taken and given back by a coordinator (see [`crate::segment`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::{Id, JoinError, JoinSet};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::handle::Lag;
use super::{Feed, TrackingProcessor};
use crate::error::{Error, Result};
use crate::projection::Projection;
use crate::segment::{Claim, Claimed, Segment, SegmentClaims};

/// How a processor runs in segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Segmenting {
    pub(super) count: u32,
    pub(super) lease: Duration,
}

/// The leases a coordinator accepts: renewed every third of one, a shorter lease would be
/// renewed faster than a server answers; a longer one leaves a dead instance's segments idle
/// for more than a day.
const LEASES: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(86_400);

/// A segment's worker as the coordinator holds it.
struct Worker {
    claim: Claim,
    stop: CancellationToken,
    id: Id,
    position: watch::Receiver<u64>,
    lag: watch::Receiver<Lag>,
    /// Being given back: stopped, still renewed until its batch under way is done.
    releasing: bool,
}

/// The coordinator's state: the workers, by segment, in one join set (dropping it, as an
/// abort of the coordinator does, aborts them all).
struct Coordinator<'a, P: Projection> {
    template: &'a TrackingProcessor<P>,
    feed: Arc<dyn Feed>,
    segmenting: Segmenting,
    owner: Uuid,
    workers: BTreeMap<u32, Worker>,
    tasks: JoinSet<Result<()>>,
}

impl<P: Projection> TrackingProcessor<P> {
    /// A processor for the same projection, view store and settings, working one claimed
    /// segment, with a cache of its own.
    fn worker(&self, claim: Claim) -> Self {
        let mut worker = TrackingProcessor::shared(self.projection.clone(), self.store.clone())
            .named(self.name.clone())
            .batch_size(self.batch_size)
            .error_policy(self.policy)
            .backend_backoff(self.backend_backoff)
            .idle_wait(self.idle)
            .view_cache(self.cache.capacity());
        worker.fail_on_unknown = self.fail_on_unknown;
        worker.track_streams = self.track_streams;
        worker.segment = Some(claim);
        worker
    }

    /// Runs the coordinator until `stop`: claims, renews and releases segments, a worker per
    /// segment held; publishes the smallest position and the largest lag of its workers.
    pub(super) async fn coordinate(
        &self,
        feed: Arc<dyn Feed>,
        segmenting: Segmenting,
        stop: CancellationToken,
    ) -> Result<()> {
        if self.store.claims().is_none() {
            return Err(crate::segment::no_claims(&self.name));
        }
        if !feed.globally_ordered() {
            return Err(Error::Config(format!(
                "projection `{}` runs in segments on a feed without one order (a bus): its \
                 consumer group shares the partitions already",
                self.name
            )));
        }
        if !LEASES.contains(&segmenting.lease) {
            return Err(Error::Config(format!(
                "projection `{}`: a segment lease of {:?} is outside {:?} to {:?}",
                self.name,
                segmenting.lease,
                LEASES.start(),
                LEASES.end()
            )));
        }
        let owner = Uuid::new_v4();
        tracing::info!(projection = %self.name, %owner, segments = segmenting.count, "processor started in segments");
        let mut c = Coordinator {
            template: self,
            feed,
            segmenting,
            owner,
            workers: BTreeMap::new(),
            tasks: JoinSet::new(),
        };
        let every = segmenting.lease / 3;
        let mut next_round = tokio::time::Instant::now();
        let outcome = loop {
            if let Err(e) = c.reap_ready().await {
                break Err(e);
            }
            if tokio::time::Instant::now() >= next_round {
                // A round that hangs (a server holding a lock for a dead instance) must not
                // hold back the next renewals: it is cut off after half a lease.
                match tokio::time::timeout(segmenting.lease / 2, c.round()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) if !e.is_transient() => break Err(e),
                    Ok(Err(e)) => {
                        tracing::warn!(projection = %c.template.name, error = %e, "segment claims failed; trying again next round");
                    }
                    Err(_) => {
                        tracing::warn!(projection = %c.template.name, lease = ?segmenting.lease, "a segment round outlasted half a lease; trying again next round");
                    }
                }
                next_round = tokio::time::Instant::now() + every;
            }
            c.publish();
            tokio::select! {
                _ = stop.cancelled() => break Ok(()),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        };
        c.shut_down().await;
        outcome
    }
}

impl<P: Projection> Coordinator<'_, P> {
    fn claims(&self) -> Result<&dyn SegmentClaims> {
        self.template
            .store
            .claims()
            .ok_or_else(|| crate::segment::no_claims(&self.template.name))
    }

    fn name(&self) -> &str {
        &self.template.name
    }

    /// Collects the workers that ended so far.
    async fn reap_ready(&mut self) -> Result<()> {
        while let Some(joined) = self.tasks.try_join_next_with_id() {
            self.ended(joined).await?;
        }
        Ok(())
    }

    /// One worker ended: a segment given back (or whose feed ended) is released; a lost claim
    /// lets the segment go; any other error, or a panic, ends the processor with it.
    async fn ended(
        &mut self,
        joined: std::result::Result<(Id, Result<()>), JoinError>,
    ) -> Result<()> {
        let (id, outcome) = match joined {
            Ok((id, outcome)) => (id, outcome),
            Err(e) => {
                let id = e.id();
                self.forget(id);
                return Err(Error::Backend {
                    backend: "processor",
                    message: format!("a segment of `{}` ended abnormally", self.name()),
                    source: Some(Box::new(e)),
                });
            }
        };
        let Some(worker) = self.forget(id) else {
            return Ok(());
        };
        match outcome {
            Err(Error::ClaimLost { segment, .. }) => {
                crate::metrics::claim_lost(self.name());
                tracing::warn!(projection = %self.name(), %segment, "segment taken by another instance; let go");
                Ok(())
            }
            Err(e) => Err(e),
            Ok(()) => {
                let name = self.template.name.clone();
                // Bounded: the coordinator renews the other segments only once this returns.
                let limit = self.segmenting.lease / 2;
                let released =
                    tokio::time::timeout(limit, self.claims()?.release(&name, &worker.claim))
                        .await
                        .unwrap_or_else(|_| {
                            Err(Error::Backend {
                                backend: "processor",
                                message: format!("giving a segment back: no answer in {limit:?}"),
                                source: None,
                            })
                        });
                match released {
                    Ok(()) => {
                        if worker.releasing {
                            tracing::info!(projection = %name, segment = %worker.claim.segment, "segment given back for a fair share");
                        }
                        Ok(())
                    }
                    // Its worker has stopped and it is no longer renewed: the segment is free
                    // when its lease ends, as if this instance had died. The claim rounds
                    // retry the same errors; giving one segment back must not end the rest.
                    Err(e) if e.is_transient() => {
                        crate::metrics::release_failed(&name);
                        tracing::warn!(projection = %name, segment = %worker.claim.segment, error = %e, "giving a segment back failed; it is free after its lease");
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }

    fn forget(&mut self, id: Id) -> Option<Worker> {
        let index = self
            .workers
            .iter()
            .find(|(_, w)| w.id == id)
            .map(|(i, _)| *i)?;
        self.workers.remove(&index)
    }

    /// One round: heartbeat, renew what it holds (also what it is giving back), give back
    /// what is above its share, claim up to it.
    async fn round(&mut self) -> Result<()> {
        let (name, lease) = (self.template.name.clone(), self.segmenting.lease);
        let members = self.claims()?.heartbeat(&name, self.owner, lease).await?;
        let share = self.segmenting.count.div_ceil(members.max(1)) as usize;
        tracing::debug!(projection = %name, members, share, held = self.workers.len(), "segment round");
        let held: Vec<Claim> = self.workers.values().map(|w| w.claim).collect();
        for claim in held {
            if !self.claims()?.renew(&name, &claim, lease).await? {
                // Taken: the worker's next commit is refused; stop it now.
                if let Some(worker) = self.workers.get_mut(&claim.segment.index) {
                    worker.stop.cancel();
                    tracing::warn!(projection = %name, segment = %claim.segment, "segment lease lost; let go");
                }
            }
        }
        // Give back above the share, without waiting: each worker stops after its batch
        // under way and is released when it ends.
        let keeping = |w: &&mut Worker| !w.releasing;
        let mut kept = self.workers.values_mut().filter(keeping).count();
        for worker in self.workers.values_mut().rev() {
            if kept <= share {
                break;
            }
            if !worker.releasing {
                worker.releasing = true;
                worker.stop.cancel();
                kept -= 1;
            }
        }
        // Start where this owner's id points, so that members joining at once try different
        // segments first.
        let count = self.segmenting.count;
        let start = (self.owner.as_u128() % u128::from(count.max(1))) as u64;
        for step in 0..u64::from(count) {
            if kept >= share {
                break;
            }
            let index = u32::try_from((start + step) % u64::from(count)).unwrap_or(0);
            if self.workers.contains_key(&index) {
                continue;
            }
            let segment = Segment::new(index, count)?;
            if let Some(claimed) = self
                .claims()?
                .claim(&name, segment, self.owner, lease)
                .await?
            {
                // A segment claimed for the first time starts where the projection stood
                // before it ran in segments (nothing, for a new projection).
                let checkpoint = match claimed.checkpoint {
                    Some(c) => Some(c),
                    None => self.template.store.checkpoint(&name).await?,
                };
                self.start_worker(Claimed {
                    checkpoint,
                    ..claimed
                });
                kept += 1;
            }
        }
        crate::metrics::segments_held(&name, kept);
        let held: Vec<u32> = self
            .workers
            .iter()
            .filter(|(_, w)| !w.releasing)
            .map(|(i, _)| *i)
            .collect();
        self.template.held.send_if_modified(|h| {
            let changed = *h != held;
            *h = held;
            changed
        });
        Ok(())
    }

    fn start_worker(&mut self, claimed: Claimed) {
        let Claimed { claim, checkpoint } = claimed;
        let worker = self.template.worker(claim);
        let stop = CancellationToken::new();
        let (position, lag) = (worker.watch_position(), worker.lag.subscribe());
        let (feed, token) = (self.feed.clone(), stop.clone());
        let handle = self
            .tasks
            .spawn(async move { worker.run_from(feed.as_ref(), checkpoint, token).await });
        tracing::info!(projection = %self.template.name, segment = %claim.segment, ?checkpoint, "segment claimed");
        self.workers.insert(
            claim.segment.index,
            Worker {
                claim,
                stop,
                id: handle.id(),
                position,
                lag,
                releasing: false,
            },
        );
    }

    /// Stops every worker after its batch under way (waiting a lease at most; the rest are
    /// aborted when the join set drops), releases their claims and leaves the group.
    async fn shut_down(&mut self) {
        for worker in self.workers.values_mut() {
            worker.releasing = true;
            worker.stop.cancel();
        }
        let deadline = tokio::time::Instant::now() + self.segmenting.lease;
        while !self.workers.is_empty() {
            match tokio::time::timeout_at(deadline, self.tasks.join_next_with_id()).await {
                Ok(Some(joined)) => {
                    if let Err(e) = self.ended(joined).await {
                        tracing::warn!(projection = %self.name(), error = %e, "a segment ended badly while stopping; it is free after its lease");
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(projection = %self.name(), "segments still busy after a lease; aborted, free after their lease");
                    break;
                }
            }
        }
        self.tasks.abort_all();
        crate::metrics::segments_held(self.name(), 0);
        self.template.held.send_replace(Vec::new());
        // Leave the group, so that the others take up the share at once.
        let (name, owner) = (self.template.name.clone(), self.owner);
        if let Ok(claims) = self.claims() {
            if let Err(e) = claims.heartbeat(&name, owner, Duration::ZERO).await {
                tracing::warn!(projection = %name, error = %e, "leaving the group failed; the others see it gone after its lease");
            }
        }
    }

    /// The smallest position of the segments held (what every one of them has committed) and
    /// the lag of the one furthest behind; caught up while it holds none (a spare).
    fn publish(&self) {
        let (position, lag) = (&self.template.position, &self.template.lag);
        let held = self.workers.values().filter(|w| !w.releasing);
        if let Some(min) = held.clone().map(|w| *w.position.borrow()).min() {
            position.send_if_modified(|p| {
                let moved = min > *p;
                if moved {
                    *p = min;
                }
                moved
            });
        }
        let worst = held
            .map(|w| *w.lag.borrow())
            .fold(Lag::CaughtUp, |worst, l| match (worst, l) {
                (Lag::Behind(a), Lag::Behind(b)) => Lag::Behind(a.min(b)),
                (w @ Lag::Behind(_), _) | (_, w @ Lag::Behind(_)) => w,
                (Lag::Unknown, _) | (_, Lag::Unknown) => Lag::Unknown,
                (w, _) => w,
            });
        let changed = lag.send_if_modified(|l| {
            let changed = *l != worst;
            *l = worst;
            changed
        });
        if changed {
            crate::metrics::lag_seconds(self.name(), worst.seconds().unwrap_or(0.0));
        }
    }
}
