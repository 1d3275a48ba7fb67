//! One builder wires a whole service: the stores, the bus, the gateway, the projections and
//! the relays; one handle runs it.
//!
//! ```
//! # use cqrs_core::{app::App, memory::MemoryEventBus, BoxError, Envelope, Projection};
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)] pub struct Opened { pub owner: String }
//! # cqrs_core::event!(Opened, "doc.app.Opened");
//! # #[derive(Default)] struct Owners;
//! # impl Projection for Owners {
//! #     const NAME: &'static str = "owners"; type Event = Opened; type View = String;
//! #     fn view_id(&self, _: &Opened, e: &Envelope) -> String { e.stream_id.clone() }
//! #     fn apply(&self, v: &mut Option<String>, e: &Opened, _: &Envelope) -> Result<(), BoxError> {
//! #         *v = Some(e.owner.clone()); Ok(())
//! #     }
//! # }
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let app = App::builder()
//!     // .with(postgres) .with(mongo) .with(kafka): one line per backend
//!     .with(MemoryEventBus::new(3))
//!     .relay("relay", |r| r)
//!     .projection(Owners, |p| p.from_bus("owners", ["account"]))
//!     .build()?;
//! let owners = app.read_model::<Owners>()?;
//! # let _ = owners;
//! app.shutdown().await?;
//! # Ok(())
//! # }
//! ```

mod health;
mod ops;
mod parts;
mod read_models;
mod wiring;

use std::collections::HashSet;
use std::time::Duration;

pub use self::health::{Health, ProcessorHealth, RelayHealth, Status};
pub use self::ops::Ops;
use self::ops::{ProcessorWatch, RelayWatch};
pub use self::parts::{ProjectionOptions, RelayOptions};
pub use self::wiring::{Backend, Views, Wiring};

use self::parts::{PendingProjection, Source};
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::gateway::{CommandGateway, GatewayBuilder};
use crate::processor::{ProcessorHandle, RetryReport};
use crate::projection::Projection;
use crate::relay::RelayHandle;
use crate::store::EventStore;

/// A running service: its command gateway, its read models, its health, its shutdown.
pub struct App {
    gateway: CommandGateway,
    wiring: Wiring,
    ops: Ops,
    relays: Vec<RelayHandle>,
    relay_names: Vec<String>,
    relay_types: Vec<Option<Vec<String>>>,
    processors: Vec<Running>,
}

struct Running {
    name: String,
    projection: std::any::TypeId,
    source: Source,
    handle: ProcessorHandle,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("relays", &self.relay_names)
            .field(
                "processors",
                &self.processors.iter().map(|p| &p.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Builds an [`App`]. See the [module docs](self).
pub struct AppBuilder {
    wiring: Wiring,
    gateway: Box<dyn FnOnce(GatewayBuilder) -> GatewayBuilder + Send>,
    snapshot_every: u64,
    projections: Vec<PendingProjection>,
    relays: Vec<RelayOptions>,
}

impl std::fmt::Debug for AppBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppBuilder")
            .field("wiring", &self.wiring)
            .field("projections", &self.projections.len())
            .field("relays", &self.relays)
            .finish_non_exhaustive()
    }
}

impl App {
    /// Starts wiring a service on the embedded default: the in-memory event store, checkpoints
    /// and views, no bus. Each [`with`](AppBuilder::with) replaces what a backend provides.
    pub fn builder() -> AppBuilder {
        AppBuilder {
            wiring: Wiring::default(),
            gateway: Box::new(|g| g),
            snapshot_every: 100,
            projections: Vec::new(),
            relays: Vec::new(),
        }
    }
}

impl AppBuilder {
    /// Hands the builder a backend's parts: `.with(postgres)` gives the event store,
    /// snapshots, checkpoints and views, `.with(mongo)` the views, `.with(bus)` the bus. The
    /// order does not matter where one backend gives a part as its own and another only
    /// offers it (PostgreSQL's views beside MongoDB's); two backends giving the same part as
    /// their own leave the later one.
    #[must_use]
    pub fn with(mut self, backend: impl Backend) -> Self {
        backend.install(&mut self.wiring);
        self
    }

    /// Checks, before anything starts, that every stored event of these aggregate types has a
    /// registered type that decodes it (see
    /// [`Registry::check_store_for`](crate::registry::Registry::check_store_for)): a build
    /// older than its data refuses to start rather than dead-letter or stop later.
    ///
    /// # Errors
    /// [`Error::UnknownEvent`] naming the first unknown name; a
    /// backend error.
    pub async fn check_store_for(self, aggregate_types: &[&str]) -> Result<Self> {
        crate::registry::registry()
            .check_store_for(self.wiring.store.as_ref(), aggregate_types)
            .await?;
        Ok(self)
    }

    /// Tunes the command gateway (retries, cache, middleware). Calls compose, in order: a
    /// second call adds to what the first set (its middleware after the first's), it does not
    /// replace it.
    #[must_use]
    pub fn gateway(
        mut self,
        configure: impl FnOnce(GatewayBuilder) -> GatewayBuilder + Send + 'static,
    ) -> Self {
        let earlier = std::mem::replace(&mut self.gateway, Box::new(|g| g));
        self.gateway = Box::new(move |g| configure(earlier(g)));
        self
    }

    /// Takes a snapshot every `every` events of a stream when a snapshot store was given
    /// (default 100).
    #[must_use]
    pub fn snapshot_every(mut self, every: u64) -> Self {
        self.snapshot_every = every.max(1);
        self
    }

    /// Runs a projection: fed from the store's log unless `options` says
    /// [`from_bus`](ProjectionOptions::from_bus).
    #[must_use]
    pub fn projection<P: Projection>(
        mut self,
        projection: P,
        options: impl FnOnce(ProjectionOptions) -> ProjectionOptions,
    ) -> Self {
        let options = options(ProjectionOptions::new(P::NAME));
        self.projections
            .push(PendingProjection::new(projection, options));
        self
    }

    /// Runs a relay publishing the store's global log to the bus under checkpoint `name`.
    #[must_use]
    pub fn relay(
        mut self,
        name: impl Into<String>,
        options: impl FnOnce(RelayOptions) -> RelayOptions,
    ) -> Self {
        self.relays.push(options(RelayOptions::new(&name.into())));
        self
    }

    /// Checks the wiring, then starts every relay and processor.
    ///
    /// # Errors
    /// [`Error::Config`] for a mis-wired service, nothing started: a bus-fed projection or a
    /// relay without a bus, a relay over a durable store with its checkpoint in memory (or a
    /// durable checkpoint over a store in memory), two
    /// projections (or two relays) under one name, a relay whose `only` list is empty.
    pub fn build(mut self) -> Result<App> {
        self.wiring.settle();
        self.check()?;
        let AppBuilder {
            wiring,
            gateway,
            snapshot_every,
            projections,
            relays,
        } = self;
        let mut builder = CommandGateway::builder(wiring.store.clone());
        if let Some(snapshots) = &wiring.snapshots {
            builder = builder.snapshots(snapshots.clone(), snapshot_every);
        }
        let gateway = gateway(builder).build();
        let mut app = App {
            gateway,
            relays: Vec::new(),
            relay_names: Vec::new(),
            relay_types: Vec::new(),
            processors: Vec::new(),
            ops: Ops {
                wiring: wiring.clone(),
                relays: Vec::new(),
                processors: Vec::new(),
            },
            wiring,
        };
        for relay in relays {
            let handle = relay.start(&app.wiring)?;
            app.ops.relays.push(RelayWatch {
                name: relay.name.clone(),
                breaker: handle.watch_breaker(),
                position: handle.watch_position(),
            });
            app.relays.push(handle);
            app.relay_names.push(relay.name.clone());
            app.relay_types.push(relay.only.clone());
        }
        for pending in projections {
            let started = (pending.start)(&pending.options, &app.wiring)?;
            app.ops.processors.push(ProcessorWatch {
                name: pending.options.name.clone(),
                source: pending.options.source.clone(),
                position: started.handle.watch_position(),
                lag: started.handle.watch_lag(),
                ended: started.handle.watch_ended(),
                retry: started.retry,
                segments: started.handle.watch_segments(),
            });
            app.processors.push(Running {
                name: pending.options.name.clone(),
                projection: pending.projection,
                source: pending.options.source.clone(),
                handle: started.handle,
            });
        }
        Ok(app)
    }

    /// Every wiring rule, checked before anything starts.
    fn check(&self) -> Result<()> {
        let mut names = HashSet::new();
        for p in &self.projections {
            if !names.insert(p.options.name.as_str()) {
                return Err(Error::Config(format!(
                    "two projections are named `{}`: they would share views and checkpoint \
                     (rename one with `.named(..)`)",
                    p.options.name
                )));
            }
            if matches!(p.options.source, Source::Bus { .. }) {
                self.wiring
                    .bus_for(&format!("projection `{}`", p.options.name))?;
            }
        }
        let mut relays = HashSet::new();
        for r in &self.relays {
            if !relays.insert(r.name.as_str()) {
                return Err(Error::Config(format!(
                    "two relays are named `{}`: they would share one checkpoint",
                    r.name
                )));
            }
            self.wiring.bus_for(&format!("relay `{}`", r.name))?;
            if self.wiring.durable_store && !self.wiring.durable_checkpoints {
                return Err(Error::Config(format!(
                    "relay `{}` reads a store that outlives the process but would keep its \
                     checkpoint in memory, publishing the whole log again after every \
                     restart: hand the app a checkpoint store",
                    r.name
                )));
            }
            if !self.wiring.durable_store && self.wiring.durable_checkpoints {
                return Err(Error::Config(format!(
                    "relay `{}` would keep a durable checkpoint of a log in memory: after a \
                     restart the new log starts again at 1 and the relay skips it up to the \
                     old checkpoint; give both an event store and checkpoints that outlive the \
                     process, or neither",
                    r.name
                )));
            }
            if r.only.as_ref().is_some_and(Vec::is_empty) {
                return Err(crate::relay::empty_only(&r.name));
            }
        }
        Ok(())
    }
}

impl App {
    /// The command gateway.
    pub fn gateway(&self) -> &CommandGateway {
        &self.gateway
    }

    /// The event store.
    pub fn event_store(&self) -> &std::sync::Arc<dyn EventStore> {
        &self.wiring.store
    }

    /// The read-model store's three halves (views, queries, dead letters).
    pub fn views(&self) -> &Views {
        &self.wiring.views
    }

    /// What an operator sees and can do, shareable apart from the app: health, dead letters
    /// and their retry.
    pub fn ops(&self) -> Ops {
        self.ops.clone()
    }

    /// The health report (see [`Ops::health`]).
    pub async fn health(&self) -> Health {
        self.ops.health().await
    }

    /// Applies a projection's dead letters again (see [`Ops::retry_dead_letters`]).
    ///
    /// # Errors
    /// [`Error::Config`] for an unknown projection; a backend error.
    pub async fn retry_dead_letters(
        &self,
        projection: &str,
        event: Option<uuid::Uuid>,
    ) -> Result<RetryReport> {
        self.ops.retry_dead_letters(projection, event).await
    }

    /// Waits until every relay and processor has handled these events (the ones `send`
    /// returned, say): each relay that publishes them has published them, and each processor
    /// whose feed carries them has committed them.
    ///
    /// # Errors
    /// [`Error::Shutdown`] when one ended first, [`Error::Backend`] on timeout.
    pub async fn wait_for(&mut self, events: &[Envelope], timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
        for (relay, only) in self.relays.iter_mut().zip(&self.relay_types) {
            let last = events
                .iter()
                .filter(|e| only.as_ref().is_none_or(|t| t.contains(&e.aggregate_type)))
                .map(|e| e.position)
                .max();
            if let Some(last) = last {
                relay.wait_for(last, left()).await?;
            }
        }
        for p in &mut self.processors {
            let carried: Vec<Envelope> = match &p.source {
                Source::Store => events.to_vec(),
                Source::Bus { types, .. } => events
                    .iter()
                    .filter(|e| types.contains(&e.aggregate_type))
                    .cloned()
                    .collect(),
            };
            if !carried.is_empty() {
                p.handle.wait_for_events(&carried, left()).await?;
            }
        }
        Ok(())
    }

    /// Waits until everything committed to the store so far is handled (see
    /// [`wait_for`](Self::wait_for)). It reads the global log up to the head: for tests,
    /// demos and small stores. A bus-fed processor counts only what it committed since this
    /// app started (its group does not get older events again), so on a store that outlives
    /// the process, wait for the events sent since instead.
    ///
    /// # Errors
    /// As [`wait_for`](Self::wait_for), or a store error.
    pub async fn caught_up(&mut self, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        let head = self.wiring.store.head().await?;
        let mut events = Vec::new();
        let mut after = 0;
        while after < head {
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Backend {
                    backend: "app",
                    message: format!(
                        "the log did not become readable up to its head {head} within \
                         {timeout:?} (at {after}): a transaction that took a smaller position \
                         is still open"
                    ),
                    source: None,
                });
            }
            let page = self.wiring.store.read_all(after, 10_000).await?;
            let Some(last) = page.last().map(|e| e.position) else {
                self.wiring
                    .store
                    .wait_for_events(after, Duration::from_millis(50))
                    .await?;
                continue;
            };
            after = last;
            events.extend(page.into_iter().filter(|e| e.position <= head));
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.wait_for(&events, left).await
    }

    /// Stops the service gracefully: the relays first, then the processors, each after the
    /// unit of work under way. A relay stopped mid-publish has not moved its checkpoint past
    /// that batch, so the batch goes out again after a restart (subscribers skip what they
    /// applied). Returns the first error any of them had ended with. An app dropped without
    /// this is stopped at once, as a crash would stop it.
    ///
    /// # Errors
    /// The first error a relay or processor ended with.
    pub async fn shutdown(mut self) -> Result<()> {
        let mut first: Option<Error> = None;
        let relays = std::mem::take(&mut self.relays);
        let names = std::mem::take(&mut self.relay_names);
        let processors = std::mem::take(&mut self.processors);
        for (relay, name) in relays.into_iter().zip(names) {
            if let Err(e) = relay.stop().await {
                tracing::error!(relay = %name, error = %e, "relay had ended with an error");
                first.get_or_insert(e);
            }
        }
        for p in processors {
            if let Err(e) = p.handle.stop().await {
                tracing::error!(projection = %p.name, error = %e, "processor had ended with an error");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for App {
    /// What [`shutdown`](App::shutdown) did not stop is killed: an app is never left running
    /// unowned (a build that failed half-way, an app dropped by mistake).
    fn drop(&mut self) {
        for relay in self.relays.drain(..) {
            relay.abort();
        }
        for p in self.processors.drain(..) {
            p.handle.abort();
        }
    }
}
