//! What a backend hands the builder: the parts of a service, each replaceable in one line.

use std::sync::Arc;

use crate::bus::EventBus;
use crate::memory::{
    MemoryCheckpointStore, MemoryEventBus, MemoryEventStore, MemorySnapshotStore, MemoryViewStore,
};
use crate::store::{CheckpointStore, EventStore, SnapshotStore};
use crate::view::{DeadLetterStore, ViewQuery, ViewStore};

/// A read-model store seen through its three halves: where processors commit, what queries
/// read, and the dead letters.
#[derive(Clone)]
pub struct Views {
    /// Where processors commit their units of work.
    pub store: Arc<dyn ViewStore>,
    /// What read models query.
    pub query: Arc<dyn ViewQuery>,
    /// The projections' dead letters.
    pub dead_letters: Arc<dyn DeadLetterStore>,
}

impl Views {
    /// The three halves of one store.
    pub fn of<S: ViewStore + ViewQuery + DeadLetterStore + 'static>(store: S) -> Self {
        let store = Arc::new(store);
        Views {
            store: store.clone(),
            query: store.clone(),
            dead_letters: store,
        }
    }
}

impl std::fmt::Debug for Views {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Views").finish_non_exhaustive()
    }
}

/// How the views came to be: the embedded default, offered by a backend that gives them
/// beside what it is for (PostgreSQL's), or given by a backend that is for them (MongoDB's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Given {
    Default,
    Offered,
    Chosen,
}

/// The parts of a service that backends fill in. It starts as the embedded default (the
/// in-memory store, snapshots, checkpoints and views; no bus) and each [`Backend`] replaces
/// what it provides. The outcome does not depend on the order of the `.with(..)` calls: a
/// part a backend only offers ([`offer_view_store`](Self::offer_view_store),
/// [`offer_checkpoint_store`](Self::offer_checkpoint_store)) never replaces one another
/// backend gave as its own, whichever came first.
#[derive(Clone)]
pub struct Wiring {
    pub(super) store: Arc<dyn EventStore>,
    pub(super) snapshots: Option<Arc<dyn SnapshotStore>>,
    pub(super) checkpoints: Arc<dyn CheckpointStore>,
    pub(super) views: Views,
    views_given: Given,
    /// Whether a backend gave checkpoints (durable or embedded): an offer never replaces them.
    checkpoints_given: bool,
    /// Checkpoints for a durable log when no backend gives any: settled at build.
    offered_checkpoints: Option<Arc<dyn CheckpointStore>>,
    pub(super) bus: Option<Arc<dyn EventBus>>,
    /// Whether the store and the checkpoints outlive the process. A relay needs both or
    /// neither: checkpoints in memory over a durable log publish it all again after a
    /// restart; durable checkpoints over a log in memory skip what the new log holds.
    pub(super) durable_store: bool,
    pub(super) durable_checkpoints: bool,
}

impl std::fmt::Debug for Wiring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wiring")
            .field("bus", &self.bus.is_some())
            .field("durable_store", &self.durable_store)
            .field("durable_checkpoints", &self.durable_checkpoints)
            .finish_non_exhaustive()
    }
}

impl Default for Wiring {
    fn default() -> Self {
        Wiring {
            store: Arc::new(MemoryEventStore::new()),
            snapshots: None,
            checkpoints: Arc::new(MemoryCheckpointStore::new()),
            views: Views::of(MemoryViewStore::new()),
            views_given: Given::Default,
            checkpoints_given: false,
            offered_checkpoints: None,
            bus: None,
            durable_store: false,
            durable_checkpoints: false,
        }
    }
}

impl Wiring {
    /// An event store that outlives the process (a database): the global log relays and
    /// store-fed projections read.
    pub fn event_store(&mut self, store: impl EventStore + 'static) -> &mut Self {
        self.store = Arc::new(store);
        self.durable_store = true;
        self
    }

    /// An event store that lives and dies with the process (the embedded one, shared with a
    /// test that reads it, say).
    pub fn embedded_event_store(&mut self, store: Arc<dyn EventStore>) -> &mut Self {
        self.store = store;
        self.durable_store = false;
        self
    }

    /// Snapshots of aggregates (none by default).
    pub fn snapshot_store(&mut self, store: impl SnapshotStore + 'static) -> &mut Self {
        self.snapshots = Some(Arc::new(store));
        self
    }

    /// Relay checkpoints that outlive the process (a database).
    pub fn checkpoint_store(&mut self, store: impl CheckpointStore + 'static) -> &mut Self {
        self.checkpoints = Arc::new(store);
        self.durable_checkpoints = true;
        self.checkpoints_given = true;
        self
    }

    /// Relay checkpoints that live and die with the process.
    pub fn embedded_checkpoint_store(&mut self, store: Arc<dyn CheckpointStore>) -> &mut Self {
        self.checkpoints = store;
        self.durable_checkpoints = false;
        self.checkpoints_given = true;
        self
    }

    /// The read models: views, their checkpoints and dead letters, from a backend that is for
    /// them (a later one of the same kind replaces it).
    pub fn view_store<S>(&mut self, store: S) -> &mut Self
    where
        S: ViewStore + ViewQuery + DeadLetterStore + 'static,
    {
        self.views = Views::of(store);
        self.views_given = Given::Chosen;
        self
    }

    /// Read models a backend gives beside what it is for (PostgreSQL, with its event store):
    /// used unless a backend gives a view store of its own, before or after this one.
    pub fn offer_view_store<S>(&mut self, store: S) -> &mut Self
    where
        S: ViewStore + ViewQuery + DeadLetterStore + 'static,
    {
        if self.views_given < Given::Chosen {
            self.views = Views::of(store);
            self.views_given = Given::Offered;
        }
        self
    }

    /// Relay checkpoints a backend gives for a durable log (MongoDB, beside its views): used
    /// when, once every backend is in, the event store outlives the process and no backend
    /// gave checkpoints (durable or embedded, which stay as given).
    pub fn offer_checkpoint_store(&mut self, store: impl CheckpointStore + 'static) -> &mut Self {
        self.offered_checkpoints = Some(Arc::new(store));
        self
    }

    /// Takes up what was offered, once every backend is in.
    pub(super) fn settle(&mut self) {
        if let Some(offered) = self.offered_checkpoints.take() {
            if self.durable_store && !self.checkpoints_given {
                self.checkpoints = offered;
                self.durable_checkpoints = true;
            }
        }
    }

    /// The bus between services.
    pub fn event_bus(&mut self, bus: impl EventBus + 'static) -> &mut Self {
        self.bus = Some(Arc::new(bus));
        self
    }

    /// The bus, or the configuration error naming who needed it.
    pub(super) fn bus_for(&self, who: &str) -> crate::error::Result<Arc<dyn EventBus>> {
        self.bus.clone().ok_or_else(|| {
            crate::error::Error::Config(format!(
                "{who} uses the bus, but the app has none: hand it one with `.with(bus)`"
            ))
        })
    }

    /// Whether the checkpoint store outlives the process.
    pub fn has_durable_checkpoints(&self) -> bool {
        self.durable_checkpoints
    }

    /// Whether the event store outlives the process.
    pub fn has_durable_store(&self) -> bool {
        self.durable_store
    }
}

/// Something that hands its parts to [`App::builder`](super::App::builder) in one line:
/// `.with(postgres)`, `.with(mongo)`, `.with(kafka_bus)`.
///
/// Each backend crate implements it for its connection: PostgreSQL gives the event store,
/// snapshots, checkpoints and views (the views only as an offer, which a backend for views
/// replaces); MongoDB the views (and the checkpoints, offered for a durable log that has none);
/// a bus gives itself. The order of the calls does not change the outcome.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a backend the app builder knows",
    label = "pass a `Postgres`, a `Mongo`, a bus, or implement `cqrs_core::app::Backend`"
)]
pub trait Backend {
    /// Puts this backend's parts into the wiring.
    fn install(self, wiring: &mut Wiring);
}

impl<B: Backend> Backend for Option<B> {
    /// A backend that may not be configured: `None` leaves the wiring as it is (the embedded
    /// default, or what an earlier `with` gave).
    fn install(self, wiring: &mut Wiring) {
        if let Some(backend) = self {
            backend.install(wiring);
        }
    }
}

impl Backend for MemoryEventBus {
    fn install(self, wiring: &mut Wiring) {
        wiring.event_bus(self);
    }
}

impl Backend for Arc<MemoryEventBus> {
    fn install(self, wiring: &mut Wiring) {
        wiring.event_bus(self);
    }
}

impl Backend for MemorySnapshotStore {
    fn install(self, wiring: &mut Wiring) {
        wiring.snapshot_store(self);
    }
}

impl Backend for Arc<MemoryEventStore> {
    /// The embedded store, shared: a test keeps a handle to read it.
    fn install(self, wiring: &mut Wiring) {
        wiring.embedded_event_store(self);
    }
}

impl Backend for Arc<MemoryViewStore> {
    /// The embedded views, shared: a test keeps a handle to read them.
    fn install(self, wiring: &mut Wiring) {
        wiring.views = Views {
            store: self.clone(),
            query: self.clone(),
            dead_letters: self,
        };
        wiring.views_given = Given::Chosen;
    }
}

impl Backend for Arc<MemoryCheckpointStore> {
    /// The embedded checkpoints, shared by the services of one process.
    fn install(self, wiring: &mut Wiring) {
        wiring.embedded_checkpoint_store(self);
    }
}
