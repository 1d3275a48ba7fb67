use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::RwLock;
use tokio::sync::watch;

use bytes::Bytes;
use foldhash::fast::RandomState;

use crate::envelope::{Envelope, ExpectedVersion, Metadata, NewEvent};
use crate::error::{Error, Result};
use crate::registry::StoredType;
use crate::store::{CheckpointStore, EventAppender, EventReader, Snapshot, SnapshotStore};

/// Events per segment of the global log once the first segment is full.
const SEGMENT: usize = 1 << 16;

/// One event as the log keeps it: its stream and its type as indexes into the log's tables,
/// so storing an event allocates nothing but its slot (the payload is shared, not copied).
struct Stored {
    stream: usize,
    stored_type: usize,
    version: u64,
    payload: Bytes,
    metadata: Metadata,
}

/// The global log in fixed-size segments: growing it never moves the events already stored
/// (one `Vec` would copy the whole log each time it doubles).
#[derive(Default)]
struct Segments {
    segments: Vec<Vec<Stored>>,
    len: usize,
}

impl Segments {
    fn len(&self) -> usize {
        self.len
    }

    fn get(&self, index: usize) -> Option<&Stored> {
        self.segments.get(index / SEGMENT)?.get(index % SEGMENT)
    }

    fn push(&mut self, stored: Stored) {
        match self.segments.last_mut() {
            Some(last) if last.len() < SEGMENT => last.push(stored),
            // The first segment grows as a `Vec` does, so a small store stays small.
            None => self.segments.push(vec![stored]),
            Some(_) => {
                let mut segment = Vec::with_capacity(SEGMENT);
                segment.push(stored);
                self.segments.push(segment);
            }
        }
        self.len += 1;
    }

    /// The events at indexes `start..end` with their indexes, in order.
    fn range(&self, start: usize, end: usize) -> impl Iterator<Item = (usize, &Stored)> {
        let end = end.min(self.len);
        (start..end).filter_map(move |i| self.get(i).map(|s| (i, s)))
    }
}

/// A stream: its id and the positions of its events, in version order.
struct Stream {
    id: String,
    positions: Vec<u64>,
}

#[derive(Default)]
struct Log {
    /// The global log: the event at position `p` is at index `p - 1`.
    events: Segments,
    /// The streams, by the index their events record.
    streams: Vec<Stream>,
    /// Stream id to its index.
    stream_index: HashMap<String, usize, RandomState>,
    /// The stored types, by the index their events record.
    types: Vec<StoredType>,
    /// Event name to the indexes of the stored types of that name.
    type_index: HashMap<String, Vec<usize>, RandomState>,
}

impl Log {
    /// The index of a stored type, added when it is new (no allocation when it is known).
    fn type_of(&mut self, aggregate_type: &str, name: &str, version: u32) -> usize {
        if let Some(known) = self.type_index.get(name) {
            let types = &self.types;
            let found = known.iter().copied().find(|i| {
                types
                    .get(*i)
                    .is_some_and(|t| t.version == version && t.aggregate_type == aggregate_type)
            });
            if let Some(index) = found {
                return index;
            }
        }
        let index = self.types.len();
        self.types.push(StoredType {
            aggregate_type: aggregate_type.to_owned(),
            name: name.to_owned(),
            version,
        });
        self.type_index
            .entry(name.to_owned())
            .or_default()
            .push(index);
        index
    }

    /// The index of a stream, added when it is new (no allocation when it is known).
    fn stream_of(&mut self, stream_id: &str) -> usize {
        if let Some(index) = self.stream_index.get(stream_id) {
            return *index;
        }
        let index = self.streams.len();
        self.streams.push(Stream {
            id: stream_id.to_owned(),
            positions: Vec::new(),
        });
        self.stream_index.insert(stream_id.to_owned(), index);
        index
    }

    fn stream(&self, stream_id: &str) -> Option<&Stream> {
        let index = self.stream_index.get(stream_id)?;
        self.streams.get(*index)
    }

    /// The aggregate type that wrote a stream (its first event's).
    fn stream_type(&self, stream: usize) -> Option<&str> {
        let first = *self.streams.get(stream)?.positions.first()?;
        let stored = self
            .events
            .get(usize::try_from(first).ok()?.checked_sub(1)?)?;
        self.types
            .get(stored.stored_type)
            .map(|t| t.aggregate_type.as_str())
    }

    /// A stream's routing key (`None`: its id), as its last event records it.
    fn stream_routing_key(&self, stream: usize) -> Option<&str> {
        let last = *self.streams.get(stream)?.positions.last()?;
        let stored = self
            .events
            .get(usize::try_from(last).ok()?.checked_sub(1)?)?;
        stored.metadata.routing_key.as_deref()
    }

    /// A stream's index, if it exists, and its version (0 when it does not).
    fn stream_version(&self, stream_id: &str) -> (Option<usize>, u64) {
        let index = self.stream_index.get(stream_id).copied();
        let version = index
            .and_then(|i| self.streams.get(i))
            .map_or(0, |s| s.positions.len() as u64);
        (index, version)
    }

    fn head(&self) -> u64 {
        self.events.len() as u64
    }

    /// Stores an event at the next position, in its stream at the next version; returns the
    /// two.
    fn push(
        &mut self,
        stream: usize,
        stored_type: usize,
        payload: Bytes,
        metadata: Metadata,
    ) -> (u64, u64) {
        let position = self.head() + 1;
        let mut version = 0;
        if let Some(s) = self.streams.get_mut(stream) {
            s.positions.push(position);
            version = s.positions.len() as u64;
        }
        self.events.push(Stored {
            stream,
            stored_type,
            version,
            payload,
            metadata,
        });
        (position, version)
    }

    /// The envelope of the event at `index` of the global log. Its stream and type indexes
    /// were taken from this log's tables, which only grow, so both are always found.
    fn envelope(&self, index: usize, stored: &Stored) -> Envelope {
        let stream_id = self
            .streams
            .get(stored.stream)
            .map(|s| s.id.clone())
            .unwrap_or_default();
        let (aggregate_type, event_name, event_version) = self
            .types
            .get(stored.stored_type)
            .map(|t| (t.aggregate_type.clone(), t.name.clone(), t.version))
            .unwrap_or_default();
        Envelope {
            stream_id,
            aggregate_type,
            version: stored.version,
            position: index as u64 + 1,
            event_name,
            event_version,
            payload: stored.payload.clone(),
            metadata: stored.metadata.clone(),
        }
    }
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
            let stream = log.stream_of(&envelope.stream_id);
            let stored_type = log.type_of(
                &envelope.aggregate_type,
                &envelope.event_name,
                envelope.event_version,
            );
            (envelope.position, envelope.version) = log.push(
                stream,
                stored_type,
                envelope.payload.clone(),
                envelope.metadata.clone(),
            );
            out.push(envelope);
        }
        let head = log.head();
        drop(log);
        self.published(head);
        out
    }

    /// Wakes the readers waiting for events. A watch send takes a lock per waiter shard, so
    /// it is skipped while nobody waits: a waiter subscribes before it looks at the log (see
    /// `wait_for_events`), and the log's lock orders that look against this append.
    fn published(&self, head: u64) {
        if self.head.receiver_count() > 0 {
            // Two appends may publish out of order (each after releasing the lock): the value
            // only ever moves forward, so a later head is never overwritten by an earlier one.
            self.head.send_if_modified(|published| {
                let newer = head > *published;
                if newer {
                    *published = head;
                }
                newer
            });
        }
    }
}

#[async_trait]
impl EventReader for MemoryEventStore {
    async fn read_stream(&self, stream_id: &str, after_version: u64) -> Result<Vec<Envelope>> {
        let log = self.log.read();
        let Some(stream) = log.stream(stream_id) else {
            return Ok(Vec::new());
        };
        let skip = usize::try_from(after_version).unwrap_or(usize::MAX);
        Ok(stream
            .positions
            .iter()
            .skip(skip)
            .filter_map(|p| {
                let index = (*p - 1) as usize;
                log.events.get(index).map(|s| log.envelope(index, s))
            })
            .collect())
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<Envelope>> {
        let log = self.log.read();
        let start = usize::try_from(after)
            .unwrap_or(usize::MAX)
            .min(log.events.len());
        let end = start.saturating_add(limit).min(log.events.len());
        Ok(log
            .events
            .range(start, end)
            .map(|(index, s)| log.envelope(index, s))
            .collect())
    }

    async fn head(&self) -> Result<u64> {
        Ok(self.log.read().head())
    }

    async fn wait_for_events(&self, after: u64, timeout: Duration) -> Result<()> {
        // Subscribe first, then look: an append after the look sees the subscriber and sends.
        let mut rx = self.head.subscribe();
        if self.log.read().head() > after {
            return Ok(());
        }
        // The channel's value may be older than the log (appends skip the send while nobody
        // waits) but never goes back: `> after` on it is never wrong, and every append that
        // this waiter has not seen in the log publishes a head past `after`.
        // Ok on change or timeout alike: the caller reads again either way.
        let _ = tokio::time::timeout(timeout, rx.wait_for(|head| *head > after)).await;
        Ok(())
    }

    async fn stored_types(&self) -> Result<Vec<StoredType>> {
        let mut types = self.log.read().types.clone();
        types.sort();
        Ok(types)
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
        let mut events = events;
        let key = crate::routing::settle(stream_id, &mut events)?;
        // The envelopes are built before the lock is taken: under it, only the version
        // check, the numbering and the log's slots.
        let mut committed: Vec<Envelope> = events
            .into_iter()
            .map(|event| Envelope {
                stream_id: stream_id.to_owned(),
                aggregate_type: aggregate_type.to_owned(),
                version: 0,
                position: 0,
                event_name: event.event_name,
                event_version: event.event_version,
                payload: event.payload,
                metadata: event.metadata,
            })
            .collect();
        let mut log = self.log.write();
        let (known, actual) = log.stream_version(stream_id);
        if let Some(owner) = known.and_then(|i| log.stream_type(i)) {
            if owner != aggregate_type {
                return Err(Error::WrongAggregateType {
                    stream_id: stream_id.to_owned(),
                    expected: aggregate_type.to_owned(),
                    actual: owner.to_owned(),
                });
            }
        }
        // The key before the version, as PostgreSQL checks them: a writer with a stale version
        // and a wrong key learns of the key, which no retry mends.
        if let Some(index) = known {
            crate::routing::check(stream_id, log.stream_routing_key(index), key.as_deref())?;
        }
        if let ExpectedVersion::Exact(expected) = expected {
            if expected != actual {
                return Err(Error::Conflict {
                    stream_id: stream_id.to_owned(),
                    expected,
                    actual,
                });
            }
        }
        if committed.is_empty() {
            return Ok(committed);
        }
        if let Some(index) = known {
            if let (None, Some(inherited)) = (&key, log.stream_routing_key(index)) {
                let inherited = inherited.to_owned();
                for envelope in &mut committed {
                    envelope.metadata.routing_key = Some(inherited.clone());
                }
            }
        }
        let stream = match known {
            Some(index) => index,
            None => log.stream_of(stream_id),
        };
        for envelope in &mut committed {
            let stored_type =
                log.type_of(aggregate_type, &envelope.event_name, envelope.event_version);
            (envelope.position, envelope.version) = log.push(
                stream,
                stored_type,
                envelope.payload.clone(),
                envelope.metadata.clone(),
            );
        }
        let head = log.head();
        drop(log);
        self.published(head);
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
