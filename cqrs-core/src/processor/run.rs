//! A processor's run: opening its feed at the checkpoint, batch after batch until it is
//! stopped, backend failures retried with backoff; and its task, behind a handle.

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::handle::Lag;
use super::{Feed, ProcessorHandle, TrackingProcessor};
use crate::error::{Error, Result};
use crate::projection::Projection;

impl<P: Projection> TrackingProcessor<P> {
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
        self.run_from(feed, checkpoint, stop).await
    }

    /// As [`run`](Self::run), from a checkpoint the caller loaded (a segment's, with its
    /// claim).
    pub(super) async fn run_from(
        &self,
        feed: &dyn Feed,
        checkpoint: Option<u64>,
        stop: CancellationToken,
    ) -> Result<()> {
        if !feed.pins_keys() {
            // Another member may change a view between two of this one's batches: a cached
            // view would fail its commit and be folded again, every time.
            self.cache.turn_off();
        }
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
                // The feed has nothing more: caught up (the gauge set again on every idle
                // round, for a recorder installed late).
                self.record_lag(Lag::CaughtUp);
                continue;
            }
            let span = tracing::debug_span!(
                "processor.batch",
                projection = %self.name,
                events = batch.events.len()
            );
            let stamps = batch.events.iter().map(|e| e.metadata.timestamp);
            if let Some(oldest) = stamps.clone().min() {
                self.record_lag(Lag::Behind(oldest));
            }
            let (_, dead_letters) = self.process_batch(&batch).instrument(span).await?;
            if let Some(newest) = stamps.max() {
                self.record_lag(Lag::Behind(newest));
            }
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

    /// Runs the processor on a task of its own until the handle is stopped.
    pub fn spawn(mut self, feed: Arc<dyn Feed>) -> ProcessorHandle {
        let stop = CancellationToken::new();
        let position = self.watch_position();
        let lag = self.lag.subscribe();
        let (held, segmented) = (self.held.subscribe(), self.segmenting.is_some());
        let token = stop.clone();
        let name = self.name.clone();
        let progress = self.progress.clone();
        let ordered = feed.globally_ordered();
        self.record_streams = !ordered;
        let (ended_tx, ended) = watch::channel(None);
        let task = tokio::spawn(async move {
            let outcome = match self.segmenting {
                // The coordinator publishes what its segments' workers have committed.
                Some(segmenting) => self.coordinate(feed, segmenting, token).await,
                None => self.run(feed.as_ref(), token).await,
            };
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
            lag,
            ended,
            ordered,
            progress,
            held,
            segmented,
        }
    }
}
