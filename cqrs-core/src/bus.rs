//! The event bus: carries envelopes between services.
//!
//! Contract: publishing keys every event by its routing key (its stream id unless the event
//! names another, see [`crate::routing`]), so one stream's events, and one view's, keep their
//! order for every subscriber; a subscription belongs to a named consumer group whose members
//! share the work, each holding the same partitions of every topic it reads; a batch is acknowledged only after it was handled, so delivery is
//! at-least-once and a restarted member resumes after the last acknowledged batch.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::envelope::Envelope;
use crate::error::Result;
use crate::processor::{EventSource, Feed};

/// Publishes envelopes and opens consumer-group subscriptions.
#[async_trait]
pub trait EventBus: Send + Sync {
    /// Publishes events (to the topic of their aggregate type, keyed by routing key). Returns once
    /// the bus has accepted all of them.
    ///
    /// # Errors
    /// A backend error; then some events may have been published and the caller publishes them
    /// again (subscribers are idempotent).
    async fn publish(&self, events: &[Envelope]) -> Result<()>;

    /// Joins consumer group `group` on the topics of these aggregate types. The returned source
    /// resumes after the group's acknowledged position.
    ///
    /// # Errors
    /// A backend error, or a bad group or topic name.
    async fn subscribe(
        &self,
        group: &str,
        aggregate_types: &[&str],
        idle: Duration,
    ) -> Result<Box<dyn EventSource>>;

    /// Whether a routing key stays with one member of a group while the group does not
    /// change (partitions held by members: Kafka, RabbitMQ, Redis). A bus that hands each key
    /// to one member at a time, but not always the same one (SQS FIFO message groups), says
    /// `false`: a processor on it keeps no views in memory between batches, since another
    /// member may have changed them meanwhile.
    fn pins_keys(&self) -> bool {
        true
    }
}

#[async_trait]
impl<T: EventBus + ?Sized> EventBus for Arc<T> {
    async fn publish(&self, events: &[Envelope]) -> Result<()> {
        (**self).publish(events).await
    }
    async fn subscribe(
        &self,
        group: &str,
        aggregate_types: &[&str],
        idle: Duration,
    ) -> Result<Box<dyn EventSource>> {
        (**self).subscribe(group, aggregate_types, idle).await
    }
    fn pins_keys(&self) -> bool {
        (**self).pins_keys()
    }
}

#[async_trait]
impl<T: EventBus + ?Sized> EventBus for Box<T> {
    async fn publish(&self, events: &[Envelope]) -> Result<()> {
        (**self).publish(events).await
    }
    async fn subscribe(
        &self,
        group: &str,
        aggregate_types: &[&str],
        idle: Duration,
    ) -> Result<Box<dyn EventSource>> {
        (**self).subscribe(group, aggregate_types, idle).await
    }
    fn pins_keys(&self) -> bool {
        (**self).pins_keys()
    }
}

/// Feeds a processor from a bus subscription (a consumer group).
#[derive(Clone)]
pub struct BusFeed {
    bus: Arc<dyn EventBus>,
    group: String,
    aggregate_types: Vec<String>,
}

impl std::fmt::Debug for BusFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusFeed")
            .field("group", &self.group)
            .field("aggregate_types", &self.aggregate_types)
            .finish()
    }
}

impl BusFeed {
    /// A feed from consumer group `group` on the topics of `aggregate_types`.
    pub fn new(
        bus: Arc<dyn EventBus>,
        group: impl Into<String>,
        aggregate_types: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        BusFeed {
            bus,
            group: group.into(),
            aggregate_types: aggregate_types.into_iter().map(Into::into).collect(),
        }
    }
}

#[async_trait]
impl Feed for BusFeed {
    async fn open(&self, _checkpoint: Option<u64>, idle: Duration) -> Result<Box<dyn EventSource>> {
        let types: Vec<&str> = self.aggregate_types.iter().map(String::as_str).collect();
        self.bus.subscribe(&self.group, &types, idle).await
    }

    fn pins_keys(&self) -> bool {
        self.bus.pins_keys()
    }
}
