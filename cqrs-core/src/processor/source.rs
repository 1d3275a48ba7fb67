//! Where a processor's events come from: the store's global log or a bus subscription.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::envelope::Envelope;
use crate::error::Result;
use crate::store::EventReader;
use crate::view::DeadLetter;

/// A batch of events from a source.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    /// The events, in the source's order (global order, or per-partition order).
    pub events: Vec<Envelope>,
    /// The global position to save as the checkpoint once the batch is applied, for sources
    /// that have one; `None` for a bus, which commits its own offsets on [`EventSource::ack`].
    pub checkpoint: Option<u64>,
    /// Whether the source delivers one global order (the store's log). Then one position per
    /// view is enough to skip what it has seen; otherwise (a bus: an order per partition) each
    /// view records the last version it applied of every stream.
    pub globally_ordered: bool,
    /// Records the source received but could not read as envelopes (a bus message without
    /// its headers, say). The processor treats each as an event that cannot be decoded: its
    /// error policy dead-letters it (into the projection's dead letters, like any other) or
    /// stops.
    pub rejected: Vec<Rejected>,
}

/// A record a source could not read as an envelope, as far as it could be read.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// What could be read of it: the raw payload, and whatever ids and names its headers had
    /// (empty or 0 where they had none). Its event id is stable across redeliveries, so it is
    /// dead-lettered once.
    pub envelope: Envelope,
    /// Why it could not be read.
    pub reason: String,
}

impl Batch {
    /// A batch from the global log, checkpointed at its last event.
    pub fn from_log(events: Vec<Envelope>) -> Self {
        let checkpoint = events.last().map(|e| e.position);
        Batch {
            events,
            checkpoint,
            globally_ordered: true,
            rejected: Vec::new(),
        }
    }

    /// A batch from a bus: no global checkpoint, an order per stream only.
    pub fn from_bus(events: Vec<Envelope>) -> Self {
        Batch {
            events,
            checkpoint: None,
            globally_ordered: false,
            rejected: Vec::new(),
        }
    }
}

/// An open stream of batches.
#[async_trait]
pub trait EventSource: Send {
    /// The next batch of at most `max` events. When none are there it waits a while (the
    /// feed's idle time, without polling hot) and may return an empty batch.
    ///
    /// # Errors
    /// A backend error; the processor retries transient ones.
    async fn next_batch(&mut self, max: usize) -> Result<Batch>;

    /// Acknowledges a batch once its unit of work has committed (a bus commits its offsets).
    ///
    /// # Errors
    /// A backend error; the processor retries transient ones.
    async fn ack(&mut self, batch: &Batch) -> Result<()>;

    /// Hands the source the events of a batch that were dead-lettered (after the unit of work
    /// that recorded them committed, before [`ack`](Self::ack)), e.g. to publish them to a
    /// dead-letter topic. The default keeps them in the view store only.
    ///
    /// # Errors
    /// A backend error; the processor retries transient ones.
    async fn dead_letter(&mut self, letters: &[DeadLetter]) -> Result<()> {
        let _ = letters;
        Ok(())
    }
}

/// Opens an [`EventSource`]: the feed a processor runs from.
#[async_trait]
pub trait Feed: Send + Sync {
    /// Opens a source that starts after `checkpoint` where the feed honours one (the global log
    /// does; a bus resumes from its consumer group's committed offsets).
    ///
    /// # Errors
    /// A backend error.
    async fn open(&self, checkpoint: Option<u64>, idle: Duration) -> Result<Box<dyn EventSource>>;

    /// Whether the feed delivers one global order (the store's log), so that a position
    /// committed means every event below it was handled. A bus has an order per partition
    /// only; the default says so.
    fn globally_ordered(&self) -> bool {
        false
    }

    /// Whether the views a processor on this feed writes stay its own between batches (see
    /// [`EventBus::pins_keys`](crate::EventBus::pins_keys)). When not, the processor keeps no
    /// views in memory. The default says they do.
    fn pins_keys(&self) -> bool {
        true
    }
}

/// Feeds a processor from an event store's global log.
#[derive(Clone)]
pub struct StoreFeed {
    reader: Arc<dyn EventReader>,
    wait: bool,
}

impl std::fmt::Debug for StoreFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreFeed")
            .field("wait", &self.wait)
            .finish()
    }
}

impl StoreFeed {
    /// A feed from this store's global log.
    pub fn new(reader: Arc<dyn EventReader>) -> Self {
        StoreFeed { reader, wait: true }
    }

    /// Never wait for new events: an empty batch means the end was reached.
    #[must_use]
    pub fn no_wait(mut self) -> Self {
        self.wait = false;
        self
    }
}

#[async_trait]
impl Feed for StoreFeed {
    async fn open(&self, checkpoint: Option<u64>, idle: Duration) -> Result<Box<dyn EventSource>> {
        Ok(Box::new(StoreSource {
            reader: self.reader.clone(),
            after: checkpoint.unwrap_or(0),
            wait: self.wait.then_some(idle),
        }))
    }

    fn globally_ordered(&self) -> bool {
        true
    }
}

struct StoreSource {
    reader: Arc<dyn EventReader>,
    after: u64,
    wait: Option<Duration>,
}

#[async_trait]
impl EventSource for StoreSource {
    async fn next_batch(&mut self, max: usize) -> Result<Batch> {
        let mut events = self.reader.read_all(self.after, max).await?;
        if events.is_empty() {
            if let Some(idle) = self.wait {
                self.reader.wait_for_events(self.after, idle).await?;
                events = self.reader.read_all(self.after, max).await?;
            }
        }
        let batch = Batch::from_log(events);
        if let Some(p) = batch.checkpoint {
            self.after = p;
        }
        Ok(batch)
    }

    async fn ack(&mut self, _batch: &Batch) -> Result<()> {
        Ok(())
    }
}
