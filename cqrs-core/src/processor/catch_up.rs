//! Catching up with the store's log: a replay after a reset, with progress.

use std::sync::Arc;

use super::{Batch, TrackingProcessor};
use crate::error::{Error, Result};
use crate::projection::Projection;
use crate::store::EventReader;

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

impl<P: Projection> TrackingProcessor<P> {
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
}
