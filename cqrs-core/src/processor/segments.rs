//! A processor run in segments: one worker per segment this instance holds, claims renewed,
//! taken and given back by a coordinator (see [`crate::segment`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::{Id, JoinSet};
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

/// A segment's worker as the coordinator holds it.
struct Worker {
    claim: Claim,
    stop: CancellationToken,
    id: Id,
    position: watch::Receiver<u64>,
    lag: watch::Receiver<Lag>,
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
            .view_cache(self.cache_capacity);
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
        let round = (segmenting.lease / 3).max(Duration::from_millis(20));
        let mut next_round = tokio::time::Instant::now();
        let outcome = loop {
            if let Err(e) = c.reap() {
                break Err(e);
            }
            if tokio::time::Instant::now() >= next_round {
                // A round that hangs (a server holding a lock for a dead instance) must not
                // stop the renewals for good: it is cut off after a lease.
                match tokio::time::timeout(segmenting.lease, c.round()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) if !e.is_transient() => break Err(e),
                    Ok(Err(e)) => {
                        tracing::warn!(projection = %c.template.name, error = %e, "segment claims failed; trying again next round");
                    }
                    Err(_) => {
                        tracing::warn!(projection = %c.template.name, lease = ?segmenting.lease, "a segment round outlasted a lease; trying again next round");
                    }
                }
                next_round = tokio::time::Instant::now() + round;
            }
            c.publish(&self.position, &self.lag);
            tokio::select! {
                _ = stop.cancelled() => break Ok(()),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        };
        let held: Vec<u32> = c.workers.keys().copied().collect();
        for index in held {
            if let Err(e) = c.give_back(index).await {
                tracing::warn!(projection = %c.template.name, error = %e, "releasing a segment failed; it is free after its lease");
            }
        }
        crate::metrics::segments_held(&c.template.name, 0);
        c.template.held.send_replace(Vec::new());
        // Leave the group, so that the others take up the share at once.
        if let Ok(claims) = c.claims() {
            if let Err(e) = claims
                .heartbeat(&c.template.name, owner, Duration::ZERO)
                .await
            {
                tracing::warn!(projection = %c.template.name, error = %e, "leaving the group failed; the others see it gone after its lease");
            }
        }
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

    /// Collects the workers that ended: a lost claim lets the segment go; any other error ends
    /// the processor with it.
    fn reap(&mut self) -> Result<()> {
        while let Some(joined) = self.tasks.try_join_next_with_id() {
            let (id, outcome) = match joined {
                Ok((id, outcome)) => (id, outcome),
                Err(e) => {
                    return Err(Error::Backend {
                        backend: "processor",
                        message: format!("a segment of `{}` ended abnormally", self.template.name),
                        source: Some(Box::new(e)),
                    })
                }
            };
            let Some(index) = self
                .workers
                .iter()
                .find(|(_, w)| w.id == id)
                .map(|(i, _)| *i)
            else {
                continue;
            };
            self.workers.remove(&index);
            match outcome {
                Err(Error::ClaimLost { segment, .. }) => {
                    crate::metrics::claim_lost(&self.template.name);
                    tracing::warn!(projection = %self.template.name, %segment, "segment taken by another instance; let go");
                }
                Err(e) => return Err(e),
                Ok(()) => {}
            }
        }
        Ok(())
    }

    /// One round: heartbeat, renew what it holds, give back what is above its share, claim
    /// up to it.
    async fn round(&mut self) -> Result<()> {
        let (name, lease) = (self.template.name.clone(), self.segmenting.lease);
        let members = self.claims()?.heartbeat(&name, self.owner, lease).await?;
        let share = self.segmenting.count.div_ceil(members.max(1)) as usize;
        tracing::debug!(projection = %name, members, share, held = self.workers.len(), "segment round");
        let held: Vec<Claim> = self.workers.values().map(|w| w.claim).collect();
        for claim in held {
            if !self.claims()?.renew(&name, &claim, lease).await? {
                // Taken: the worker's next commit is refused; stop it now.
                if let Some(worker) = self.workers.remove(&claim.segment.index) {
                    worker.stop.cancel();
                    crate::metrics::claim_lost(&name);
                    tracing::warn!(projection = %name, segment = %claim.segment, "segment lease lost; let go");
                }
            }
        }
        while self.workers.len() > share {
            let Some(index) = self.workers.keys().next_back().copied() else {
                break;
            };
            self.give_back(index).await?;
            tracing::info!(projection = %name, index, share, members, "segment given back for a fair share");
        }
        // Start where this owner's id points, so that members joining at once try different
        // segments first.
        let count = self.segmenting.count;
        let start = (self.owner.as_u128() % u128::from(count.max(1))) as u32;
        for step in 0..count {
            if self.workers.len() >= share {
                break;
            }
            let segment = Segment::new((start + step) % count, count)?;
            if self.workers.contains_key(&segment.index) {
                continue;
            }
            if let Some(claimed) = self
                .claims()?
                .claim(&name, segment, self.owner, lease)
                .await?
            {
                self.start_worker(claimed);
            }
        }
        crate::metrics::segments_held(&name, self.workers.len());
        let held: Vec<u32> = self.workers.keys().copied().collect();
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
            },
        );
    }

    /// Stops a segment's worker after the batch under way, then releases its claim.
    async fn give_back(&mut self, index: u32) -> Result<()> {
        let Some(worker) = self.workers.remove(&index) else {
            return Ok(());
        };
        worker.stop.cancel();
        // Wait for that worker only; others that end meanwhile are reaped next time.
        let mut ended = None;
        while let Some(joined) = self.tasks.join_next_with_id().await {
            match joined {
                Ok((id, outcome)) if id == worker.id => {
                    ended = Some(outcome);
                    break;
                }
                Ok((id, outcome)) => self.orphan(id, outcome),
                Err(e) if e.id() == worker.id => break,
                Err(_) => {}
            }
        }
        match ended {
            Some(Err(Error::ClaimLost { .. })) => return Ok(()),
            Some(Err(e)) => return Err(e),
            _ => {}
        }
        let name = self.template.name.clone();
        self.claims()?.release(&name, &worker.claim).await
    }

    /// A worker that ended while another was being given back: reaped as [`reap`] would, its
    /// error logged (the next round sees the segment free).
    fn orphan(&mut self, id: Id, outcome: Result<()>) {
        let Some(index) = self
            .workers
            .iter()
            .find(|(_, w)| w.id == id)
            .map(|(i, _)| *i)
        else {
            return;
        };
        self.workers.remove(&index);
        if let Err(e) = outcome {
            tracing::warn!(projection = %self.template.name, index, error = %e, "segment worker ended");
        }
    }

    /// The smallest position of the segments held (what every one of them has committed) and
    /// the lag of the one furthest behind.
    fn publish(&self, position: &watch::Sender<u64>, lag: &watch::Sender<Lag>) {
        if let Some(min) = self.workers.values().map(|w| *w.position.borrow()).min() {
            position.send_if_modified(|p| {
                let moved = min > *p;
                if moved {
                    *p = min;
                }
                moved
            });
        }
        let lags = self.workers.values().map(|w| *w.lag.borrow());
        let worst = lags.fold(None, |worst: Option<Lag>, l| match (worst, l) {
            (None, l) => Some(l),
            (Some(Lag::Behind(a)), Lag::Behind(b)) => Some(Lag::Behind(a.min(b))),
            (Some(w @ Lag::Behind(_)), _) | (Some(_), w @ Lag::Behind(_)) => Some(w),
            (Some(Lag::Unknown), _) | (Some(_), Lag::Unknown) => Some(Lag::Unknown),
            (Some(w), _) => Some(w),
        });
        if let Some(worst) = worst {
            lag.send_if_modified(|l| {
                let changed = *l != worst;
                *l = worst;
                changed
            });
        }
    }
}
