//! Dead letters applied again, once the handler is fixed.

use uuid::Uuid;

use super::fold::{empty, from_stored, seen};
use super::TrackingProcessor;
use crate::error::{Error, Result};
use crate::event::EventSet;
use crate::projection::Projection;
use crate::view::{DeadLetter, DeadLetterStore, StoredDoc, UnitOfWork};

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
                let (work, id) = match refold_dead_letter(self, &letter).await? {
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

/// A dead letter applied again: the unit of work writing its view and resolving it, and the
/// view's id. `Ok(Err(reason))` when it fails again.
async fn refold_dead_letter<P: Projection>(
    processor: &TrackingProcessor<P>,
    letter: &DeadLetter,
) -> Result<std::result::Result<(UnitOfWork, String), String>> {
    let name = &processor.name;
    let envelope = &letter.envelope;
    let event = match P::Event::decode(envelope) {
        Ok(Some(event)) => event,
        Ok(None) => {
            return Ok(Err(format!(
                "event `{}` is not one projection `{name}` handles",
                envelope.event_name
            )))
        }
        Err(e) => return Ok(Err(e.to_string())),
    };
    let id = processor.projection.view_id(&event, envelope);
    if let Some(parked_in) = letter.view.as_ref().filter(|v| **v != id) {
        return Ok(Err(format!(
            "the projection now puts this event in view `{id}`, but it failed in view \
             `{parked_in}` and is parked there: apply it by hand or remove the dead letter"
        )));
    }
    let mut state = match processor
        .store
        .load(name, std::slice::from_ref(&id))
        .await?
        .into_iter()
        .next()
    {
        Some(stored) => from_stored::<P>(name, stored)?,
        None => empty(),
    };
    let event_id = envelope.metadata.event_id;
    if letter.view.is_some() && !state.parked.contains(&event_id) {
        // Parked when it failed, and no longer: applied since (a redelivery after a fix, or
        // a retry whose removal of the letter did not land), or never parked because its
        // batch's view writes did not land (a store without transactions, crashed after the
        // dead letter): then its redelivery applies or parks it, and the retry waits for it.
        if !seen(&state, envelope, true) {
            return Ok(Err(format!(
                "view `{id}` has not recorded this event yet (its batch did not commit whole): \
                 retried once its batch is delivered again"
            )));
        }
        let work = UnitOfWork {
            projection: name.clone(),
            writes: Vec::new(),
            dead_letters: Vec::new(),
            checkpoint: None,
            resolved: vec![event_id],
            claim: None,
        };
        return Ok(Ok((work, id)));
    }
    if let Err(reason) = processor
        .projection
        .apply(&mut state.view, &event, envelope)
    {
        return Ok(Err(reason.to_string()));
    }
    // Record it, so that a late duplicate of the event is skipped. A view kept by position
    // alone stays so (switching it to versions would forget what its position covers). A view
    // this retry creates records the stream's version: the dead letter does not say whether
    // its feed had one order (a position would do) or was a bus (where only stream versions
    // catch a redelivery), and versions are right for both, as nothing was applied to the
    // view before.
    let is_new = state.revision == 0 && state.position == 0 && state.applied.is_empty();
    if let Some(version) = state.applied.get_mut(envelope.stream_id.as_str()) {
        *version = (*version).max(envelope.version);
    } else if !state.applied.is_empty() || is_new {
        state
            .applied
            .insert(envelope.stream_id.clone(), envelope.version);
    }
    state.position = state.position.max(envelope.position);
    // A dead letter parked in its view is applied here, and only here: taken out of `parked`
    // under the view's revision, so a concurrent retry or a redelivery cannot apply it again.
    // (One of an older version, or of an event no view could be had of when it failed, was
    // never parked: it is applied as it is.)
    state.parked.remove(&envelope.metadata.event_id);
    let view = match &state.view {
        Some(view) => Some(
            serde_json::to_value(view).map_err(|source| Error::Serialize {
                what: format!("view `{id}` of projection `{name}`"),
                source,
            })?,
        ),
        None => None,
    };
    let work = UnitOfWork {
        projection: name.clone(),
        writes: vec![StoredDoc {
            id: id.clone(),
            view,
            applied: state.applied,
            position: state.position,
            revision: state.revision,
            parked: state.parked,
        }],
        dead_letters: Vec::new(),
        checkpoint: None,
        resolved: vec![envelope.metadata.event_id],
        claim: None,
    };
    Ok(Ok((work, id)))
}
