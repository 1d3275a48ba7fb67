//! The projections and relays a service runs, as the builder collects them.

use std::sync::Arc;
use std::time::Duration;

use super::wiring::Wiring;
use crate::bus::BusFeed;
use crate::error::Result;
use crate::processor::{ErrorPolicy, Feed, ProcessorHandle, StoreFeed, TrackingProcessor};
use crate::projection::Projection;
use crate::relay::{Relay, RelayHandle};

/// Where a projection's events come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Source {
    /// The store's global log (the default).
    Store,
    /// A consumer group on the bus, on these aggregate types' topics.
    Bus { group: String, types: Vec<String> },
}

/// How one projection runs: its feed, batch size, error policy, view cache. The defaults are
/// the processor's ([`TrackingProcessor`]).
#[derive(Debug, Clone)]
pub struct ProjectionOptions {
    pub(super) name: String,
    pub(super) source: Source,
    batch_size: Option<usize>,
    policy: Option<ErrorPolicy>,
    view_cache: Option<usize>,
    idle: Option<Duration>,
    skip_unknown: bool,
    segments: Option<u32>,
    segment_lease: Option<Duration>,
}

impl ProjectionOptions {
    pub(super) fn new(name: &str) -> Self {
        ProjectionOptions {
            name: name.to_owned(),
            source: Source::Store,
            batch_size: None,
            policy: None,
            view_cache: None,
            idle: None,
            skip_unknown: false,
            segments: None,
            segment_lease: None,
        }
    }

    /// Fed from consumer group `group` on the bus, on the topics of these aggregate types
    /// (default: from the store's global log). The builder refuses it without a bus.
    #[must_use]
    pub fn from_bus(
        mut self,
        group: impl Into<String>,
        aggregate_types: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        self.source = Source::Bus {
            group: group.into(),
            types: aggregate_types.into_iter().map(Into::into).collect(),
        };
        self
    }

    /// Keeps views, checkpoint and dead letters under another name than `P::NAME`.
    #[must_use]
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The largest number of events per batch.
    #[must_use]
    pub fn batch_size(mut self, size: usize) -> Self {
        self.batch_size = Some(size);
        self
    }

    /// The error policy for events the projection cannot handle.
    #[must_use]
    pub fn error_policy(mut self, policy: ErrorPolicy) -> Self {
        self.policy = Some(policy);
        self
    }

    /// Views kept in memory between batches (0 turns the cache off).
    #[must_use]
    pub fn view_cache(mut self, capacity: usize) -> Self {
        self.view_cache = Some(capacity);
        self
    }

    /// How long the feed waits for new events before the processor checks for a stop.
    #[must_use]
    pub fn idle_wait(mut self, idle: Duration) -> Self {
        self.idle = Some(idle);
        self
    }

    /// Runs a store-fed projection in `count` segments, shared with every other instance of
    /// it on the same view store, each claimed under a lease of 10 s (see
    /// [`crate::segment`]). Choose the count once: as many as instances you may ever run;
    /// changing it needs a replay. The builder refuses it on a bus feed (a consumer group
    /// shares a bus) and on a view store that keeps no claims.
    #[must_use]
    pub fn segments(mut self, count: u32) -> Self {
        self.segments = Some(count);
        self
    }

    /// The lease of each segment's claim, when it runs in [`segments`](Self::segments)
    /// (default 10 s, from 100 ms to a day): how long a dead instance's segments wait before
    /// another takes them. Renewed three times per lease.
    #[must_use]
    pub fn segment_lease(mut self, lease: Duration) -> Self {
        self.segment_lease = Some(lease);
        self
    }

    /// Skips events no registered type knows (a feed carrying other services' events).
    #[must_use]
    pub fn skip_unknown_events(mut self) -> Self {
        self.skip_unknown = true;
        self
    }

    fn processor<P: Projection>(
        &self,
        projection: Arc<P>,
        wiring: &Wiring,
    ) -> TrackingProcessor<P> {
        let mut p =
            TrackingProcessor::shared(projection, wiring.views.store.clone()).named(&self.name);
        if let Some(size) = self.batch_size {
            p = p.batch_size(size);
        }
        if let Some(policy) = self.policy {
            p = p.error_policy(policy);
        }
        if let Some(capacity) = self.view_cache {
            p = p.view_cache(capacity);
        }
        if let Some(idle) = self.idle {
            p = p.idle_wait(idle);
        }
        if self.skip_unknown {
            p = p.skip_unknown_events();
        }
        p
    }
}

/// Starts a projection's processor on the wiring (the projection's type is inside).
type Starter = Box<dyn FnOnce(&ProjectionOptions, &Wiring) -> Result<Started> + Send>;

/// A projection waiting to be started, with the retrier of its dead letters.
pub(super) struct PendingProjection {
    pub(super) options: ProjectionOptions,
    pub(super) start: Starter,
    /// The projection's type, to find its read model whatever its name.
    pub(super) projection: std::any::TypeId,
}

/// A started projection.
pub(super) struct Started {
    pub(super) handle: ProcessorHandle,
    pub(super) retry: Arc<dyn RetryDeadLetters>,
}

/// Retries a projection's dead letters (its processor, behind `dyn`).
#[async_trait::async_trait]
pub(super) trait RetryDeadLetters: Send + Sync {
    async fn retry(
        &self,
        wiring: &Wiring,
        event: Option<uuid::Uuid>,
    ) -> Result<crate::processor::RetryReport>;
}

#[async_trait::async_trait]
impl<P: Projection> RetryDeadLetters for TrackingProcessor<P> {
    async fn retry(
        &self,
        wiring: &Wiring,
        event: Option<uuid::Uuid>,
    ) -> Result<crate::processor::RetryReport> {
        let letters = wiring.views.dead_letters.as_ref();
        match event {
            Some(id) => self.retry_dead_letter(letters, id).await,
            None => self.retry_dead_letters(letters).await,
        }
    }
}

impl PendingProjection {
    pub(super) fn new<P: Projection>(projection: P, options: ProjectionOptions) -> Self {
        let projection = Arc::new(projection);
        PendingProjection {
            options,
            projection: std::any::TypeId::of::<P>(),
            start: Box::new(move |options, wiring| {
                if options.segments.is_some() {
                    let who = &options.name;
                    if matches!(options.source, Source::Bus { .. }) {
                        return Err(crate::Error::Config(format!(
                            "projection `{who}` runs in segments on a bus feed: its consumer \
                             group shares the partitions already; segments are for the store's log"
                        )));
                    }
                    if wiring.views.store.claims().is_none() {
                        return Err(crate::segment::no_claims(who));
                    }
                }
                let feed: Arc<dyn Feed> = match &options.source {
                    Source::Store => Arc::new(StoreFeed::new(wiring.store.clone())),
                    Source::Bus { group, types } => {
                        let bus = wiring.bus_for(&format!("projection `{}`", options.name))?;
                        Arc::new(BusFeed::new(bus, group.clone(), types.clone()))
                    }
                };
                // A second processor beside the running one, for dead-letter retries: view
                // revisions keep the two from overwriting each other.
                let retry = Arc::new(options.processor(projection.clone(), wiring).view_cache(0));
                let mut running = options.processor(projection, wiring);
                if let Some(count) = options.segments {
                    let lease = options.segment_lease.unwrap_or(Duration::from_secs(10));
                    running = running.segments(count, lease);
                }
                let handle = running.spawn(feed);
                Ok(Started { handle, retry })
            }),
        }
    }
}

/// How one relay runs.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    pub(super) name: String,
    pub(super) only: Option<Vec<String>>,
    batch_size: Option<usize>,
    backoff: Option<crate::processor::Backoff>,
}

impl RelayOptions {
    pub(super) fn new(name: &str) -> Self {
        RelayOptions {
            name: name.to_owned(),
            only: None,
            batch_size: None,
            backoff: None,
        }
    }

    /// Publishes only the events of these aggregate types (default: every event).
    #[must_use]
    pub fn only(mut self, aggregate_types: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.only = Some(aggregate_types.into_iter().map(Into::into).collect());
        self
    }

    /// Events per published batch.
    #[must_use]
    pub fn batch_size(mut self, size: usize) -> Self {
        self.batch_size = Some(size);
        self
    }

    /// The backoff while the store or the bus fails.
    #[must_use]
    pub fn backoff(mut self, backoff: crate::processor::Backoff) -> Self {
        self.backoff = Some(backoff);
        self
    }

    /// Starts the relay (the builder checked the wiring first).
    pub(super) fn start(&self, wiring: &Wiring) -> Result<RelayHandle> {
        let bus = wiring.bus_for(&format!("relay `{}`", self.name))?;
        let mut relay = Relay::new(
            self.name.clone(),
            wiring.store.clone(),
            bus,
            wiring.checkpoints.clone(),
        );
        if let Some(types) = &self.only {
            relay = relay.only(types.clone());
        }
        if let Some(size) = self.batch_size {
            relay = relay.batch_size(size);
        }
        if let Some(backoff) = self.backoff {
            relay = relay.backoff(backoff);
        }
        Ok(relay.spawn())
    }
}
