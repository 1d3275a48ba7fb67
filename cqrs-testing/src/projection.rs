use std::collections::HashMap;
use std::sync::Arc;

use cqrs_core::envelope::Envelope;
use cqrs_core::event::EventSet;
use cqrs_core::memory::MemoryViewStore;
use cqrs_core::processor::{Batch, ErrorPolicy, TrackingProcessor};
use cqrs_core::projection::{Projection, ReadModel};
use cqrs_core::view::{DeadLetter, DeadLetterStore, ViewQuery};

use super::envelope_of;

/// Given events, then views: runs a projection through the real processor code on an
/// in-memory store, without a runtime.
pub struct ProjectionFixture<P: Projection> {
    processor: TrackingProcessor<P>,
    store: Arc<MemoryViewStore>,
    versions: HashMap<String, u64>,
    position: u64,
}

impl<P: Projection> std::fmt::Debug for ProjectionFixture<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectionFixture")
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

impl<P: Projection> ProjectionFixture<P> {
    /// A fixture for `projection`, dead-lettering what it cannot handle.
    pub fn new(projection: P) -> Self {
        let store = Arc::new(MemoryViewStore::new());
        let processor = TrackingProcessor::new(projection, store.clone())
            .error_policy(ErrorPolicy::dead_letter());
        ProjectionFixture {
            processor,
            store,
            versions: HashMap::new(),
            position: 0,
        }
    }

    /// Feeds one event of stream `stream_id` (of aggregate type `aggregate_type`).
    ///
    /// # Panics
    /// When the projection stops on it.
    #[track_caller]
    pub fn given<E: EventSet>(mut self, aggregate_type: &str, stream_id: &str, event: E) -> Self {
        let version = self.versions.entry(stream_id.to_owned()).or_insert(0);
        *version += 1;
        self.position += 1;
        let envelope = envelope_of(aggregate_type, stream_id, *version, self.position, &event);
        self.given_envelopes(vec![envelope])
    }

    /// Feeds envelopes as they are (e.g. a duplicate, or a corrupted one) as one batch.
    ///
    /// # Panics
    /// When the projection stops on them.
    #[track_caller]
    pub fn given_envelopes(self, events: Vec<Envelope>) -> Self {
        // As a bus would deliver them: the strictest idempotency (per stream version) applies.
        let batch = Batch::from_bus(events);
        if let Err(e) = futures::executor::block_on(self.processor.process(&batch)) {
            panic!("the projection stopped: {e}");
        }
        self
    }

    /// The view with this id.
    ///
    /// # Panics
    /// When the stored view does not decode.
    #[track_caller]
    pub fn view(&self, id: &str) -> Option<P::View> {
        let model = ReadModel::<P>::new(self.store.clone() as Arc<dyn ViewQuery>);
        match futures::executor::block_on(model.get(id)) {
            Ok(view) => view,
            Err(e) => panic!("view `{id}` does not decode: {e}"),
        }
    }

    /// Asserts the view with this id equals `expected` (`None`: absent or deleted).
    ///
    /// # Panics
    /// When it differs.
    #[track_caller]
    pub fn then_view(self, id: &str, expected: Option<P::View>) -> Self
    where
        P::View: PartialEq,
    {
        assert_eq!(self.view(id), expected, "view `{id}`");
        self
    }

    /// The dead letters so far.
    ///
    /// # Panics
    /// Never for the in-memory store.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        match futures::executor::block_on(self.store.dead_letters(self.processor.name())) {
            Ok(all) => all,
            Err(e) => panic!("listing dead letters: {e}"),
        }
    }

    /// The in-memory store behind the fixture.
    pub fn store(&self) -> &Arc<MemoryViewStore> {
        &self.store
    }
}
