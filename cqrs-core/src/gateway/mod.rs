//! The command gateway: load, decide, append, retry on conflict.

mod cache;
mod load;
mod metadata;
mod middleware;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tracing::Instrument;
use uuid::Uuid;

use self::cache::StateCache;
use self::load::Keyed;
use crate::aggregate::{Aggregate, Command};
use crate::envelope::{Envelope, ExpectedVersion, Metadata, NewEvent};
use crate::error::{CommandError, Error, Result};
use crate::event::EventSet;
use crate::processor::Backoff;
use crate::store::{EventStore, Snapshot, SnapshotStore};

pub use self::metadata::CommandMetadata;
pub use self::middleware::{CommandContext, Middleware, Outcome};

/// Sends commands to aggregates. Cheap to clone; share it.
///
/// ```
/// # use cqrs_core::{Aggregate, Command, CommandGateway, memory::MemoryEventStore};
/// # use serde::{Deserialize, Serialize};
/// # use std::sync::Arc;
/// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)] pub struct Added { pub n: u32 }
/// # cqrs_core::event!(Added, "doc.gw.Added");
/// # pub struct Add(pub String, pub u32);
/// # impl Command for Add { type Aggregate = Sum; fn aggregate_id(&self) -> &str { &self.0 } }
/// # #[derive(Debug, Default, Clone, Serialize, Deserialize)] pub struct Sum { total: u64 }
/// # #[derive(Debug, thiserror::Error)] #[error("zero")] pub struct Zero;
/// # impl Aggregate for Sum {
/// #     const TYPE: &'static str = "sum"; type Command = Add; type Event = Added; type Error = Zero;
/// #     fn handle(&self, c: &Add) -> Result<Vec<Added>, Zero> { if c.1 == 0 { Err(Zero) } else { Ok(vec![Added { n: c.1 }]) } }
/// #     fn apply(&mut self, e: &Added) { self.total += u64::from(e.n); }
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let gateway = CommandGateway::builder(Arc::new(MemoryEventStore::new())).build();
/// let committed = gateway.send(Add("sum-1".into(), 5)).await?;
/// assert_eq!(committed[0].version, 1);
/// let (sum, version) = gateway.load::<Sum>("sum-1").await?;
/// assert_eq!((sum.total, version), (5, 1));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct CommandGateway {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn EventStore>,
    snapshots: Option<(Arc<dyn SnapshotStore>, u64)>,
    max_retries: u32,
    conflict_backoff: Backoff,
    conflict_retries: AtomicU64,
    middleware: Vec<Arc<dyn Middleware>>,
    cache: Option<StateCache>,
}

impl std::fmt::Debug for CommandGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandGateway")
            .field("max_retries", &self.inner.max_retries)
            .field(
                "snapshot_every",
                &self.inner.snapshots.as_ref().map(|s| s.1),
            )
            .field("middleware", &self.inner.middleware.len())
            .field("cache", &self.inner.cache.is_some())
            .finish()
    }
}

/// Builds a [`CommandGateway`].
pub struct GatewayBuilder {
    inner: Inner,
}

impl std::fmt::Debug for GatewayBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayBuilder").finish_non_exhaustive()
    }
}

impl GatewayBuilder {
    /// Retries a command this many times after a concurrency conflict (default 5).
    #[must_use]
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.inner.max_retries = retries;
        self
    }

    /// How long to wait before retrying after a conflict: exponential with jitter
    /// ([`Backoff::spread`]), so writers that collided on a hot aggregate do not retry in
    /// lockstep (default 1 ms doubling up to 50 ms). `Backoff::new(Duration::ZERO,
    /// Duration::ZERO)` retries at once.
    #[must_use]
    pub fn conflict_backoff(mut self, backoff: Backoff) -> Self {
        self.inner.conflict_backoff = backoff;
        self
    }

    /// Saves a snapshot every `every` events of a stream, and loads from the latest one.
    #[must_use]
    pub fn snapshots(mut self, store: Arc<dyn SnapshotStore>, every: u64) -> Self {
        self.inner.snapshots = Some((store, every.max(1)));
        self
    }

    /// Keeps up to `capacity` aggregate states in memory between commands (default 10 000;
    /// 0 turns it off).
    #[must_use]
    pub fn cache(mut self, capacity: usize) -> Self {
        self.inner.cache = (capacity > 0).then(|| StateCache::new(capacity));
        self
    }

    /// Adds a middleware; they run in the order added.
    #[must_use]
    pub fn middleware(mut self, middleware: impl Middleware + 'static) -> Self {
        self.inner.middleware.push(Arc::new(middleware));
        self
    }

    /// The gateway.
    pub fn build(self) -> CommandGateway {
        CommandGateway {
            inner: Arc::new(self.inner),
        }
    }
}

type AggError<C> = <<C as Command>::Aggregate as Aggregate>::Error;

impl CommandGateway {
    /// Starts building a gateway over an event store.
    pub fn builder(store: Arc<dyn EventStore>) -> GatewayBuilder {
        GatewayBuilder {
            inner: Inner {
                store,
                snapshots: None,
                max_retries: 5,
                conflict_backoff: Backoff::new(
                    std::time::Duration::from_millis(1),
                    std::time::Duration::from_millis(50),
                ),
                conflict_retries: AtomicU64::new(0),
                middleware: Vec::new(),
                cache: Some(StateCache::new(10_000)),
            },
        }
    }

    /// How many times commands were retried after a conflict, since the gateway was built.
    pub fn conflict_retries(&self) -> u64 {
        self.inner.conflict_retries.load(Ordering::Relaxed)
    }

    /// The event store behind the gateway.
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.inner.store
    }

    /// Sends a command with fresh metadata. Returns the committed envelopes.
    ///
    /// # Errors
    /// [`CommandError::Rejected`] with the aggregate's error, [`CommandError::Conflict`] when
    /// conflicts outlasted the retries, [`CommandError::Refused`] from a middleware, or
    /// [`CommandError::Failed`].
    pub async fn send<C>(&self, command: C) -> Result<Vec<Envelope>, CommandError<AggError<C>>>
    where
        C: Command,
        C::Aggregate: Aggregate<Command = C>,
    {
        self.send_with(command, CommandMetadata::default()).await
    }

    /// Sends a command with metadata (correlation id, key/values).
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub async fn send_with<C>(
        &self,
        command: C,
        metadata: CommandMetadata,
    ) -> Result<Vec<Envelope>, CommandError<AggError<C>>>
    where
        C: Command,
        C::Aggregate: Aggregate<Command = C>,
    {
        let ctx = CommandContext::new(&command, metadata);
        self.run::<C::Aggregate>(&command, ctx).await
    }

    /// Sends a command to the aggregate `id` of type `A`: for a command type that does not
    /// name its target (a plain enum, no [`Command`] impl needed).
    ///
    /// ```
    /// # use cqrs_core::{Aggregate, CommandGateway, memory::MemoryEventStore};
    /// # use serde::{Deserialize, Serialize};
    /// # use std::sync::Arc;
    /// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)] pub struct Rang { pub times: u32 }
    /// # cqrs_core::event!(Rang, "doc.gw.Rang");
    /// # #[derive(Debug, thiserror::Error)] #[error("never")] pub struct Never;
    /// pub enum BellCommand { Ring(u32) }
    ///
    /// #[derive(Debug, Default, Clone, Serialize, Deserialize)]
    /// pub struct Bell { rung: u32 }
    /// impl Aggregate for Bell {
    ///     const TYPE: &'static str = "bell";
    ///     type Command = BellCommand;
    ///     type Event = Rang;
    ///     type Error = Never;
    ///     fn handle(&self, BellCommand::Ring(times): &BellCommand) -> Result<Vec<Rang>, Never> {
    ///         Ok(vec![Rang { times: *times }])
    ///     }
    ///     fn apply(&mut self, e: &Rang) { self.rung += e.times; }
    /// }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let gateway = CommandGateway::builder(Arc::new(MemoryEventStore::new())).build();
    /// gateway.send_to::<Bell>("bell-1", BellCommand::Ring(3)).await?;
    /// assert_eq!(gateway.load::<Bell>("bell-1").await?.0.rung, 3);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub async fn send_to<A: Aggregate>(
        &self,
        id: &str,
        command: A::Command,
    ) -> Result<Vec<Envelope>, CommandError<A::Error>> {
        self.send_to_with::<A>(id, command, CommandMetadata::default())
            .await
    }

    /// As [`send_to`](Self::send_to), with metadata.
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub async fn send_to_with<A: Aggregate>(
        &self,
        id: &str,
        command: A::Command,
        metadata: CommandMetadata,
    ) -> Result<Vec<Envelope>, CommandError<A::Error>> {
        let ctx = CommandContext::addressed::<A>(&command, id, metadata);
        self.run::<A>(&command, ctx).await
    }

    /// Middleware, dispatch, middleware again, in the command's span.
    async fn run<A: Aggregate>(
        &self,
        command: &A::Command,
        mut ctx: CommandContext<'_>,
    ) -> Result<Vec<Envelope>, CommandError<A::Error>> {
        let span = tracing::info_span!(
            "command",
            command = ctx.command_name,
            aggregate = A::TYPE,
            id = %ctx.aggregate_id,
            correlation_id = tracing::field::Empty,
        );
        let started = std::time::Instant::now();
        let outcome = async move {
            for mw in &self.inner.middleware {
                if let Err(reason) = mw.before(&mut ctx).await {
                    self.after(&ctx, &Outcome::Refused(reason.clone())).await;
                    return Err(CommandError::Refused(reason));
                }
            }
            let outcome = self.dispatch::<A>(command, &ctx).await;
            if !self.inner.middleware.is_empty() {
                match &outcome {
                    Ok(events) => self.after(&ctx, &Outcome::Committed(events)).await,
                    Err(CommandError::Failed(e)) => self.after(&ctx, &Outcome::Failed(e)).await,
                    Err(other) => self.after(&ctx, &Outcome::Refused(other.to_string())).await,
                }
            }
            if let Err(e) = &outcome {
                tracing::debug!(error = %e, "command did not commit");
            }
            outcome
        }
        .instrument(span)
        .await;
        let label = match &outcome {
            Ok(_) => "committed",
            Err(CommandError::Rejected(_)) => "rejected",
            Err(CommandError::Refused(_)) => "refused",
            Err(CommandError::Conflict { .. }) => "conflict",
            Err(_) => "failed",
        };
        crate::metrics::command(A::TYPE, label, started.elapsed());
        outcome
    }

    async fn after(&self, ctx: &CommandContext<'_>, outcome: &Outcome<'_>) {
        for mw in &self.inner.middleware {
            mw.after(ctx, outcome).await;
        }
    }

    async fn dispatch<A: Aggregate>(
        &self,
        command: &A::Command,
        ctx: &CommandContext<'_>,
    ) -> Result<Vec<Envelope>, CommandError<A::Error>> {
        let id = ctx.aggregate_id.as_str();
        let command_id = ctx.metadata.command_id.unwrap_or_else(Uuid::new_v4);
        let correlation_id = ctx.metadata.correlation_id.unwrap_or(command_id);
        tracing::Span::current().record("correlation_id", tracing::field::display(correlation_id));
        let causation_id = ctx.metadata.causation_id.unwrap_or(command_id);
        let key = ctx.metadata.idempotency_key.as_deref();
        if let Some(reserved) = ctx
            .metadata
            .user
            .keys()
            .find(|k| k.starts_with(crate::envelope::RESERVED_PREFIX))
        {
            return Err(CommandError::Failed(Error::Config(format!(
                "metadata key `{reserved}` is reserved: keys starting with `{}` belong to the \
                 framework",
                crate::envelope::RESERVED_PREFIX
            ))));
        }
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let (mut state, version) = match key {
                // The key is looked for in the very read the state is folded from (no cache,
                // no snapshot): a state that includes the first send's events then always
                // shows its key. Checked again after every conflict, since the append that won
                // may be the same command, sent twice at once.
                Some(key) => match self.load_keyed::<A>(id, key).await? {
                    Keyed::Recorded(first) => {
                        tracing::debug!(key, "command already recorded under its idempotency key");
                        return Ok(first);
                    }
                    Keyed::New(state, version) => (state, version),
                },
                None => self.load_state::<A>(id, attempt == 1).await?,
            };
            let events = state.handle(command).map_err(CommandError::Rejected)?;
            if events.is_empty() {
                return Ok(Vec::new());
            }
            let now = crate::envelope::now();
            let mut new_events = Vec::with_capacity(events.len());
            for event in &events {
                new_events.push(NewEvent {
                    event_name: event.event_name().to_owned(),
                    event_version: event.event_version(),
                    payload: event.to_payload()?,
                    metadata: Metadata {
                        event_id: Uuid::new_v4(),
                        correlation_id,
                        causation_id: Some(causation_id),
                        command_id: Some(command_id),
                        idempotency_key: ctx.metadata.idempotency_key.clone(),
                        routing_key: event.routing_key().map(str::to_owned),
                        timestamp: now,
                        user: ctx.metadata.user.clone(),
                    },
                });
            }
            let append =
                tracing::debug_span!("append", events = new_events.len(), version, attempt);
            let appended = self
                .inner
                .store
                .append(A::TYPE, id, ExpectedVersion::Exact(version), new_events)
                .instrument(append)
                .await;
            match appended {
                Ok(committed) => {
                    for event in &events {
                        state.apply(event);
                    }
                    let new_version = version + events.len() as u64;
                    self.after_commit(id, state, version, new_version).await;
                    return Ok(committed);
                }
                Err(e @ Error::Conflict { .. }) => {
                    if let Some(cache) = &self.inner.cache {
                        cache.evict::<A>(id);
                    }
                    let retried = attempt <= self.inner.max_retries;
                    crate::metrics::command_conflict(A::TYPE, retried);
                    if !retried {
                        return Err(CommandError::Conflict {
                            attempts: attempt,
                            source: e,
                        });
                    }
                    self.inner.conflict_retries.fetch_add(1, Ordering::Relaxed);
                    let delay = self.inner.conflict_backoff.spread(attempt - 1);
                    tracing::debug!(attempt, ?delay, "conflict; retrying");
                    if delay.is_zero() {
                        tokio::task::yield_now().await;
                    } else {
                        tokio::time::sleep(delay).await;
                    }
                }
                Err(e) => return Err(CommandError::Failed(e)),
            }
        }
    }

    async fn after_commit<A: Aggregate>(&self, id: &str, state: A, old: u64, new: u64) {
        if let Some((snapshots, every)) = &self.inner.snapshots {
            if old / every != new / every {
                match serde_json::to_vec(&state) {
                    Ok(bytes) => {
                        let snapshot = Snapshot {
                            aggregate_type: A::TYPE.to_owned(),
                            stream_id: id.to_owned(),
                            version: new,
                            state: Bytes::from(bytes),
                        };
                        // The command has committed: a failed snapshot only costs a longer load.
                        if let Err(e) = snapshots.save(snapshot).await {
                            tracing::warn!(error = %e, stream = id, "saving a snapshot failed");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, stream = id, "serializing a snapshot failed")
                    }
                }
            }
        }
        if let Some(cache) = &self.inner.cache {
            cache.put(id, state, new);
        }
    }
}
