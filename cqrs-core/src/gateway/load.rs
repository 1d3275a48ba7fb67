//! Loading an aggregate: from the cache, or a snapshot and the events after it, or (for a
//! command with an idempotency key) the whole stream in one read.

use super::CommandGateway;
use crate::aggregate::Aggregate;
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::event::EventSet;

impl CommandGateway {
    /// The whole stream, read once: the events recorded under this idempotency key if there
    /// are any, else the state folded from it.
    pub(super) async fn load_keyed<A: Aggregate>(&self, id: &str, key: &str) -> Result<Keyed<A>> {
        let stream = self.inner.store.read_stream(id, 0).await?;
        let recorded: Vec<Envelope> = stream
            .iter()
            .filter(|e| e.metadata.idempotency_key.as_deref() == Some(key))
            .cloned()
            .collect();
        if !recorded.is_empty() {
            check_type::<A>(&recorded[0])?;
            return Ok(Keyed::Recorded(recorded));
        }
        let (state, version) = fold::<A>(A::default(), 0, stream)?;
        Ok(Keyed::New(state, version))
    }

    pub(super) async fn load_state<A: Aggregate>(
        &self,
        id: &str,
        use_cache: bool,
    ) -> Result<(A, u64)> {
        if use_cache {
            if let Some(hit) = self.inner.cache.as_ref().and_then(|c| c.get::<A>(id)) {
                return Ok(hit);
            }
        }
        self.load::<A>(id).await
    }

    /// Loads an aggregate's current state and version from the latest snapshot and the events
    /// after it.
    ///
    /// # Errors
    /// A store error, or a decode error naming the stored event that does not fit.
    pub async fn load<A: Aggregate>(&self, id: &str) -> Result<(A, u64)> {
        let mut state = A::default();
        let mut version = 0;
        if let Some((snapshots, _)) = &self.inner.snapshots {
            if let Some(snapshot) = snapshots.load(A::TYPE, id).await? {
                match serde_json::from_slice::<A>(&snapshot.state) {
                    Ok(s) => {
                        state = s;
                        version = snapshot.version;
                    }
                    // A snapshot is disposable: an old shape means a full replay, not a failure.
                    Err(e) => {
                        tracing::warn!(error = %e, stream = id, "ignoring unreadable snapshot")
                    }
                }
            }
        }
        let events = self.inner.store.read_stream(id, version).await?;
        fold::<A>(state, version, events)
    }
}

/// What a keyed command finds in its stream.
pub(super) enum Keyed<A> {
    /// The events the first send recorded.
    Recorded(Vec<Envelope>),
    /// Nothing under the key: the state and version to decide on.
    New(A, u64),
}

/// Applies a stream's events (after `version`) to a state.
fn fold<A: Aggregate>(mut state: A, mut version: u64, events: Vec<Envelope>) -> Result<(A, u64)> {
    for envelope in events {
        check_type::<A>(&envelope)?;
        let Some(event) = A::Event::decode(&envelope)? else {
            return Err(Error::UnknownEvent {
                event: envelope.event_ref(),
            });
        };
        state.apply(&event);
        version = envelope.version;
    }
    Ok((state, version))
}

/// Streams are keyed by id alone: a stream another aggregate type wrote is not this one's.
pub(super) fn check_type<A: Aggregate>(envelope: &Envelope) -> Result<()> {
    if envelope.aggregate_type == A::TYPE {
        return Ok(());
    }
    Err(Error::WrongAggregateType {
        stream_id: envelope.stream_id.clone(),
        expected: A::TYPE.to_owned(),
        actual: envelope.aggregate_type.clone(),
    })
}
