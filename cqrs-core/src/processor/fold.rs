//! Applying a batch to the views it touches, in memory, under the error policy.
//!
//! Views come from the processor's cache when it has them, else from the store. The cache is
//! safe with several processors on one store: every write names the revision it was based on,
//! so a stale cached view makes the commit fail with a view conflict, and the batch is folded
//! again from the store.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::Utc;
use serde::Deserialize as _;
use uuid::Uuid;

use super::{Batch, OnFailure, TrackingProcessor};
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::event::EventSet;
use crate::projection::Projection;
use crate::registry::registry;
use crate::view::{DeadLetter, StoredDoc, UnitOfWork};

/// A view as the processor holds it between batches.
#[derive(Debug)]
pub(super) struct Cached<V> {
    pub(super) view: Option<V>,
    pub(super) applied: BTreeMap<String, u64>,
    pub(super) position: u64,
    pub(super) revision: u64,
    pub(super) parked: BTreeSet<Uuid>,
}

/// What a fold produces: the unit of work, and the views to cache once it has committed.
pub(super) struct Folded<V> {
    pub(super) work: UnitOfWork,
    pub(super) applied: usize,
    pub(super) views: Vec<(String, Cached<V>)>,
}

struct Doc<V> {
    state: Cached<V>,
    /// Indices (in the batch) of the events applied to this view in this batch.
    applied_now: Vec<usize>,
    /// Indices (in the batch) of the events dead-lettered from this view in this batch.
    parked_now: Vec<usize>,
}

type Decoded<E> = Vec<Option<(String, E)>>;

pub(super) fn from_stored<P: Projection>(name: &str, doc: StoredDoc) -> Result<Cached<P::View>> {
    let view = match &doc.view {
        None => None,
        Some(value) => Some(P::View::deserialize(value).map_err(|e| Error::Malformed {
            what: format!("view `{}` of projection `{name}`", doc.id),
            reason: e.to_string(),
        })?),
    };
    Ok(Cached {
        view,
        applied: doc.applied,
        position: doc.position,
        revision: doc.revision,
        parked: doc.parked,
    })
}

pub(super) fn empty<V>() -> Cached<V> {
    Cached {
        view: None,
        applied: BTreeMap::new(),
        position: 0,
        revision: 0,
        parked: BTreeSet::new(),
    }
}

/// Whether the view has already seen this event: by global position when the feed has one
/// order, else by its stream's version.
pub(super) fn seen<V>(state: &Cached<V>, envelope: &Envelope, globally_ordered: bool) -> bool {
    if globally_ordered && state.applied.is_empty() {
        return envelope.position <= state.position;
    }
    state
        .applied
        .get(envelope.stream_id.as_str())
        .is_some_and(|v| *v >= envelope.version)
}

fn record<V>(state: &mut Cached<V>, envelope: &Envelope, globally_ordered: bool) {
    if globally_ordered && state.applied.is_empty() {
        state.position = state.position.max(envelope.position);
        return;
    }
    match state.applied.get_mut(envelope.stream_id.as_str()) {
        Some(v) => *v = (*v).max(envelope.version),
        None => {
            state
                .applied
                .insert(envelope.stream_id.clone(), envelope.version);
        }
    }
    state.position = state.position.max(envelope.position);
}

/// Records a dead-lettered event as seen by the view, and as parked in it: a redelivery skips
/// it like any event the view has, and only a retry of its dead letter applies it (once: the
/// retry takes it out of `parked` under the view's revision).
fn park<V>(state: &mut Cached<V>, envelope: &Envelope, globally_ordered: bool) {
    record(state, envelope, globally_ordered);
    state.parked.insert(envelope.metadata.event_id);
}

/// Puts a view back to its state before the failing event: as stored, plus what this batch
/// did to it so far (the events applied and the events parked, in batch order), skipping what
/// the stored state has seen. An event that fails on this replay (a handler that fails now and
/// then) is failed per policy and parked like any other, and the view is rebuilt without it.
async fn restore<P: Projection>(
    processor: &TrackingProcessor<P>,
    id: &str,
    doc: &mut Doc<P::View>,
    decoded: &Decoded<P::Event>,
    batch: &Batch,
    dead: &mut Vec<DeadLetter>,
) -> Result<()> {
    let (events, ordered) = (
        &batch.events,
        batch.globally_ordered && !processor.track_streams,
    );
    let loaded = doc.state.revision;
    'rebuild: loop {
        let stored = processor
            .store
            .load(&processor.name, &[id.to_owned()])
            .await?;
        doc.state = match stored.into_iter().next() {
            Some(stored) => from_stored::<P>(&processor.name, stored)?,
            None => empty(),
        };
        // Another processor (a member that took the partition over) wrote the view since this
        // one loaded it: what it applied is not in this batch's account. Fold the batch again
        // from the store, as a commit refused by the revision would.
        if doc.state.revision != loaded {
            return Err(Error::ViewConflict {
                projection: processor.name.clone(),
                id: id.to_owned(),
                expected: loaded,
                actual: doc.state.revision,
            });
        }
        let mut steps: Vec<(usize, bool)> = doc.applied_now.iter().map(|&i| (i, true)).collect();
        steps.extend(doc.parked_now.iter().map(|&i| (i, false)));
        steps.sort_unstable();
        for (i, applied) in steps {
            let (Some((_, event)), Some(envelope)) = (&decoded[i], events.get(i)) else {
                continue;
            };
            if seen(&doc.state, envelope, ordered) {
                continue;
            }
            if !applied {
                park(&mut doc.state, envelope, ordered);
                continue;
            }
            if let Err(e) = processor
                .projection
                .apply(&mut doc.state.view, event, envelope)
            {
                let error = Error::Handler {
                    projection: processor.name.clone(),
                    event: envelope.event_ref(),
                    reason: format!("failed when applied again to restore its view: {e}"),
                };
                fail(processor, error, envelope, Some(id), dead)?;
                doc.applied_now.retain(|&j| j != i);
                doc.parked_now.push(i);
                continue 'rebuild;
            }
            record(&mut doc.state, envelope, ordered);
        }
        return Ok(());
    }
}

/// Fails an event per policy: stops with the error, or dead-letters it. `view` is the view it
/// is parked in (a handler failure), `None` when no view could be had of it.
fn fail<P: Projection>(
    processor: &TrackingProcessor<P>,
    error: Error,
    envelope: &Envelope,
    view: Option<&str>,
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
                view: view.map(str::to_owned),
            });
            Ok(())
        }
    }
}

/// Folds a batch into the views it touches.
pub(super) async fn fold<P: Projection>(
    processor: &TrackingProcessor<P>,
    batch: &Batch,
) -> Result<Folded<P::View>> {
    let (events, ordered) = (
        &batch.events,
        batch.globally_ordered && !processor.track_streams,
    );
    let name = &processor.name;
    let projection = &processor.projection;
    let mut dead = Vec::new();

    // A segment applies the events of its own views only; an event no view id can be had of
    // is the business of the segment its routing key falls in (one segment fails it).
    let segment = processor.segment.map(|claim| claim.segment);
    let theirs = |key: &str| segment.is_some_and(|s| !s.owns(key));

    // 0. Records the source could not read at all fail per policy, as undecodable events.
    for rejected in &batch.rejected {
        if theirs(rejected.envelope.routing_key()) {
            continue;
        }
        let error = Error::Decode {
            event: rejected.envelope.event_ref(),
            reason: rejected.reason.clone(),
        };
        fail(processor, error, &rejected.envelope, None, &mut dead)?;
    }

    // 1. Decode what the projection wants; unknown names and bad payloads fail per policy.
    let mut decoded: Decoded<P::Event> = Vec::with_capacity(events.len());
    for envelope in events {
        let decoding = P::Event::decode(envelope);
        if !matches!(decoding, Ok(Some(_))) && theirs(envelope.routing_key()) {
            decoded.push(None);
            continue;
        }
        match decoding {
            Ok(Some(event)) => {
                let id = projection.view_id(&event, envelope);
                if theirs(&id) {
                    decoded.push(None);
                    continue;
                }
                decoded.push(Some((id, event)));
            }
            Ok(None) => {
                if processor.fail_on_unknown && !registry().is_known(&envelope.event_name) {
                    let error = Error::UnknownEvent {
                        event: envelope.event_ref(),
                    };
                    fail(processor, error, envelope, None, &mut dead)?;
                }
                decoded.push(None);
            }
            Err(error) => {
                fail(processor, error, envelope, None, &mut dead)?;
                decoded.push(None);
            }
        }
    }

    // 2. The views the batch touches: from the cache, else from the store.
    let mut docs: HashMap<String, Doc<P::View>> = HashMap::new();
    let mut missing: Vec<String> = Vec::new();
    let mut cached = processor
        .cache
        .take(decoded.iter().flatten().map(|(id, _)| id));
    for (id, _) in decoded.iter().flatten() {
        if docs.contains_key(id) {
            continue;
        }
        let state = cached.remove(id).unwrap_or_else(|| {
            missing.push(id.clone());
            empty()
        });
        docs.insert(
            id.clone(),
            Doc {
                state,
                applied_now: Vec::new(),
                parked_now: Vec::new(),
            },
        );
    }
    if !missing.is_empty() {
        for stored in processor.store.load(name, &missing).await? {
            let id = stored.id.clone();
            let state = from_stored::<P>(name, stored)?;
            if let Some(doc) = docs.get_mut(&id) {
                doc.state = state;
            }
        }
    }

    // 3. Apply, skipping what a view has already seen (parked events among it).
    for (i, slot) in decoded.iter().enumerate() {
        let (Some((id, event)), Some(envelope)) = (slot, events.get(i)) else {
            continue;
        };
        let Some(doc) = docs.get_mut(id) else {
            continue;
        };
        if seen(&doc.state, envelope, ordered) {
            continue;
        }
        let mut attempt = 0u32;
        loop {
            match projection.apply(&mut doc.state.view, event, envelope) {
                Ok(()) => {
                    record(&mut doc.state, envelope, ordered);
                    doc.applied_now.push(i);
                    tracing::debug!(
                        projection = %name,
                        correlation_id = %envelope.metadata.correlation_id,
                        event_id = %envelope.metadata.event_id,
                        event = %envelope.event_name,
                        view = %id,
                        "applied"
                    );
                    break;
                }
                Err(reason) => {
                    restore(processor, id, doc, &decoded, batch, &mut dead).await?;
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
                    fail(processor, error, envelope, Some(id), &mut dead)?;
                    // Dead-lettered from this view: parked in it, with the dead letter in
                    // the same unit of work.
                    park(&mut doc.state, envelope, ordered);
                    doc.parked_now.push(i);
                    break;
                }
            }
        }
    }

    // 4. The unit of work: every view that changed, the dead letters, the checkpoint.
    let mut writes = Vec::new();
    let mut views = Vec::with_capacity(docs.len());
    let applied = docs.values().map(|d| d.applied_now.len()).sum();
    for (id, mut doc) in docs {
        if !doc.applied_now.is_empty() || !doc.parked_now.is_empty() {
            let view = match &doc.state.view {
                Some(view) => {
                    Some(
                        serde_json::to_value(view).map_err(|source| Error::Serialize {
                            what: format!("view `{id}` of projection `{name}`"),
                            source,
                        })?,
                    )
                }
                None => None,
            };
            writes.push(StoredDoc {
                id: id.clone(),
                view,
                applied: doc.state.applied.clone(),
                position: doc.state.position,
                revision: doc.state.revision,
                parked: doc.state.parked.clone(),
            });
            doc.state.revision += 1;
        }
        views.push((id, doc.state));
    }
    let work = UnitOfWork {
        projection: name.clone(),
        writes,
        dead_letters: dead,
        checkpoint: batch.checkpoint,
        resolved: Vec::new(),
        claim: processor.segment,
    };
    Ok(Folded {
        work,
        applied,
        views,
    })
}
