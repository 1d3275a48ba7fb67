//! In-memory backends: the embedded default. Everything runs in one process with no server;
//! every type is safe to share between tasks and threads.

mod bus;
mod store;
mod view;

pub use self::bus::MemoryEventBus;
pub use self::store::{MemoryCheckpointStore, MemoryEventStore, MemorySnapshotStore};
pub use self::view::MemoryViewStore;
