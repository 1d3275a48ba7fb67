//! Applying a batch to the views it touches, in memory, under the error policy.

use std::collections::{BTreeMap, HashMap};

use chrono::Utc;

use super::{OnFailure, TrackingProcessor};
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::event::EventSet;
use crate::projection::Projection;
use crate::registry::registry;
use crate::view::{DeadLetter, StoredDoc, UnitOfWork};

struct Doc<V> {
    original: Option<StoredDoc>,
    view: Option<V>,
    applied: BTreeMap<String, u64>,
    position: u64,
    /// Indices (in the batch) of the events applied to this view in this batch.
    applied_now: Vec<usize>,
}

type Decoded<E> = Vec<Option<(String, E)>>;

fn decode_view<P: Projection>(name: &str, doc: &StoredDoc) -> Result<Option<P::View>> {
    match &doc.view {
        None => Ok(None),
        Some(value) => P::View::deserialize(value).map(Some).map_err(|e| Error::Malformed {
            what: format!("view `{}` of projection `{name}`", doc.id),
            reason: e.to_string(),
        }),
    }
}

use serde::Deserialize as _;

impl<V> Doc<V> {
    fn new(original: Option<StoredDoc>, view: Option<V>) -> Self {
        let (applied, position) = original
            .as_ref()
            .map(|d| (d.applied.clone(), d.position))
            .unwrap_or_default();
        Doc {
            original,
            view,
            applied,
            position,
            applied_now: Vec::new(),
        }
    }
}

/// Restores a view to its state before the failing event: the stored state plus the events of
/// this batch applied to it so far.
fn restore<P: Projection>(
    processor: &TrackingProcessor<P>,
    doc: &mut Doc<P::View>,
    decoded: &Decoded<P::Event>,
    events: &[Envelope],
) -> Result<()> {
    doc.view = match &doc.original {
        Some(original) => decode_view::<P>(&processor.name, original)?,
        None => None,
    };
    for &i in &doc.applied_now {
        if let (Some((_, event)), Some(envelope)) = (&decoded[i], events.get(i)) {
            processor
                .projection
                .apply(&mut doc.view, event, envelope)
                .map_err(|e| Error::Handler {
                    projection: processor.name.clone(),
                    event: envelope.event_ref(),
                    reason: format!("handler is not deterministic: failed on replay: {e}"),
                })?;
        }
    }
    Ok(())
}

fn fail<P: Projection>(
    processor: &TrackingProcessor<P>,
    error: Error,
    envelope: &Envelope,
    dead: &mut Vec<DeadLetter>,
) -> Result<()> {
    match processor.policy.then {
        OnFailure::Stop => Err(error),
        OnFailure::DeadLetter => {
            tracing::error!(projection = %processor.name, error = %error, "event dead-lettered");
            dead.push(DeadLetter {
                projection: processor.name.clone(),
                envelope: envelope.clone(),
                reason: error.to_string(),
                at: Utc::now(),
            });
            Ok(())
        }
    }
}

/// Folds a batch into the views it touches; returns the unit of work and how many events
/// were applied.
pub(super) async fn fold<P: Projection>(
    processor: &TrackingProcessor<P>,
    events: &[Envelope],
    checkpoint: Option<u64>,
) -> Result<(UnitOfWork, usize)> {
    let name = &processor.name;
    let projection = &processor.projection;
    let mut dead = Vec::new();

    // 1. Decode what the projection wants; unknown names and bad payloads fail per policy.
    let mut decoded: Decoded<P::Event> = Vec::with_capacity(events.len());
    for envelope in events {
        match P::Event::decode(envelope) {
            Ok(Some(event)) => {
                let id = projection.view_id(&event, envelope);
                decoded.push(Some((id, event)));
            }
            Ok(None) => {
                if processor.fail_on_unknown && !registry().is_known(&envelope.event_name) {
                    let error = Error::UnknownEvent {
                        event: envelope.event_ref(),
                    };
                    fail(processor, error, envelope, &mut dead)?;
                }
                decoded.push(None);
            }
            Err(error) => {
                fail(processor, error, envelope, &mut dead)?;
                decoded.push(None);
            }
        }
    }

    // 2. Load the views the batch touches.
    let mut docs: HashMap<String, Doc<P::View>> = HashMap::new();
    let mut ids: Vec<String> = Vec::new();
    for (id, _) in decoded.iter().flatten() {
        if !docs.contains_key(id) {
            docs.insert(id.clone(), Doc::new(None, None));
            ids.push(id.clone());
        }
    }
    if !ids.is_empty() {
        for stored in processor.store.load(name, &ids).await? {
            let view = decode_view::<P>(name, &stored)?;
            let id = stored.id.clone();
            docs.insert(id, Doc::new(Some(stored), view));
        }
    }

    // 3. Apply, skipping what a view has already seen.
    let mut applied = 0usize;
    for (i, slot) in decoded.iter().enumerate() {
        let (Some((id, event)), Some(envelope)) = (slot, events.get(i)) else {
            continue;
        };
        let Some(doc) = docs.get_mut(id) else {
            continue;
        };
        if doc
            .applied
            .get(envelope.stream_id.as_str())
            .is_some_and(|v| *v >= envelope.version)
        {
            continue;
        }
        let mut attempt = 0u32;
        loop {
            match projection.apply(&mut doc.view, event, envelope) {
                Ok(()) => {
                    match doc.applied.get_mut(envelope.stream_id.as_str()) {
                        Some(v) => *v = envelope.version,
                        None => {
                            doc.applied
                                .insert(envelope.stream_id.clone(), envelope.version);
                        }
                    }
                    doc.position = doc.position.max(envelope.position);
                    doc.applied_now.push(i);
                    applied += 1;
                    break;
                }
                Err(reason) => {
                    restore(processor, doc, &decoded, events)?;
                    if attempt < processor.policy.retries {
                        let delay = processor.policy.backoff.delay(attempt);
                        tracing::warn!(projection = %name, error = %reason, ?delay, "handler failed; retrying");
                        attempt += 1;
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    let error = Error::Handler {
                        projection: name.clone(),
                        event: envelope.event_ref(),
                        reason: reason.to_string(),
                    };
                    fail(processor, error, envelope, &mut dead)?;
                    break;
                }
            }
        }
    }

    // 4. The unit of work: every view that changed, the dead letters, the checkpoint.
    let mut writes = Vec::new();
    for (id, doc) in docs {
        if doc.applied_now.is_empty() {
            continue;
        }
        let view = match &doc.view {
            Some(view) => Some(serde_json::to_value(view).map_err(|source| Error::Serialize {
                what: format!("view `{id}` of projection `{name}`"),
                source,
            })?),
            None => None,
        };
        writes.push(StoredDoc {
            id,
            view,
            applied: doc.applied,
            position: doc.position,
            revision: doc.original.as_ref().map_or(0, |d| d.revision),
        });
    }
    let work = UnitOfWork {
        projection: name.clone(),
        writes,
        dead_letters: dead,
        checkpoint,
    };
    Ok((work, applied))
}
