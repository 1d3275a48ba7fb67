#![doc = include_str!("../README.md")]

mod checkpoint;
mod commit;
mod fencing;
mod names;
mod segments;
mod view;

use std::sync::Arc;
use std::time::Duration;

use cqrs_core::{Error, Result};
use mongodb::bson::{doc, Document};
use mongodb::options::ClientOptions;
use mongodb::Client;

pub use crate::checkpoint::MongoCheckpointStore;
pub use crate::names::{validate_collection_prefix, validate_database_name};
pub use crate::view::MongoViewStore;

/// How a unit of work reaches MongoDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitMode {
    /// Views, dead letters and checkpoint in one multi-document transaction (replica sets and
    /// sharded clusters).
    Transaction,
    /// Step by step without a transaction, in `cqrs_core::view::COMMIT_ORDER`: dead letters,
    /// views, resolved dead letters, checkpoint, each write idempotent. Every view records
    /// what it has applied, so a batch written twice changes nothing, and no crash between
    /// two steps loses a dead letter; a retried dead letter is applied at least once
    /// (standalone servers).
    Idempotent,
}

/// A MongoDB database and the prefix of the framework's collections. Cheap to clone.
///
/// Its `Debug` output never shows the connection string (it may hold a password).
#[derive(Clone)]
pub struct Mongo {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) client: Client,
    pub(crate) db: mongodb::Database,
    pub(crate) prefix: String,
    pub(crate) mode: CommitMode,
    /// The sessions of the segment claims held (see `fencing`).
    pub(crate) sessions: fencing::Sessions,
}

impl std::fmt::Debug for Mongo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mongo")
            .field("database", &self.inner.db.name())
            .field("prefix", &self.inner.prefix)
            .field("mode", &self.inner.mode)
            .finish()
    }
}

pub(crate) fn backend(what: &str, e: mongodb::error::Error) -> Error {
    Error::backend("mongo", what, Driver(e))
}

/// At connect: a login the server refuses (`AuthenticationFailed`, 18, also when the driver
/// wraps it in its authentication error) or a missing privilege (`Unauthorized`, 13) is a
/// configuration error, so a service with wrong credentials fails at once. Later the same
/// answers stay backend errors, retried: a user being changed or a node stepping down refuses
/// for a while, and a processor must not end for it.
fn at_connect(what: &str, e: mongodb::error::Error) -> Error {
    if refused(&e) {
        return Error::Config(format!("MongoDB refused {what}: {}", Driver(e)));
    }
    backend(what, e)
}

fn refused(e: &mongodb::error::Error) -> bool {
    use mongodb::error::ErrorKind;
    let code = |e: &mongodb::error::Error| match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        _ => None,
    };
    match e.kind.as_ref() {
        // The driver's authentication error carries the server's answer as its source.
        ErrorKind::Authentication { .. } => std::error::Error::source(e)
            .and_then(|s| {
                // The driver keeps its source boxed.
                s.downcast_ref::<Box<mongodb::error::Error>>()
                    .map(AsRef::as_ref)
                    .or_else(|| s.downcast_ref::<mongodb::error::Error>())
            })
            .and_then(code)
            .is_some_and(|c| matches!(c, 13 | 18)),
        ErrorKind::Command(c) => matches!(c.code, 13 | 18),
        _ => false,
    }
}

/// Whether the server refused a write for a duplicate `_id` (or unique key).
pub(crate) fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match e.kind.as_ref() {
        ErrorKind::Command(c) => c.code == 11000,
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == 11000,
        _ => false,
    }
}

/// The driver's error, told in one line: a server's refusal by its code name, code and
/// message (the driver's own `Display` adds the raw server response); the whole error stays
/// the source.
#[derive(Debug)]
struct Driver(mongodb::error::Error);

impl std::fmt::Display for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use mongodb::error::{ErrorKind, WriteFailure};
        match self.0.kind.as_ref() {
            ErrorKind::Command(c) => write!(f, "{} ({}): {}", c.code_name, c.code, c.message),
            ErrorKind::Write(WriteFailure::WriteError(w)) => {
                write!(f, "write error {}: {}", w.code, w.message)
            }
            other => write!(f, "{other}"),
        }
    }
}

impl std::error::Error for Driver {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

impl Mongo {
    /// Connects to `uri` and uses database `database`, with the framework's collections named
    /// `<prefix><name>`. Detects at start-up whether the server supports transactions, and
    /// logs the commit mode it chose.
    ///
    /// # Errors
    /// [`Error::Config`] for a bad URI, database name or prefix; a backend error when the
    /// server does not answer.
    pub async fn connect(uri: &str, database: &str, prefix: &str) -> Result<Self> {
        validate_database_name(database)?;
        validate_collection_prefix(prefix)?;
        let mut options = ClientOptions::parse(uri).await.map_err(|e| {
            // The URI is not repeated: it may carry a password.
            Error::Config(format!("invalid MongoDB connection string: {}", e.kind))
        })?;
        options
            .server_selection_timeout
            .get_or_insert(Duration::from_secs(10));
        options
            .app_name
            .get_or_insert_with(|| "cqrs-mongo".to_owned());
        let client = Client::with_options(options)
            .map_err(|e| Error::Config(format!("MongoDB client options: {}", e.kind)))?;
        let db = client.database(database);
        let hello = db
            .run_command(doc! { "hello": 1 })
            .await
            .map_err(|e| at_connect("connecting to MongoDB", e))?;
        let mode = if hello.get_str("setName").is_ok() || hello.get_str("msg") == Ok("isdbgrid") {
            CommitMode::Transaction
        } else {
            CommitMode::Idempotent
        };
        tracing::info!(database, ?mode, "MongoDB read-model store ready");
        let mongo = Mongo {
            inner: Arc::new(Inner {
                client,
                db,
                prefix: prefix.to_owned(),
                mode,
                sessions: fencing::Sessions::default(),
            }),
        };
        mongo.ensure_indexes().await?;
        Ok(mongo)
    }

    /// The same store, committing in the given mode (e.g. `Idempotent` on a replica set).
    pub fn with_commit_mode(&self, mode: CommitMode) -> Self {
        Mongo {
            inner: Arc::new(Inner {
                client: self.inner.client.clone(),
                db: self.inner.db.clone(),
                prefix: self.inner.prefix.clone(),
                mode,
                sessions: fencing::Sessions::default(),
            }),
        }
    }

    /// How units of work are committed.
    pub fn commit_mode(&self) -> CommitMode {
        self.inner.mode
    }

    /// The database.
    pub fn database(&self) -> &mongodb::Database {
        &self.inner.db
    }

    pub(crate) fn collection(&self, name: &str) -> mongodb::Collection<Document> {
        self.inner
            .db
            .collection(&format!("{}{}", self.inner.prefix, name))
    }

    /// Creates the framework's own indexes; idempotent (run at every start).
    async fn ensure_indexes(&self) -> Result<()> {
        let model = mongodb::IndexModel::builder()
            .keys(doc! { "projection": 1, "position": 1, "event_id": 1 })
            .build();
        self.collection("dead_letters")
            .create_index(model)
            .await
            .map_err(|e| backend("creating the dead-letter index", e))?;
        Ok(())
    }

    /// The read-model store.
    pub fn view_store(&self) -> MongoViewStore {
        MongoViewStore::new(self.clone())
    }

    /// The checkpoint store.
    pub fn checkpoint_store(&self) -> MongoCheckpointStore {
        MongoCheckpointStore::new(self.clone())
    }

    /// Drops the database (for tests and resets).
    ///
    /// # Errors
    /// A backend error.
    pub async fn drop_database(&self) -> Result<()> {
        self.inner
            .db
            .drop()
            .await
            .map_err(|e| backend("dropping the database", e))
    }
}

/// `.with(mongo)` on [`cqrs_core::App::builder`]: the read models, and the relays' checkpoints
/// when the event store outlives the process and no backend gives durable checkpoints
/// (PostgreSQL keeps them beside the events), whatever the order of the `.with(..)` calls.
impl cqrs_core::app::Backend for Mongo {
    fn install(self, wiring: &mut cqrs_core::app::Wiring) {
        wiring
            .view_store(self.view_store())
            .offer_checkpoint_store(self.checkpoint_store());
    }
}
