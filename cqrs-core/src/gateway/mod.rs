//! The command gateway: load, decide, append, retry on conflict.

use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use foldhash::fast::RandomState;
use parking_lot::Mutex;
use tracing::Instrument;
use uuid::Uuid;

use crate::aggregate::{Aggregate, Command};
use crate::envelope::{Envelope, ExpectedVersion, Metadata, NewEvent};
use crate::error::{CommandError, Error, Result};
use crate::event::EventSet;
use crate::store::{EventStore, Snapshot, SnapshotStore};

/// Ids and key/values that travel with a command into the events it causes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandMetadata {
    /// The command's id; the events' causation id. A new one when `None`.
    pub command_id: Option<Uuid>,
    /// The correlation id of the flow the command belongs to; the command id when `None`.
    pub correlation_id: Option<Uuid>,
    /// Free key/values copied into every event's metadata.
    pub user: BTreeMap<String, String>,
}

impl CommandMetadata {
    /// Continues the flow of an event: same correlation id.
    pub fn caused_by(envelope: &Envelope) -> Self {
        CommandMetadata {
            command_id: None,
            correlation_id: Some(envelope.metadata.correlation_id),
            user: envelope.metadata.user.clone(),
        }
    }

    /// Adds a key/value.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.user.insert(key.into(), value.into());
        self
    }
}

/// What a middleware sees of a command.
#[derive(Debug, Clone)]
pub struct CommandContext {
    /// The command's Rust name.
    pub command_name: &'static str,
    /// The aggregate type it goes to.
    pub aggregate_type: &'static str,
    /// The aggregate instance it targets.
    pub aggregate_id: String,
    /// Its id, correlation id and key/values (a middleware may add some).
    pub metadata: CommandMetadata,
}

/// How a command ended, as a middleware sees it.
#[derive(Debug)]
pub enum Outcome<'a> {
    /// Committed these events (none when the aggregate decided nothing happens).
    Committed(&'a [Envelope]),
    /// Refused: by the aggregate, a middleware, or conflicts; the message says which.
    Refused(String),
    /// Failed in the framework or a backend.
    Failed(&'a Error),
}

/// A hook around every command: validation, authorization, auditing, metrics.
#[async_trait]
pub trait Middleware: Send + Sync {
    /// Runs before the aggregate is loaded; an `Err` refuses the command with that message.
    ///
    /// # Errors
    /// The reason to refuse the command.
    async fn before(&self, ctx: &mut CommandContext) -> std::result::Result<(), String> {
        let _ = ctx;
        Ok(())
    }

    /// Runs after the command ended.
    async fn after(&self, ctx: &CommandContext, outcome: &Outcome<'_>) {
        let _ = (ctx, outcome);
    }
}

#[async_trait]
impl<T: Middleware + ?Sized> Middleware for Arc<T> {
    async fn before(&self, ctx: &mut CommandContext) -> std::result::Result<(), String> {
        (**self).before(ctx).await
    }
    async fn after(&self, ctx: &CommandContext, outcome: &Outcome<'_>) {
        (**self).after(ctx, outcome).await
    }
}

#[async_trait]
impl<T: Middleware + ?Sized> Middleware for Box<T> {
    async fn before(&self, ctx: &mut CommandContext) -> std::result::Result<(), String> {
        (**self).before(ctx).await
    }
    async fn after(&self, ctx: &CommandContext, outcome: &Outcome<'_>) {
        (**self).after(ctx, outcome).await
    }
}

type CacheEntry = (u64, Box<dyn Any + Send + Sync>);

/// One shard of the state cache: states by aggregate type, then by stream id, so a lookup by
/// `&str` allocates nothing.
#[derive(Default)]
struct Shard {
    by_type: HashMap<TypeId, HashMap<String, CacheEntry, RandomState>, RandomState>,
    len: usize,
}

/// A shard's lock on cache lines of its own, so threads working on different shards do not
/// contend for one line.
#[repr(align(128))]
struct Padded(Mutex<Shard>);

/// A bounded, sharded cache of aggregate states by stream. A stale entry is harmless: the
/// append's expected version catches it and the gateway reloads.
struct StateCache {
    shards: Vec<Padded>,
    per_shard: usize,
    hasher: RandomState,
}

impl StateCache {
    fn new(capacity: usize) -> Self {
        let shards = 16;
        StateCache {
            shards: (0..shards)
                .map(|_| Padded(Mutex::new(Shard::default())))
                .collect(),
            per_shard: capacity.div_ceil(shards).max(1),
            hasher: Default::default(),
        }
    }

    fn shard<A: Aggregate>(&self, id: &str) -> &Mutex<Shard> {
        let hash = self.hasher.hash_one((TypeId::of::<A>(), id));
        &self.shards[(hash as usize) % self.shards.len()].0
    }

    fn get<A: Aggregate>(&self, id: &str) -> Option<(A, u64)> {
        let shard = self.shard::<A>(id).lock();
        let (version, state) = shard.by_type.get(&TypeId::of::<A>())?.get(id)?;
        state.downcast_ref::<A>().map(|a| (a.clone(), *version))
    }

    fn put<A: Aggregate>(&self, id: &str, state: A, version: u64) {
        let mut shard = self.shard::<A>(id).lock();
        let Shard { by_type, len } = &mut *shard;
        let type_id = TypeId::of::<A>();
        if let Some(entry) = by_type.get_mut(&type_id).and_then(|s| s.get_mut(id)) {
            entry.0 = version;
            match entry.1.downcast_mut::<A>() {
                Some(slot) => *slot = state,
                None => entry.1 = Box::new(state),
            }
            return;
        }
        if *len >= self.per_shard {
            // Evict an arbitrary entry: the cache only saves reads, never decides.
            if let Some(states) = by_type.values_mut().find(|s| !s.is_empty()) {
                if let Some(victim) = states.keys().next().cloned() {
                    states.remove(&victim);
                    *len -= 1;
                }
            }
        }
        by_type
            .entry(type_id)
            .or_default()
            .insert(id.to_owned(), (version, Box::new(state)));
        *len += 1;
    }

    fn evict<A: Aggregate>(&self, id: &str) {
        let mut shard = self.shard::<A>(id).lock();
        let Shard { by_type, len } = &mut *shard;
        if let Some(states) = by_type.get_mut(&TypeId::of::<A>()) {
            if states.remove(id).is_some() {
                *len -= 1;
            }
        }
    }
}

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
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.inner.max_retries = retries;
        self
    }

    /// Saves a snapshot every `every` events of a stream, and loads from the latest one.
    pub fn snapshots(mut self, store: Arc<dyn SnapshotStore>, every: u64) -> Self {
        self.inner.snapshots = Some((store, every.max(1)));
        self
    }

    /// Keeps up to `capacity` aggregate states in memory between commands (default 10 000;
    /// 0 turns it off).
    pub fn cache(mut self, capacity: usize) -> Self {
        self.inner.cache = (capacity > 0).then(|| StateCache::new(capacity));
        self
    }

    /// Adds a middleware; they run in the order added.
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
                middleware: Vec::new(),
                cache: Some(StateCache::new(10_000)),
            },
        }
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
        let mut ctx = CommandContext {
            command_name: command.command_name(),
            aggregate_type: C::Aggregate::TYPE,
            aggregate_id: command.aggregate_id().to_owned(),
            metadata,
        };
        let span = tracing::info_span!(
            "command",
            command = ctx.command_name,
            aggregate = ctx.aggregate_type,
            id = %ctx.aggregate_id,
        );
        async move {
            for mw in &self.inner.middleware {
                if let Err(reason) = mw.before(&mut ctx).await {
                    self.after(&ctx, &Outcome::Refused(reason.clone())).await;
                    return Err(CommandError::Refused(reason));
                }
            }
            let outcome = self.dispatch::<C::Aggregate>(&command, &ctx).await;
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
        .await
    }

    async fn after(&self, ctx: &CommandContext, outcome: &Outcome<'_>) {
        for mw in &self.inner.middleware {
            mw.after(ctx, outcome).await;
        }
    }

    async fn dispatch<A: Aggregate>(
        &self,
        command: &A::Command,
        ctx: &CommandContext,
    ) -> Result<Vec<Envelope>, CommandError<A::Error>> {
        let id = ctx.aggregate_id.as_str();
        let command_id = ctx.metadata.command_id.unwrap_or_else(Uuid::new_v4);
        let correlation_id = ctx.metadata.correlation_id.unwrap_or(command_id);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let (mut state, version) = self.load_state::<A>(id, attempt == 1).await?;
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
                        causation_id: Some(command_id),
                        timestamp: now,
                        user: ctx.metadata.user.clone(),
                    },
                });
            }
            let appended = self
                .inner
                .store
                .append(A::TYPE, id, ExpectedVersion::Exact(version), new_events)
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
                    if attempt > self.inner.max_retries {
                        return Err(CommandError::Conflict {
                            attempts: attempt,
                            source: e,
                        });
                    }
                    tracing::debug!(attempt, "conflict; retrying");
                    tokio::task::yield_now().await;
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

    async fn load_state<A: Aggregate>(&self, id: &str, use_cache: bool) -> Result<(A, u64)> {
        if use_cache {
            if let Some(hit) = self.inner.cache.as_ref().and_then(|c| c.get::<A>(id)) {
                return Ok(hit);
            }
        }
        self.load::<A>(id).await
    }

    /// Loads an aggregate's current state and version from the latest snapshot and the events
    /// after it.
    ///
    /// # Errors
    /// A store error, or a decode error naming the stored event that does not fit.
    pub async fn load<A: Aggregate>(&self, id: &str) -> Result<(A, u64)> {
        let mut state = A::default();
        let mut version = 0;
        if let Some((snapshots, _)) = &self.inner.snapshots {
            if let Some(snapshot) = snapshots.load(A::TYPE, id).await? {
                match serde_json::from_slice::<A>(&snapshot.state) {
                    Ok(s) => {
                        state = s;
                        version = snapshot.version;
                    }
                    // A snapshot is disposable: an old shape means a full replay, not a failure.
                    Err(e) => {
                        tracing::warn!(error = %e, stream = id, "ignoring unreadable snapshot")
                    }
                }
            }
        }
        for envelope in self.inner.store.read_stream(id, version).await? {
            let Some(event) = A::Event::decode(&envelope)? else {
                return Err(Error::UnknownEvent {
                    event: envelope.event_ref(),
                });
            };
            state.apply(&event);
            version = envelope.version;
        }
        Ok((state, version))
    }
}
