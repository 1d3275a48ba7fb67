#![doc = include_str!("../README.md")]

mod append;
mod copy;
mod dead_letters;
mod error;
mod group;
mod held;
mod listen;
mod page;
mod schema;
mod segments;
mod session;
mod snapshot;
mod store;
mod view;

use std::sync::Arc;
use std::time::Duration;

use cqrs_core::Result;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

pub use crate::append::PgAppendTx;
pub use crate::group::{GroupCommit, GroupCommitStats};
pub use crate::schema::validate_schema_name;
use crate::schema::Schema;
pub use crate::session::SessionLimits;
pub use crate::snapshot::{PgCheckpointStore, PgSnapshotStore};
pub use crate::store::PgEventStore;
pub use crate::view::PgViewStore;

/// A PostgreSQL database and the schema the framework's tables live in. Cheap to clone.
///
/// Its `Debug` output never shows the connection string (it may hold a password).
#[derive(Clone)]
pub struct Postgres {
    pool: PgPool,
    schema: Arc<Schema>,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("schema", &self.schema.name)
            .field("pool_size", &self.pool.size())
            .finish()
    }
}

impl Postgres {
    /// Connects to `url` (e.g. `postgres://user:password@host:5432/db`) and uses the tables in
    /// `schema`. Call [`migrate`](Self::migrate) once before first use.
    ///
    /// The pool's sessions get the [default limits](SessionLimits::default): a session left
    /// idle in a transaction for 5 s is ended by the server, so a paused or cut-off process
    /// holds the log's readers back for 5 s at most (docs/adr/0018).
    ///
    /// # Errors
    /// [`Error::Config`](cqrs_core::Error::Config) for a bad URL or schema name; a backend
    /// error when the server does not answer.
    pub async fn connect(url: &str, schema: &str) -> Result<Self> {
        Self::connect_with_limits(url, schema, SessionLimits::default()).await
    }

    /// As [`connect`](Self::connect), with these limits on the pool's sessions.
    ///
    /// # Errors
    /// As [`connect`](Self::connect).
    pub async fn connect_with_limits(
        url: &str,
        schema: &str,
        limits: SessionLimits,
    ) -> Result<Self> {
        let options: PgConnectOptions = url.parse().map_err(|e: sqlx::Error| {
            // The URL itself is not repeated: it may carry a password.
            cqrs_core::Error::Config(format!("invalid PostgreSQL connection string: {e}"))
        })?;
        let options = limits.apply(options);
        let pool = PgPoolOptions::new()
            .max_connections(32)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(|e| error::at_start(error::db("connecting to PostgreSQL", e)))?;
        Self::with_pool(pool, schema)
    }

    /// Uses an existing pool, with the tables in `schema`. The pool is the caller's: the
    /// framework sets no [`SessionLimits`] on it; set them on its connect options.
    ///
    /// # Errors
    /// [`Error::Config`](cqrs_core::Error::Config) for an invalid schema name.
    pub fn with_pool(pool: PgPool, schema: &str) -> Result<Self> {
        Ok(Postgres {
            pool,
            schema: Arc::new(Schema::new(schema)?),
        })
    }

    /// The connection pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The schema name.
    pub fn schema(&self) -> &str {
        &self.schema.name
    }

    /// Creates the schema and its tables, or brings them up to date. Safe to run concurrently
    /// and repeatedly.
    ///
    /// # Errors
    /// [`Error::Config`](cqrs_core::Error::Config) when the server refuses the login or a
    /// privilege the migration needs; a backend error.
    pub async fn migrate(&self) -> Result<()> {
        schema::migrate(&self.pool, &self.schema)
            .await
            .map_err(error::at_start)
    }

    /// Drops the schema and everything in it.
    ///
    /// # Errors
    /// A backend error.
    pub async fn drop_schema(&self) -> Result<()> {
        schema::drop(&self.pool, &self.schema).await
    }

    /// The event store.
    pub fn event_store(&self) -> PgEventStore {
        PgEventStore::new(self.pool.clone(), self.schema.clone())
    }

    /// The snapshot store.
    pub fn snapshot_store(&self) -> PgSnapshotStore {
        PgSnapshotStore::new(self.pool.clone(), self.schema.clone())
    }

    /// The checkpoint store (the relay's, and processors' whose read model keeps none).
    pub fn checkpoint_store(&self) -> PgCheckpointStore {
        PgCheckpointStore::new(self.pool.clone(), self.schema.clone())
    }

    /// The read-model store: views, their checkpoints and dead letters, committed in one
    /// transaction.
    pub fn view_store(&self) -> PgViewStore {
        PgViewStore::new(self.pool.clone(), self.schema.clone())
    }
}

/// `.with(postgres)` on [`cqrs_core::App::builder`]: the event store, snapshots, relay
/// checkpoints and read models, all in this schema; the read models only unless another
/// backend gives views of its own (`.with(mongo)`, before or after). Migrate first
/// ([`Postgres::migrate`]).
impl cqrs_core::app::Backend for Postgres {
    fn install(self, wiring: &mut cqrs_core::app::Wiring) {
        wiring
            .event_store(self.event_store())
            .snapshot_store(self.snapshot_store())
            .checkpoint_store(self.checkpoint_store())
            .offer_view_store(self.view_store());
    }
}
