//! The event store (split into a read half and a write half), snapshots and checkpoints.
//!
//! # The contract every backend meets
//! - **Streams.** Versions in a stream start at 1 and have no holes. `append` with
//!   [`ExpectedVersion::Exact`] fails with [`Error::Conflict`](crate::Error::Conflict) (carrying the expected and actual
//!   versions) when the stream is elsewhere, and then writes nothing: an append is all or nothing.
//! - **Global log.** Every event gets a position, strictly increasing in commit order as seen by
//!   readers. [`EventReader::read_all`] is *gap-safe*: it never returns an event at position `p`
//!   while an event with a smaller position may still become visible later (a transaction that
//!   took its position earlier and commits later). A reader that remembers the last position it
//!   saw and asks for what comes after therefore never skips an event. Positions of transactions
//!   that roll back simply never appear, and never hold a reader up for longer than the
//!   transaction lives.
//! - **Waking.** [`EventReader::wait_for_events`] returns early when events after a position may
//!   be there, so tailing readers need not poll hot.
//!
//! The conformance suite in `cqrs_testing::conformance` checks all of this.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::envelope::{Envelope, ExpectedVersion, NewEvent};
use crate::error::Result;
use crate::registry::StoredType;

/// The read half of an event store.
#[async_trait]
pub trait EventReader: Send + Sync {
    /// The events of one stream with a version greater than `after_version`, in order.
    ///
    /// # Errors
    /// A backend error.
    async fn read_stream(&self, stream_id: &str, after_version: u64) -> Result<Vec<Envelope>>;

    /// Up to `limit` events of the global log with a position greater than `after`, in position
    /// order, gap-safe (see the module docs).
    ///
    /// # Errors
    /// A backend error.
    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<Envelope>>;

    /// The position of the last committed event (0 when none). Everything up to it becomes
    /// readable through [`read_all`](Self::read_all) once the transactions that took smaller
    /// positions have ended: a replay that reads up to the head it saw at its start has read
    /// everything committed before it started.
    ///
    /// # Errors
    /// A backend error.
    async fn head(&self) -> Result<u64>;

    /// Waits until events after `after` may be readable, or `timeout` passes. Returning early
    /// without new events is allowed; returning late is not.
    ///
    /// # Errors
    /// A backend error.
    async fn wait_for_events(&self, after: u64, timeout: Duration) -> Result<()>;

    /// Every distinct `(event name, version)` in the store, for the start-up registry check.
    ///
    /// # Errors
    /// A backend error.
    async fn stored_types(&self) -> Result<Vec<StoredType>>;

    /// The transaction that holds the log's readers back, if one does: events have committed
    /// that no reader may see yet, because an older transaction (of this store or anything
    /// else on the same server) is still running. A store whose log has no such horizon
    /// answers `None` (the default).
    ///
    /// # Errors
    /// A backend error.
    async fn held_back(&self) -> Result<Option<HeldBack>> {
        Ok(None)
    }
}

/// A transaction holding the log's readers back (see [`EventReader::held_back`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HeldBack {
    /// The transaction's id.
    pub transaction: u64,
    /// The server process running it, when the server shows it (PostgreSQL shows other
    /// users' sessions only to a role with `pg_read_all_stats`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// What the session is doing (`idle in transaction`: a client paused or cut off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// For how long its transaction has run, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
}

/// The write half of an event store.
#[async_trait]
pub trait EventAppender: Send + Sync {
    /// Appends events to a stream, all or nothing, if the stream is at the expected version.
    /// Returns the committed envelopes with their versions and positions.
    ///
    /// A store settles the append's routing key with [`routing::settle`](crate::routing::settle),
    /// checks it against the stream's with [`routing::check`](crate::routing::check) (the key
    /// before the version) and stores the stream's key on every event that names none.
    ///
    /// # Errors
    /// [`Error::RoutingKeyChanged`](crate::Error::RoutingKeyChanged) when the append names a
    /// key the stream does not have; [`Error::Conflict`](crate::Error::Conflict) when the stream
    /// is not at `expected`; a backend error.
    async fn append(
        &self,
        aggregate_type: &str,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Envelope>>;
}

/// An event store: both halves.
pub trait EventStore: EventReader + EventAppender {}

impl<T: EventReader + EventAppender + ?Sized> EventStore for T {}

/// An aggregate's state saved at a version, so loading reads only newer events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The aggregate type.
    pub aggregate_type: String,
    /// The stream id.
    pub stream_id: String,
    /// The stream version the state includes.
    pub version: u64,
    /// The state as JSON.
    pub state: Bytes,
}

/// Stores snapshots of aggregates.
#[async_trait]
pub trait SnapshotStore: Send + Sync {
    /// The latest snapshot of a stream.
    ///
    /// # Errors
    /// A backend error.
    async fn load(&self, aggregate_type: &str, stream_id: &str) -> Result<Option<Snapshot>>;
    /// Saves a snapshot, replacing an older one (never a newer one).
    ///
    /// # Errors
    /// A backend error.
    async fn save(&self, snapshot: Snapshot) -> Result<()>;
}

/// Stores a named position in the global log: the relay's, or a processor's whose read model
/// keeps none itself.
#[async_trait]
pub trait CheckpointStore: Send + Sync {
    /// The saved position of `name`, if any.
    ///
    /// # Errors
    /// A backend error.
    async fn load(&self, name: &str) -> Result<Option<u64>>;
    /// Saves the position of `name`.
    ///
    /// # Errors
    /// A backend error.
    async fn save(&self, name: &str, position: u64) -> Result<()>;
}

macro_rules! forward_store {
    ($($ptr:ident),+) => {$(
        #[async_trait]
        impl<T: EventReader + ?Sized> EventReader for $ptr<T> {
            async fn read_stream(&self, stream_id: &str, after_version: u64) -> Result<Vec<Envelope>> {
                (**self).read_stream(stream_id, after_version).await
            }
            async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<Envelope>> {
                (**self).read_all(after, limit).await
            }
            async fn head(&self) -> Result<u64> {
                (**self).head().await
            }
            async fn wait_for_events(&self, after: u64, timeout: Duration) -> Result<()> {
                (**self).wait_for_events(after, timeout).await
            }
            async fn stored_types(&self) -> Result<Vec<StoredType>> {
                (**self).stored_types().await
            }
            async fn held_back(&self) -> Result<Option<HeldBack>> {
                (**self).held_back().await
            }
        }

        #[async_trait]
        impl<T: EventAppender + ?Sized> EventAppender for $ptr<T> {
            async fn append(
                &self,
                aggregate_type: &str,
                stream_id: &str,
                expected: ExpectedVersion,
                events: Vec<NewEvent>,
            ) -> Result<Vec<Envelope>> {
                (**self).append(aggregate_type, stream_id, expected, events).await
            }
        }

        #[async_trait]
        impl<T: SnapshotStore + ?Sized> SnapshotStore for $ptr<T> {
            async fn load(&self, aggregate_type: &str, stream_id: &str) -> Result<Option<Snapshot>> {
                (**self).load(aggregate_type, stream_id).await
            }
            async fn save(&self, snapshot: Snapshot) -> Result<()> {
                (**self).save(snapshot).await
            }
        }

        #[async_trait]
        impl<T: CheckpointStore + ?Sized> CheckpointStore for $ptr<T> {
            async fn load(&self, name: &str) -> Result<Option<u64>> {
                (**self).load(name).await
            }
            async fn save(&self, name: &str, position: u64) -> Result<()> {
                (**self).save(name, position).await
            }
        }
    )+};
}

forward_store!(Arc, Box);
