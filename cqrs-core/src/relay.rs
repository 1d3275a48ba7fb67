//! The relay: publishes the store's global log to a bus (the outbox pattern).
//!
//! Commands only ever write to the event store; the relay reads the global log after its own
//! checkpoint, publishes each batch, and then saves the checkpoint. A crash between the two
//! publishes a batch again, which subscribers absorb (they are idempotent per stream version).
//! While the bus is down, events wait safely in the store and commands keep succeeding.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::bus::EventBus;
use crate::error::{Error, Result};
use crate::processor::Backoff;
use crate::store::{CheckpointStore, EventReader};

/// A relay whose `only` list is empty would move its checkpoint past every event and publish
/// none of them: refused.
pub(crate) fn empty_only(name: &str) -> Error {
    Error::Config(format!(
        "relay `{name}`: `only` names no aggregate type, so it would skip every event"
    ))
}

/// The relay's circuit breaker, seen from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Breaker {
    /// Publishing works.
    Closed,
    /// Publishing failed repeatedly: the relay waits out a cooldown and sends nothing. Events
    /// wait in the store; commands are not affected.
    Open,
    /// The cooldown is over: the next attempt decides between closed and open.
    HalfOpen,
}

/// Publishes the global log to an event bus with its own checkpoint.
pub struct Relay {
    name: String,
    reader: Arc<dyn EventReader>,
    bus: Arc<dyn EventBus>,
    checkpoints: Arc<dyn CheckpointStore>,
    batch_size: usize,
    backoff: Backoff,
    idle: Duration,
    position: watch::Sender<u64>,
    breaker: watch::Sender<Breaker>,
    open_after: u32,
    only: Option<Vec<String>>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("name", &self.name)
            .field("batch_size", &self.batch_size)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// A relay named `name` (its checkpoint's key) from `reader` to `bus`.
    pub fn new(
        name: impl Into<String>,
        reader: Arc<dyn EventReader>,
        bus: Arc<dyn EventBus>,
        checkpoints: Arc<dyn CheckpointStore>,
    ) -> Self {
        Relay {
            name: name.into(),
            reader,
            bus,
            checkpoints,
            batch_size: 1000,
            backoff: Backoff::default(),
            idle: Duration::from_millis(500),
            position: watch::Sender::new(0),
            breaker: watch::Sender::new(Breaker::Closed),
            open_after: 3,
            only: None,
        }
    }

    /// Opens the circuit after this many consecutive failures (default 3).
    #[must_use]
    pub fn open_after(mut self, failures: u32) -> Self {
        self.open_after = failures.max(1);
        self
    }

    /// Publishes only the events of these aggregate types (default: every event). For a
    /// store shared by several services, each of which publishes its own events. An empty
    /// list is refused when the relay runs ([`Error::Config`]): it would skip every event.
    #[must_use]
    pub fn only(mut self, aggregate_types: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.only = Some(aggregate_types.into_iter().map(Into::into).collect());
        self
    }

    /// Events per published batch.
    #[must_use]
    pub fn batch_size(mut self, size: usize) -> Self {
        self.batch_size = size.max(1);
        self
    }

    /// The backoff while the store or the bus fails.
    #[must_use]
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Publishes everything after the checkpoint, once. Returns the number of events published.
    ///
    /// # Errors
    /// The first store, bus or checkpoint error (nothing is retried here).
    pub async fn publish_pending(&self) -> Result<u64> {
        if self.only.as_ref().is_some_and(Vec::is_empty) {
            return Err(empty_only(&self.name));
        }
        let mut after = self.checkpoints.load(&self.name).await?.unwrap_or(0);
        // A relay restarted with nothing to publish must wait after its checkpoint, not after
        // 0: from 0 `wait_for_events` returns at once and the relay would spin on the store.
        self.position.send_if_modified(|p| {
            let moved = after > *p;
            *p = (*p).max(after);
            moved
        });
        let mut total = 0;
        loop {
            let events = self.reader.read_all(after, self.batch_size).await?;
            let Some(last) = events.last().map(|e| e.position) else {
                return Ok(total);
            };
            let published = match &self.only {
                None => {
                    self.publish(&events).await?;
                    events.len()
                }
                Some(types) => {
                    let mine: Vec<_> = events
                        .into_iter()
                        .filter(|e| types.contains(&e.aggregate_type))
                        .collect();
                    if !mine.is_empty() {
                        self.publish(&mine).await?;
                    }
                    mine.len()
                }
            };
            self.checkpoints.save(&self.name, last).await?;
            self.position.send_replace(last);
            crate::metrics::published(&self.name, published);
            total += published as u64;
            after = last;
        }
    }

    /// Publishes one batch in a `relay.publish` span; at debug level each event is logged
    /// with its correlation id, to follow a request from its command to its projections.
    async fn publish(&self, events: &[crate::envelope::Envelope]) -> Result<()> {
        let span = tracing::debug_span!(
            "relay.publish",
            relay = %self.name,
            events = events.len(),
            last = events.last().map(|e| e.position),
        );
        self.bus.publish(events).instrument(span.clone()).await?;
        if tracing::enabled!(tracing::Level::DEBUG) {
            let _entered = span.enter();
            for e in events {
                tracing::debug!(
                    correlation_id = %e.metadata.correlation_id,
                    event_id = %e.metadata.event_id,
                    event = %e.event_name,
                    stream = %e.stream_id,
                    position = e.position,
                    "published"
                );
            }
        }
        Ok(())
    }

    /// Runs until `stop` is cancelled. Failures are retried with backoff; after
    /// [`open_after`](Self::open_after) consecutive ones the circuit opens (nothing is sent
    /// during the cooldown), then half-opens for one attempt, and closes on success.
    ///
    /// # Errors
    /// Only non-transient errors (e.g. a bad configuration) end it early.
    pub async fn run(&self, stop: CancellationToken) -> Result<()> {
        let mut failures = 0u32;
        loop {
            let outcome = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                outcome = self.publish_pending() => outcome,
            };
            // Caught up: wait for new events. The wait reads the store too, and its failures
            // are the publishing's: a transient one is retried with the same backoff.
            let outcome = match outcome {
                Ok(_) => {
                    let closed = self.breaker.send_if_modified(|b| {
                        std::mem::replace(b, Breaker::Closed) != Breaker::Closed
                    });
                    if closed {
                        tracing::info!(relay = %self.name, failures, "relay recovered; circuit closed");
                        crate::metrics::breaker(&self.name, Breaker::Closed);
                    }
                    let after = *self.position.borrow();
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(()),
                        waited = self.reader.wait_for_events(after, self.idle) => waited.map(|_| ()),
                    }
                }
                Err(e) => Err(e),
            };
            match outcome {
                // Published and waited: the failures count from zero again (a wait that keeps
                // failing backs off like publishing does).
                Ok(()) => failures = 0,
                Err(e) if e.is_transient() => {
                    failures = failures.saturating_add(1);
                    crate::metrics::relay_failure(&self.name);
                    let delay = self.backoff.delay(failures - 1);
                    if failures >= self.open_after {
                        if *self.breaker.borrow() != Breaker::Open {
                            tracing::warn!(relay = %self.name, error = %e, ?delay, "relay circuit open; events wait in the store");
                        }
                        self.breaker.send_replace(Breaker::Open);
                        crate::metrics::breaker(&self.name, Breaker::Open);
                    } else {
                        tracing::warn!(relay = %self.name, error = %e, ?delay, "relay failed; retrying");
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(delay) => {}
                    }
                    if failures >= self.open_after {
                        self.breaker.send_replace(Breaker::HalfOpen);
                        crate::metrics::breaker(&self.name, Breaker::HalfOpen);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs the relay on a task of its own.
    pub fn spawn(self) -> RelayHandle {
        let stop = CancellationToken::new();
        let position = self.position.subscribe();
        let breaker = self.breaker.subscribe();
        let token = stop.clone();
        let task = tokio::spawn(async move { self.run(token).await });
        RelayHandle {
            stop,
            task,
            position,
            breaker,
        }
    }
}

/// A running relay.
#[derive(Debug)]
pub struct RelayHandle {
    stop: CancellationToken,
    task: JoinHandle<Result<()>>,
    position: watch::Receiver<u64>,
    breaker: watch::Receiver<Breaker>,
}

impl RelayHandle {
    /// The last position published and checkpointed.
    pub fn position(&self) -> u64 {
        *self.position.borrow()
    }

    /// A receiver of the last position published, to watch from elsewhere.
    pub fn watch_position(&self) -> watch::Receiver<u64> {
        self.position.clone()
    }

    /// The circuit breaker's state.
    pub fn breaker(&self) -> Breaker {
        *self.breaker.borrow()
    }

    /// A receiver of the breaker's state, to watch its transitions.
    pub fn watch_breaker(&self) -> watch::Receiver<Breaker> {
        self.breaker.clone()
    }

    /// Waits until the relay has published `position`, or `timeout` passes.
    ///
    /// # Errors
    /// [`Error::Shutdown`] when the relay ended, [`Error::Backend`] on timeout.
    pub async fn wait_for(&mut self, position: u64, timeout: Duration) -> Result<()> {
        match tokio::time::timeout(timeout, self.position.wait_for(|p| *p >= position)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(Error::Shutdown),
            Err(_) => Err(Error::Backend {
                backend: "relay",
                message: format!("did not reach position {position} within {timeout:?}"),
                source: None,
            }),
        }
    }

    /// Whether the relay's task has ended (a configuration error, a panic).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Kills the relay at once, wherever it is (as a crash would): its checkpoint stays where
    /// the last published batch left it.
    pub fn abort(self) {
        self.task.abort();
    }

    /// Stops the relay and returns how it ended.
    ///
    /// # Errors
    /// The error that had stopped it.
    pub async fn stop(self) -> Result<()> {
        self.stop.cancel();
        self.task.await.map_err(|e| Error::Backend {
            backend: "relay",
            message: "relay task ended abnormally".into(),
            source: Some(Box::new(e)),
        })?
    }
}
