//! In-memory backends: the embedded default. Everything runs in one process with no server;
//! every type is safe to share between tasks and threads.

mod bus;
mod store;
mod view;

pub use self::bus::MemoryEventBus;
pub use self::store::{MemoryCheckpointStore, MemoryEventStore, MemorySnapshotStore};
pub use self::view::MemoryViewStore;

use std::sync::Arc;

/// Every embedded backend at once, shared: the services of one process that are given the
/// same `Embedded` see one event store, one bus, one set of checkpoints and one view store.
/// Cheap to clone. As a [`Backend`](crate::app::Backend) it installs all four; a backend given
/// after it replaces its parts (`.with(embedded).with(postgres)` keeps only the bus embedded).
#[derive(Debug, Clone)]
pub struct Embedded {
    /// The event store.
    pub store: Arc<MemoryEventStore>,
    /// The bus.
    pub bus: Arc<MemoryEventBus>,
    /// The checkpoints of relays and processors.
    pub checkpoints: Arc<MemoryCheckpointStore>,
    /// The views and dead letters.
    pub views: Arc<MemoryViewStore>,
}

impl Embedded {
    /// New, empty backends, the bus with `partitions` partitions per aggregate type.
    pub fn new(partitions: usize) -> Self {
        Embedded {
            store: Arc::new(MemoryEventStore::new()),
            bus: Arc::new(MemoryEventBus::new(partitions)),
            checkpoints: Arc::new(MemoryCheckpointStore::new()),
            views: Arc::new(MemoryViewStore::new()),
        }
    }
}

impl Default for Embedded {
    /// Three partitions per aggregate type on the bus.
    fn default() -> Self {
        Self::new(3)
    }
}

impl crate::app::Backend for Embedded {
    fn install(self, wiring: &mut crate::app::Wiring) {
        self.store.install(wiring);
        self.bus.install(wiring);
        self.checkpoints.install(wiring);
        self.views.install(wiring);
    }
}
