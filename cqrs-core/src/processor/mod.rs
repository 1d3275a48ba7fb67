//! The tracking processor: feeds a projection from a source, in batches, with a checkpoint.
//!
//! Per batch it decodes the events the projection wants, loads the views they touch, applies
//! the events in memory, and commits the changed views, the dead letters and the checkpoint as
//! one [`UnitOfWork`](crate::view::UnitOfWork). Only then does it acknowledge the batch to its source. A crash anywhere
//! loses nothing: the batch is delivered again, and the per-stream versions kept in every view
//! make the repeat a no-op.

mod fold;
mod handle;
mod source;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use self::handle::Progress;
pub use self::handle::{EndWatch, ProcessorHandle};
pub use self::source::{Batch, EventSource, Feed, Rejected, StoreFeed};
use crate::error::{Error, Result};
use crate::projection::Projection;
use crate::store::EventReader;
use uuid::Uuid;

use crate::view::{DeadLetter, DeadLetterStore, ViewStore};

/// Exponential backoff between retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay.
    pub min: Duration,
    /// The largest delay.
    pub max: Duration,
}

impl Backoff {
    /// A backoff from `min` doubling up to `max`.
    pub const fn new(min: Duration, max: Duration) -> Self {
        Backoff { min, max }
    }

    /// The delay before retry number `attempt` (0-based), with up to 25% jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self
            .min
            .saturating_mul(2u32.saturating_pow(attempt.min(16)))
            .min(self.max);
        let jitter = base.as_nanos() as u64 / 4;
        if jitter == 0 {
            return base;
        }
        let r = fastrand::u64(0..jitter);
        base.saturating_sub(Duration::from_nanos(r))
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (0-based) with "equal jitter": half of the
    /// exponential delay, plus a random share of the other half. Writers that collided retry
    /// at spread-out moments instead of colliding again in lockstep.
    pub fn spread(&self, attempt: u32) -> Duration {
        let base = self
            .min
            .saturating_mul(2u32.saturating_pow(attempt.min(16)))
            .min(self.max);
        let half = base / 2;
        let span = (base - half).as_nanos() as u64;
        half + Duration::from_nanos(if span == 0 {
            0
        } else {
            fastrand::u64(0..=span)
        })
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(50), Duration::from_secs(5))
    }
}

/// What to do once an event has failed for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Stop the processor with the error; the checkpoint stays before the failing batch.
    Stop,
    /// Keep the event and the reason as a dead letter, and go on with the others.
    DeadLetter,
}

/// How a projection treats an event it cannot handle: a failing handler is retried with
/// backoff, then stopped on or dead-lettered. An event that cannot be decoded (unknown name,
/// bad payload) is not retried: it goes straight to `then`. Nothing is ever dropped silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorPolicy {
    /// How many times a failing handler is retried.
    pub retries: u32,
    /// The delay between handler retries.
    pub backoff: Backoff,
    /// What happens after the retries.
    pub then: OnFailure,
}

impl ErrorPolicy {
    /// Stop at the first failure.
    pub const fn stop() -> Self {
        ErrorPolicy {
            retries: 0,
            backoff: Backoff::new(Duration::from_millis(50), Duration::from_secs(5)),
            then: OnFailure::Stop,
        }
    }

    /// Dead-letter at the first failure.
    pub const fn dead_letter() -> Self {
        ErrorPolicy {
            then: OnFailure::DeadLetter,
            ..Self::stop()
        }
    }

    /// Retry a failing handler `retries` times with `backoff`, then stop.
    pub const fn retry(retries: u32, backoff: Backoff) -> Self {
        ErrorPolicy {
            retries,
            backoff,
            then: OnFailure::Stop,
        }
    }

    /// After the retries, dead-letter instead of stopping.
    pub const fn then_dead_letter(mut self) -> Self {
        self.then = OnFailure::DeadLetter;
        self
    }
}

impl Default for ErrorPolicy {
    fn default() -> Self {
        Self::stop()
    }
}

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
    cache: Mutex<HashMap<String, fold::Cached<P::View>>>,
    cache_capacity: usize,
    track_streams: bool,
    progress: Arc<Progress>,
    /// Whether to record each committed batch's stream versions, for waits on a feed that
    /// has no one order (set by `spawn` from the feed).
    record_streams: bool,
}

/// What a retry of dead letters did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RetryReport {
    /// The event ids of the dead letters applied and removed.
    pub resolved: Vec<Uuid>,
    /// The dead letters that failed again, with the new reason; they stay dead letters.
    pub failed: Vec<(Uuid, String)>,
}

/// How far a [`catch_up`](TrackingProcessor::catch_up_with_progress) has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatchUpProgress {
    /// Events read so far.
    pub events: u64,
    /// The global position processed so far (0 before the first batch).
    pub position: u64,
    /// Where the range measured starts: the checkpoint, then (once the first batch is read)
    /// just before its first event, since positions may start far above the checkpoint.
    pub start: u64,
    /// The committed head it runs up to.
    pub target: u64,
}

impl CatchUpProgress {
    /// The fraction of the position range done, from 0.0 to 1.0. Positions need not be dense
    /// (PostgreSQL's are not), so this is an estimate; `events` is exact.
    pub fn fraction(&self) -> f64 {
        if self.target <= self.start {
            return 1.0;
        }
        let done = self.position.saturating_sub(self.start) as f64;
        (done / (self.target - self.start) as f64).clamp(0.0, 1.0)
    }
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
            cache: Mutex::new(HashMap::new()),
            cache_capacity: 10_000,
            track_streams: false,
            progress: Arc::new(Progress::new(100_000)),
            record_streams: false,
        }
    }

    /// Records each stream's last applied version in the views even when fed from the global
    /// log (which otherwise records only the position). Turn it on for a replay from the store
    /// of a projection that normally lives on a bus feed: the bus feed can then take the views
    /// over and skip exactly the events the replay applied.
    pub fn track_stream_versions(mut self) -> Self {
        self.track_streams = true;
        self
    }

    /// Keeps up to `capacity` views in memory between batches (default 10 000; 0 turns it
    /// off). A cached view that another processor changed meanwhile is caught by its revision
    /// at commit, and the batch is folded again from the store.
    pub fn view_cache(mut self, capacity: usize) -> Self {
        self.cache_capacity = capacity;
        self
    }

    /// Keeps views, checkpoint and dead letters under another name (e.g. a new version
    /// rebuilt beside the old one).
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The largest number of events per batch (at least 1).
    pub fn batch_size(mut self, size: usize) -> Self {
        self.batch_size = size.max(1);
        self
    }

    /// The error policy for events the projection cannot handle.
    pub fn error_policy(mut self, policy: ErrorPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Treat events whose name no registered type knows as skippable rather than as failures
    /// (for a feed that also carries other bounded contexts' events).
    pub fn skip_unknown_events(mut self) -> Self {
        self.fail_on_unknown = false;
        self
    }

    /// The backoff while the source or the view store is failing (retried until it answers).
    pub fn backend_backoff(mut self, backoff: Backoff) -> Self {
        self.backend_backoff = backoff;
        self
    }

    /// How long a source waits for new events before the processor checks for a stop.
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
        self.cache.lock().clear();
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
                    self.cache_views(folded.views);
                    break (folded.applied, dead_letters);
                }
                Err(e @ Error::ViewConflict { .. }) => {
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
        Ok(outcome)
    }

    fn cache_views(&self, views: Vec<(String, fold::Cached<P::View>)>) {
        if self.cache_capacity == 0 {
            return;
        }
        let mut cache = self.cache.lock();
        for (id, view) in views {
            while cache.len() >= self.cache_capacity {
                let Some(victim) = cache.keys().next().cloned() else {
                    break;
                };
                cache.remove(&victim);
            }
            cache.insert(id, view);
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

    async fn retry_backend<T, F, Fut>(
        &self,
        what: &str,
        stop: &CancellationToken,
        f: F,
    ) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut attempt = 0;
        loop {
            let outcome = tokio::select! {
                _ = stop.cancelled() => return Err(Error::Shutdown),
                outcome = f() => outcome,
            };
            match outcome {
                Ok(v) => return Ok(v),
                Err(e) if e.is_transient() => {
                    let delay = self.backend_backoff.delay(attempt);
                    tracing::warn!(projection = %self.name, error = %e, ?delay, "{what} failed; retrying");
                    attempt = attempt.saturating_add(1);
                    tokio::select! {
                        _ = stop.cancelled() => return Err(Error::Shutdown),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs until `stop` is cancelled: opens the feed at the saved checkpoint, then processes
    /// batch after batch. Backend failures are retried with backoff; it returns an error only
    /// when the error policy says stop, or for a failure that retrying cannot mend.
    ///
    /// # Errors
    /// The failure that stopped it.
    pub async fn run(&self, feed: &dyn Feed, stop: CancellationToken) -> Result<()> {
        let checkpoint = match self
            .retry_backend("loading the checkpoint", &stop, || {
                self.store.checkpoint(&self.name)
            })
            .await
        {
            Err(Error::Shutdown) => return Ok(()),
            other => other?,
        };
        let mut source = match self
            .retry_backend("opening the feed", &stop, || {
                feed.open(checkpoint, self.idle)
            })
            .await
        {
            Err(Error::Shutdown) => return Ok(()),
            other => other?,
        };
        if let Some(position) = checkpoint {
            self.advance(position);
        }
        tracing::info!(projection = %self.name, ?checkpoint, "processor started");
        let mut attempt = 0u32;
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                next = source.next_batch(self.batch_size) => next,
            };
            let batch = match next {
                Ok(batch) => {
                    attempt = 0;
                    batch
                }
                Err(e) if e.is_transient() => {
                    let delay = self.backend_backoff.delay(attempt);
                    tracing::warn!(projection = %self.name, error = %e, ?delay, "reading the feed failed; retrying");
                    attempt = attempt.saturating_add(1);
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(delay) => {}
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            if batch.events.is_empty() && batch.rejected.is_empty() {
                continue;
            }
            let (_, dead_letters) = self.process_batch(&batch).await?;
            if !dead_letters.is_empty() {
                let mut attempt = 0u32;
                while let Err(e) = source.dead_letter(&dead_letters).await {
                    if !e.is_transient() {
                        return Err(e);
                    }
                    let delay = self.backend_backoff.delay(attempt);
                    tracing::warn!(projection = %self.name, error = %e, ?delay, "handing over dead letters failed; retrying");
                    attempt = attempt.saturating_add(1);
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
            // Let other tasks (and an abort) in between batches, even when every call was ready.
            tokio::task::yield_now().await;
            let mut attempt = 0u32;
            loop {
                match source.ack(&batch).await {
                    Ok(()) => break,
                    Err(e) if e.is_transient() => {
                        let delay = self.backend_backoff.delay(attempt);
                        tracing::warn!(projection = %self.name, error = %e, ?delay, "acknowledging failed; retrying");
                        attempt = attempt.saturating_add(1);
                        tokio::select! {
                            _ = stop.cancelled() => return Ok(()),
                            _ = tokio::time::sleep(delay) => {}
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }

    /// Applies this projection's dead letters again, oldest first, each to its view as it is
    /// now (e.g. after a fix to the handler or a new upcaster was deployed). A success writes
    /// the view and removes the dead letter in one unit of work; a failure leaves it in place
    /// and is reported with the new reason. Safe while the processor runs: view revisions
    /// catch concurrent writes.
    ///
    /// # Errors
    /// A backend error (the dead letters not yet retried stay as they were).
    pub async fn retry_dead_letters(
        &self,
        dead_letters: &dyn DeadLetterStore,
    ) -> Result<RetryReport> {
        self.retry_dead_letters_where(dead_letters, |_| true).await
    }

    /// As [`retry_dead_letters`](Self::retry_dead_letters), for the one dead letter of this
    /// event (an empty report when there is none).
    ///
    /// # Errors
    /// A backend error.
    pub async fn retry_dead_letter(
        &self,
        dead_letters: &dyn DeadLetterStore,
        event_id: Uuid,
    ) -> Result<RetryReport> {
        self.retry_dead_letters_where(dead_letters, |d| d.envelope.metadata.event_id == event_id)
            .await
    }

    async fn retry_dead_letters_where(
        &self,
        dead_letters: &dyn DeadLetterStore,
        wanted: impl Fn(&DeadLetter) -> bool,
    ) -> Result<RetryReport> {
        let mut letters = dead_letters.dead_letters(&self.name).await?;
        letters.retain(|d| wanted(d));
        letters.sort_by_key(|d| d.envelope.position);
        let mut report = RetryReport::default();
        for letter in letters {
            let event_id = letter.envelope.metadata.event_id;
            let mut conflicts = 0u32;
            loop {
                let (work, id) = match fold::refold_dead_letter(self, &letter).await? {
                    Ok(done) => done,
                    Err(reason) => {
                        tracing::warn!(projection = %self.name, %event_id, %reason, "dead letter failed again");
                        report.failed.push((event_id, reason));
                        break;
                    }
                };
                match self.store.commit(work).await {
                    Ok(()) => {
                        self.cache.lock().remove(&id);
                        tracing::info!(projection = %self.name, %event_id, "dead letter resolved");
                        report.resolved.push(event_id);
                        break;
                    }
                    Err(Error::ViewConflict { .. }) if conflicts < 10 => {
                        // Resolved by someone else meanwhile: nothing left to do.
                        let still_dead = dead_letters
                            .dead_letters(&self.name)
                            .await?
                            .iter()
                            .any(|d| d.envelope.metadata.event_id == event_id);
                        if !still_dead {
                            break;
                        }
                        conflicts += 1;
                        tokio::time::sleep(self.backend_backoff.delay(conflicts)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(report)
    }

    /// Processes everything committed to the store before the call (after the checkpoint),
    /// then returns the number of events read. Used to rebuild a read model after
    /// [`reset`](Self::reset).
    ///
    /// # Errors
    /// As [`process`](Self::process), or a store error.
    pub async fn catch_up(&self, reader: Arc<dyn EventReader>) -> Result<u64> {
        self.catch_up_with_progress(reader, |_| {}).await
    }

    /// As [`catch_up`](Self::catch_up), calling `progress` after every committed batch (and
    /// once at the start), e.g. to draw a progress bar.
    ///
    /// # Errors
    /// As [`process`](Self::process), or a store error.
    pub async fn catch_up_with_progress(
        &self,
        reader: Arc<dyn EventReader>,
        mut progress: impl FnMut(CatchUpProgress) + Send,
    ) -> Result<u64> {
        let target = reader.head().await?;
        let mut after = self.store.checkpoint(&self.name).await?.unwrap_or(0);
        let mut report = CatchUpProgress {
            events: 0,
            position: after,
            start: after,
            target,
        };
        progress(report);
        let mut batch = Batch::from_log(reader.read_all(after, self.batch_size).await?);
        while after < target {
            let Some(last) = batch.checkpoint else {
                // Committed but not readable yet: a transaction that took a smaller position
                // is still running.
                reader.wait_for_events(after, self.idle).await?;
                batch = Batch::from_log(reader.read_all(after, self.batch_size).await?);
                continue;
            };
            if report.events == 0 {
                // Positions may start far above the checkpoint: measure from the first event.
                report.start = batch
                    .events
                    .first()
                    .map_or(after, |e| e.position.saturating_sub(1));
            }
            // Read the next batch on another task while this one is applied.
            let next = {
                let (reader, size) = (reader.clone(), self.batch_size);
                tokio::spawn(async move { reader.read_all(last, size).await })
            };
            let processed = self.process(&batch).await;
            let next = next.await.map_err(|e| Error::Backend {
                backend: "processor",
                message: "reading ahead failed".into(),
                source: Some(Box::new(e)),
            });
            processed?;
            report.events += batch.events.len() as u64;
            report.position = last;
            progress(report);
            after = last;
            if after >= target {
                break;
            }
            batch = Batch::from_log(next??);
        }
        Ok(report.events)
    }

    /// Runs the processor on a task of its own until the handle is stopped.
    pub fn spawn(mut self, feed: Arc<dyn Feed>) -> ProcessorHandle {
        let stop = CancellationToken::new();
        let position = self.watch_position();
        let token = stop.clone();
        let name = self.name.clone();
        let progress = self.progress.clone();
        let ordered = feed.globally_ordered();
        self.record_streams = !ordered;
        let (ended_tx, ended) = watch::channel(None);
        let task = tokio::spawn(async move {
            let outcome = self.run(feed.as_ref(), token).await;
            let why = match &outcome {
                Ok(()) => "stopped".to_owned(),
                Err(e) => {
                    tracing::error!(projection = %self.name, error = %e, "processor stopped");
                    e.to_string()
                }
            };
            ended_tx.send_replace(Some(why));
            outcome
        });
        ProcessorHandle {
            name,
            stop,
            task,
            position,
            ended,
            ordered,
            progress,
        }
    }
}
