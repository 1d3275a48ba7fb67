//! The backends a configuration names, connected once and shared.

use std::sync::Arc;

use cqrs_core::app::{AppBuilder, Backend, Wiring};
use cqrs_core::memory::{Embedded, MemoryViewStore};
use cqrs_core::{App, Result};
use tokio::sync::OnceCell;

use crate::{Bus, Connections};

/// The backends of one process: each server the [`Connections`] name, connected on first use
/// and then shared by every app built from them, and one set of embedded backends for the
/// parts they name no server for (so the services of one process see one embedded store and
/// one embedded bus).
pub struct Backends {
    connections: Connections,
    groups: Vec<String>,
    embedded: Embedded,
    store: OnceCell<Store>,
    views: OnceCell<Views>,
    bus: OnceCell<Bus>,
}

impl Backends {
    /// The backends these connections name. Connects to nothing yet.
    pub fn new(connections: Connections) -> Self {
        let partitions = usize::try_from(connections.partitions).unwrap_or(1);
        Backends {
            connections,
            groups: Vec::new(),
            embedded: Embedded::new(partitions),
            store: OnceCell::new(),
            views: OnceCell::new(),
            bus: OnceCell::new(),
        }
    }

    /// Consumer groups that must exist before the first service of a deployment starts (names
    /// without the prefix: `group("catalog")` is given as `"catalog"`). RabbitMQ, Redis
    /// Streams and SQS keep for a group only what was published after the group was first
    /// declared; declared up front by every service, a group misses nothing published before
    /// its own service first ran. Kafka and the embedded bus keep the log and need none.
    #[must_use]
    pub fn groups(mut self, names: impl IntoIterator<Item = impl AsRef<str>>) -> Self {
        let names = names.into_iter().map(|n| self.group(n.as_ref()));
        self.groups = names.collect();
        self
    }

    /// The connections.
    pub fn connections(&self) -> &Connections {
        &self.connections
    }

    /// The embedded backends the parts without a server run on.
    pub fn embedded(&self) -> &Embedded {
        &self.embedded
    }

    /// A consumer group's full name: the configured prefix, then `name`.
    pub fn group(&self, name: &str) -> String {
        format!("{}{name}", self.connections.topic_prefix())
    }

    /// The event store with its snapshots, checkpoints and views: PostgreSQL at
    /// `database_url` (connected and migrated on first use), else the embedded ones. Views
    /// given after it ([`views`](Self::views)) replace its own.
    ///
    /// # Errors
    /// The server cannot be reached or migrated; [`Error::Config`](cqrs_core::Error::Config)
    /// when the build has no `postgres` feature.
    pub async fn store(&self) -> Result<Store> {
        let connect = || async {
            let Some(url) = &self.connections.database_url else {
                return Ok(Store(StoreKind::Embedded(self.embedded.clone())));
            };
            postgres(url, self.connections.schema()).await
        };
        Ok(self.store.get_or_try_init(connect).await?.clone())
    }

    /// The views: MongoDB at `mongodb_uri`, else the embedded view store. Give them after the
    /// [`store`](Self::store), which brings views of its own: `.with(store).with(views)`.
    ///
    /// # Errors
    /// The server cannot be reached; [`Error::Config`](cqrs_core::Error::Config) when the build
    /// has no `mongo` feature.
    pub async fn views(&self) -> Result<Views> {
        let connect = || async {
            let Some(uri) = &self.connections.mongodb_uri else {
                return Ok(Views(ViewsKind::Embedded(self.embedded.views.clone())));
            };
            mongo(uri, self.connections.mongo_database()).await
        };
        Ok(self.views.get_or_try_init(connect).await?.clone())
    }

    /// The bus the connections choose ([`Connections::bus_kind`]), created on first use.
    ///
    /// # Errors
    /// [`Error::Config`](cqrs_core::Error::Config) when the chosen bus has no address, a
    /// setting it refuses, or no feature in this build; a backend error.
    pub async fn bus(&self) -> Result<Bus> {
        let connect = || crate::bus::connect(&self.connections, &self.groups, &self.embedded);
        Ok(self.bus.get_or_try_init(connect).await?.clone())
    }

    /// A builder with every part the connections name: the store, the views and the bus.
    ///
    /// # Errors
    /// As [`store`](Self::store), [`views`](Self::views) and [`bus`](Self::bus).
    pub async fn app(&self) -> Result<AppBuilder> {
        let app = App::builder().with(self.store().await?);
        Ok(app.with(self.views().await?).with(self.bus().await?))
    }
}

/// An event store with its snapshots, relay checkpoints and views, as a [`Backend`].
#[derive(Clone)]
pub struct Store(StoreKind);

#[derive(Clone)]
enum StoreKind {
    Embedded(Embedded),
    #[cfg(feature = "postgres")]
    Postgres(cqrs_postgres::Postgres),
}

impl Store {
    /// Whether the store is the embedded one (it lives as long as the process).
    pub fn is_embedded(&self) -> bool {
        matches!(self.0, StoreKind::Embedded(_))
    }
}

impl Backend for Store {
    fn install(self, wiring: &mut Wiring) {
        match self.0 {
            StoreKind::Embedded(embedded) => {
                embedded.store.install(wiring);
                embedded.checkpoints.install(wiring);
                embedded.views.install(wiring);
            }
            #[cfg(feature = "postgres")]
            StoreKind::Postgres(pg) => pg.install(wiring),
        }
    }
}

/// A view store, as a [`Backend`].
#[derive(Clone)]
pub struct Views(ViewsKind);

#[derive(Clone)]
enum ViewsKind {
    Embedded(Arc<MemoryViewStore>),
    #[cfg(feature = "mongo")]
    Mongo(cqrs_mongo::Mongo),
}

impl Views {
    /// Whether the views are the embedded ones (they live as long as the process).
    pub fn is_embedded(&self) -> bool {
        matches!(self.0, ViewsKind::Embedded(_))
    }
}

impl Backend for Views {
    fn install(self, wiring: &mut Wiring) {
        match self.0 {
            ViewsKind::Embedded(views) => views.install(wiring),
            #[cfg(feature = "mongo")]
            ViewsKind::Mongo(mongo) => mongo.install(wiring),
        }
    }
}

#[cfg(feature = "postgres")]
async fn postgres(url: &str, schema: &str) -> Result<Store> {
    // A bad name is refused before anything connects.
    cqrs_postgres::validate_schema_name(schema)?;
    let pg = cqrs_postgres::Postgres::connect(url, schema).await?;
    pg.migrate().await?;
    Ok(Store(StoreKind::Postgres(pg)))
}

#[cfg(not(feature = "postgres"))]
async fn postgres(_url: &str, _schema: &str) -> Result<Store> {
    Err(crate::not_built("a PostgreSQL event store", "postgres"))
}

#[cfg(feature = "mongo")]
async fn mongo(uri: &str, database: &str) -> Result<Views> {
    let mongo = cqrs_mongo::Mongo::connect(uri, database, "").await?;
    Ok(Views(ViewsKind::Mongo(mongo)))
}

#[cfg(not(feature = "mongo"))]
async fn mongo(_uri: &str, _database: &str) -> Result<Views> {
    Err(crate::not_built("a MongoDB view store", "mongo"))
}
