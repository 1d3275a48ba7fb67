//! The tracking processor: feeds a projection from a source, in batches, with a checkpoint.
//!
//! Per batch it decodes the events the projection wants, loads the views they touch, applies
//! the events in memory, and commits the changed views, the dead letters and the checkpoint as
//! one [`UnitOfWork`](crate::view::UnitOfWork). Only then does it acknowledge the batch to its source. A crash anywhere
//! loses nothing: the batch is delivered again, and the per-stream versions kept in every view
//! make the repeat a no-op.

mod cache;
mod catch_up;
mod fold;
mod handle;
mod policy;
mod retry;
mod run;
mod segments;
mod source;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

pub use self::catch_up::CatchUpProgress;
pub use self::handle::{EndWatch, LagWatch, ProcessorHandle};
use self::handle::{Lag, Progress};
pub use self::policy::{Backoff, ErrorPolicy, OnFailure};
pub use self::retry::RetryReport;
pub use self::source::{Batch, EventSource, Feed, Rejected, StoreFeed};
use crate::error::{Error, Result};
use crate::projection::Projection;
use uuid::Uuid;

use crate::view::{DeadLetter, ViewStore};

/// Feeds one projection from a source into a view store. See the [module docs](self).
pub struct TrackingProcessor<P: Projection> {
    projection: Arc<P>,
    store: Arc<dyn ViewStore>,
    name: String,
    batch_size: usize,
    policy: ErrorPolicy,
    fail_on_unknown: bool,
    backend_backoff: Backoff,
    idle: Duration,
    position: watch::Sender<u64>,
    /// How far behind it is, for the health report.
    lag: watch::Sender<Lag>,
    cache: cache::ViewCache<P::View>,
    track_streams: bool,
    progress: Arc<Progress>,
    /// Whether to record each committed batch's stream versions, for waits on a feed that
    /// has no one order (set by `spawn` from the feed).
    record_streams: bool,
    /// The segment claim a segment's worker commits under.
    segment: Option<crate::segment::Claim>,
    /// Whether `spawn` runs it in segments.
    segmenting: Option<segments::Segmenting>,
    /// The segments it holds, run in segments (by index).
    held: watch::Sender<Vec<u32>>,
}

impl<P: Projection> std::fmt::Debug for TrackingProcessor<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackingProcessor")
            .field("name", &self.name)
            .field("batch_size", &self.batch_size)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<P: Projection> TrackingProcessor<P> {
    /// A processor for `projection` writing to `store`, under the projection's name.
    pub fn new(projection: P, store: Arc<dyn ViewStore>) -> Self {
        Self::shared(Arc::new(projection), store)
    }

    /// As [`new`](Self::new), for a projection shared with other processors (a retrier of
    /// its dead letters beside the running one).
    pub fn shared(projection: Arc<P>, store: Arc<dyn ViewStore>) -> Self {
        TrackingProcessor {
            projection,
            store,
            name: P::NAME.to_owned(),
            batch_size: 1000,
            policy: ErrorPolicy::default(),
            fail_on_unknown: true,
            backend_backoff: Backoff::default(),
            idle: Duration::from_millis(500),
            position: watch::Sender::new(0),
            lag: watch::Sender::new(Lag::Unknown),
            cache: cache::ViewCache::new(10_000),
            track_streams: false,
            progress: Arc::new(Progress::new(100_000)),
            record_streams: false,
            segment: None,
            segmenting: None,
            held: watch::Sender::new(Vec::new()),
        }
    }

    /// Runs in `count` segments (at least 1) shared with the other instances of this
    /// projection on the same view store, each held under a lease of `lease` (renewed three
    /// times a lease; an instance that stops renewing loses its segments once it runs out).
    /// For a feed with one order (the store's log): a bus shares its partitions in its
    /// consumer group instead. The view store must keep claims
    /// ([`ViewStore::claims`]), else the processor ends at
    /// once with a configuration error. See [`crate::segment`].
    ///
    /// Positions: the handle's position is the smallest of the segments this instance holds,
    /// so a wait on it covers the views of those segments only, and a segment it has just
    /// taken counts once it passes that position (the position never goes back). An instance
    /// holding none (a spare, when the segments do not divide among the instances) reports
    /// itself caught up. The lease must be from 100 ms to a day.
    #[must_use]
    pub fn segments(mut self, count: u32, lease: Duration) -> Self {
        self.segmenting = Some(segments::Segmenting {
            count: count.max(1),
            lease,
        });
        self
    }

    /// Records each stream's last applied version in the views even when fed from the global
    /// log (which otherwise records only the position). Turn it on for a replay from the store
    /// of a projection that normally lives on a bus feed: the bus feed can then take the views
    /// over and skip exactly the events the replay applied.
    #[must_use]
    pub fn track_stream_versions(mut self) -> Self {
        self.track_streams = true;
        self
    }

    /// Keeps up to `capacity` views in memory between batches (default 10 000; 0 turns it
    /// off; always off on a feed whose keys move between members, see
    /// [`Feed::pins_keys`]). A cached view that another processor changed meanwhile is caught by its revision
    /// at commit, and the batch is folded again from the store.
    #[must_use]
    pub fn view_cache(mut self, capacity: usize) -> Self {
        self.cache = cache::ViewCache::new(capacity);
        self
    }

    /// Keeps views, checkpoint and dead letters under another name (e.g. a new version
    /// rebuilt beside the old one).
    #[must_use]
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The largest number of events per batch (at least 1).
    #[must_use]
    pub fn batch_size(mut self, size: usize) -> Self {
        self.batch_size = size.max(1);
        self
    }

    /// The error policy for events the projection cannot handle.
    #[must_use]
    pub fn error_policy(mut self, policy: ErrorPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Treat events whose name no registered type knows as skippable rather than as failures
    /// (for a feed that also carries other bounded contexts' events).
    #[must_use]
    pub fn skip_unknown_events(mut self) -> Self {
        self.fail_on_unknown = false;
        self
    }

    /// The backoff while the source or the view store is failing (retried until it answers).
    #[must_use]
    pub fn backend_backoff(mut self, backoff: Backoff) -> Self {
        self.backend_backoff = backoff;
        self
    }

    /// How long a source waits for new events before the processor checks for a stop.
    #[must_use]
    pub fn idle_wait(mut self, idle: Duration) -> Self {
        self.idle = idle;
        self
    }

    /// The processor's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The projection.
    pub fn projection(&self) -> &P {
        &self.projection
    }

    /// A receiver of the largest global position committed so far (starting at the saved
    /// checkpoint once the processor runs).
    pub fn watch_position(&self) -> watch::Receiver<u64> {
        self.position.subscribe()
    }

    /// Deletes the projection's views, checkpoint and dead letters, so the next run replays
    /// from the start of the feed.
    ///
    /// # Errors
    /// A backend error.
    pub async fn reset(&self) -> Result<()> {
        self.store.reset(&self.name).await?;
        // After the store: a cached view would otherwise outlive its deleted document.
        self.cache.clear();
        self.position.send_replace(0);
        tracing::info!(projection = %self.name, "projection reset");
        Ok(())
    }

    /// Processes one batch: decode, fold, commit. Returns the number of events applied.
    ///
    /// # Errors
    /// The failure that stopped the batch under [`OnFailure::Stop`], or a view-store error after
    /// the backend retries ran out (they do not, by default).
    pub async fn process(&self, batch: &Batch) -> Result<usize> {
        self.process_batch(batch).await.map(|(applied, _)| applied)
    }

    /// As [`process`](Self::process), also returning the batch's dead letters.
    async fn process_batch(&self, batch: &Batch) -> Result<(usize, Vec<DeadLetter>)> {
        if batch.events.is_empty() && batch.rejected.is_empty() && batch.checkpoint.is_none() {
            return Ok((0, Vec::new()));
        }
        let started = std::time::Instant::now();
        let max_position = batch.events.iter().map(|e| e.position).max();
        let mut attempt = 0u32;
        // A store without transactions writes dead letters before the views: when a later
        // step of an attempt fails, they stay. An event an earlier attempt dead-lettered that
        // this one applied is then resolved with this attempt's unit of work.
        let stepwise = self.store.atomicity() == crate::view::Atomicity::Stepwise;
        let mut written_dead: Vec<Uuid> = Vec::new();
        let outcome = loop {
            // Fold afresh on every attempt: after a view conflict the views must be reloaded.
            let mut folded = match fold::fold(self, batch).await {
                Ok(folded) => folded,
                // A view another processor wrote while this one restored it: fold again.
                Err(e @ Error::ViewConflict { .. }) => {
                    crate::metrics::view_conflict(&self.name);
                    tracing::debug!(projection = %self.name, error = %e, "view changed while restored; folding again");
                    attempt = attempt.saturating_add(1);
                    tokio::time::sleep(self.backend_backoff.delay(attempt.min(8))).await;
                    continue;
                }
                // Loading the views failed (the store is down): wait and fold again.
                Err(e) if e.is_transient() => {
                    let delay = self.backend_backoff.delay(attempt);
                    tracing::warn!(projection = %self.name, error = %e, ?delay, "loading views failed; retrying");
                    attempt = attempt.saturating_add(1);
                    tokio::time::sleep(delay).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let dead_letters = folded.work.dead_letters.clone();
            if stepwise {
                let now_dead: Vec<Uuid> = dead_letters
                    .iter()
                    .map(|d| d.envelope.metadata.event_id)
                    .collect();
                folded
                    .work
                    .resolved
                    .extend(written_dead.iter().filter(|id| !now_dead.contains(id)));
                for id in now_dead {
                    if !written_dead.contains(&id) {
                        written_dead.push(id);
                    }
                }
            }
            match self.store.commit(folded.work).await {
                Ok(()) => {
                    self.cache.keep(folded.views);
                    break (folded.applied, dead_letters);
                }
                Err(e @ Error::ViewConflict { .. }) => {
                    crate::metrics::view_conflict(&self.name);
                    attempt = attempt.saturating_add(1);
                    if attempt > 3 {
                        tracing::warn!(projection = %self.name, error = %e, attempt, "views keep changing concurrently; folding again");
                    } else {
                        tracing::debug!(projection = %self.name, error = %e, "view changed concurrently; folding again");
                    }
                    if attempt > 3 {
                        tokio::time::sleep(self.backend_backoff.delay(attempt - 3)).await;
                    } else {
                        tokio::task::yield_now().await;
                    }
                }
                Err(e) if e.is_transient() => {
                    crate::metrics::commit_retry(&self.name);
                    let delay = self.backend_backoff.delay(attempt);
                    tracing::warn!(projection = %self.name, error = %e, ?delay, "commit failed; retrying");
                    attempt = attempt.saturating_add(1);
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        };
        if let Some(p) = max_position {
            self.advance(p);
        }
        if self.record_streams {
            self.progress.record(batch);
        }
        crate::metrics::batch(&self.name, outcome.0, outcome.1.len(), started.elapsed());
        Ok(outcome)
    }

    /// A processor with a batch in hand is as far behind as the oldest event of it while it
    /// works on it (a stall shows as a growing lag), and as the newest once committed; it is
    /// caught up only when its feed had nothing more.
    fn record_lag(&self, lag: Lag) {
        self.lag.send_replace(lag);
        // A segment's worker leaves the gauge to its coordinator, which sets the worst.
        if self.segment.is_none() {
            crate::metrics::lag_seconds(&self.name, lag.seconds().unwrap_or(0.0));
        }
    }

    fn advance(&self, position: u64) {
        self.position.send_if_modified(|current| {
            let moved = position > *current;
            if moved {
                *current = position;
            }
            moved
        });
    }
}
