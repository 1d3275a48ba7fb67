use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::RwLock;
use tokio::sync::watch;

use crate::envelope::{Envelope, ExpectedVersion, NewEvent};
use crate::error::{Error, Result};
use crate::registry::StoredType;
use crate::store::{CheckpointStore, EventAppender, EventReader, Snapshot, SnapshotStore};

#[derive(Default)]
struct Log {
    /// The global log: the event at position `p` is at index `p - 1`.
    events: Vec<Envelope>,
    /// Stream id to the positions of its events, in version order.
    streams: HashMap<String, Vec<u64>>,
    types: BTreeSet<StoredType>,
}

/// An event store in memory. Positions are assigned and made visible under one lock, so the
/// global log has no gaps by construction.
pub struct MemoryEventStore {
    log: RwLock<Log>,
    head: watch::Sender<u64>,
}

impl std::fmt::Debug for MemoryEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryEventStore")
            .field("events", &self.log.read().events.len())
            .finish()
    }
}

impl Default for MemoryEventStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryEventStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryEventStore {
            log: RwLock::new(Log::default()),
            head: watch::Sender::new(0),
        }
    }

    /// The number of events stored.
    pub fn len(&self) -> usize {
        self.log.read().events.len()
    }

    /// Whether no event is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stores envelopes as they are (positions are reassigned), e.g. to seed a test with
    /// events that no aggregate of this program writes, or with a corrupted payload.
    pub fn insert_raw(&self, envelopes: Vec<Envelope>) -> Vec<Envelope> {
        let mut log = self.log.write();
        let mut out = Vec::with_capacity(envelopes.len());
        for mut envelope in envelopes {
            envelope.position = log.events.len() as u64 + 1;
            let positions = log.streams.entry(envelope.stream_id.clone()).or_default();
            envelope.version = positions.len() as u64 + 1;
            positions.push(envelope.position);
            log.types.insert(StoredType {
                aggregate_type: envelope.aggregate_type.clone(),
                name: envelope.event_name.clone(),
                version: envelope.event_version,
            });
            log.events.push(envelope.clone());
            out.push(envelope);
        }
        let head = log.events.len() as u64;
        drop(log);
        self.head.send_replace(head);
        out
    }
}

#[async_trait]
impl EventReader for MemoryEventStore {
    async fn read_stream(&self, stream_id: &str, after_version: u64) -> Result<Vec<Envelope>> {
        let log = self.log.read();
        let Some(positions) = log.streams.get(stream_id) else {
            return Ok(Vec::new());
        };
        let skip = usize::try_from(after_version).unwrap_or(usize::MAX);
        Ok(positions
            .iter()
            .skip(skip)
            .filter_map(|p| log.events.get((*p - 1) as usize).cloned())
            .collect())
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<Envelope>> {
        let log = self.log.read();
        let start = usize::try_from(after)
            .unwrap_or(usize::MAX)
            .min(log.events.len());
        let end = start.saturating_add(limit).min(log.events.len());
        Ok(log.events[start..end].to_vec())
    }

    async fn head(&self) -> Result<u64> {
        Ok(self.log.read().events.len() as u64)
    }

    async fn wait_for_events(&self, after: u64, timeout: Duration) -> Result<()> {
        let mut rx = self.head.subscribe();
        // Ok on change or timeout alike: the caller reads again either way.
        let _ = tokio::time::timeout(timeout, rx.wait_for(|head| *head > after)).await;
        Ok(())
    }

    async fn stored_types(&self) -> Result<Vec<StoredType>> {
        Ok(self.log.read().types.iter().cloned().collect())
    }
}

#[async_trait]
impl EventAppender for MemoryEventStore {
    async fn append(
        &self,
        aggregate_type: &str,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Envelope>> {
        if stream_id.is_empty() {
            return Err(Error::Config("stream id must not be empty".into()));
        }
        let mut log = self.log.write();
        let actual = log.streams.get(stream_id).map_or(0, |s| s.len() as u64);
        if let ExpectedVersion::Exact(expected) = expected {
            if expected != actual {
                return Err(Error::Conflict {
                    stream_id: stream_id.to_owned(),
                    expected,
                    actual,
                });
            }
        }
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let first_position = log.events.len() as u64 + 1;
        let mut committed = Vec::with_capacity(events.len());
        for (i, event) in events.into_iter().enumerate() {
            if !log.types.iter().any(|t| {
                t.name == event.event_name
                    && t.version == event.event_version
                    && t.aggregate_type == aggregate_type
            }) {
                log.types.insert(StoredType {
                    aggregate_type: aggregate_type.to_owned(),
                    name: event.event_name.clone(),
                    version: event.event_version,
                });
            }
            committed.push(Envelope {
                stream_id: stream_id.to_owned(),
                aggregate_type: aggregate_type.to_owned(),
                version: actual + i as u64 + 1,
                position: first_position + i as u64,
                event_name: event.event_name,
                event_version: event.event_version,
                payload: event.payload,
                metadata: event.metadata,
            });
        }
        let positions = log.streams.entry(stream_id.to_owned()).or_default();
        positions.extend(committed.iter().map(|e| e.position));
        log.events.extend(committed.iter().cloned());
        let head = log.events.len() as u64;
        drop(log);
        self.head.send_replace(head);
        Ok(committed)
    }
}

/// Snapshots in memory.
#[derive(Debug, Default)]
pub struct MemorySnapshotStore {
    snapshots: RwLock<HashMap<(String, String), Snapshot>>,
}

impl MemorySnapshotStore {
    /// An empty snapshot store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl SnapshotStore for MemorySnapshotStore {
    async fn load(&self, aggregate_type: &str, stream_id: &str) -> Result<Option<Snapshot>> {
        let key = (aggregate_type.to_owned(), stream_id.to_owned());
        Ok(self.snapshots.read().get(&key).cloned())
    }

    async fn save(&self, snapshot: Snapshot) -> Result<()> {
        let key = (snapshot.aggregate_type.clone(), snapshot.stream_id.clone());
        let mut all = self.snapshots.write();
        if all
            .get(&key)
            .is_none_or(|old| old.version < snapshot.version)
        {
            all.insert(key, snapshot);
        }
        Ok(())
    }
}

/// Named checkpoints in memory.
#[derive(Debug, Default)]
pub struct MemoryCheckpointStore {
    positions: RwLock<HashMap<String, u64>>,
}

impl MemoryCheckpointStore {
    /// An empty checkpoint store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl CheckpointStore for MemoryCheckpointStore {
    async fn load(&self, name: &str) -> Result<Option<u64>> {
        Ok(self.positions.read().get(name).copied())
    }

    async fn save(&self, name: &str, position: u64) -> Result<()> {
        self.positions.write().insert(name.to_owned(), position);
        Ok(())
    }
}
