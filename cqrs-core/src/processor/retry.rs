//! Dead letters applied again, once the handler is fixed.

use uuid::Uuid;

use super::{fold, TrackingProcessor};
use crate::error::{Error, Result};
use crate::projection::Projection;
use crate::view::{DeadLetter, DeadLetterStore};

/// What a retry of dead letters did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RetryReport {
    /// The event ids of the dead letters applied and removed.
    pub resolved: Vec<Uuid>,
    /// The dead letters that failed again, with the new reason; they stay dead letters.
    pub failed: Vec<(Uuid, String)>,
}

impl<P: Projection> TrackingProcessor<P> {
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
                        self.cache.forget(&id);
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
}
