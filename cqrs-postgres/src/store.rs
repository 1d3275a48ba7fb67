//! The PostgreSQL event store.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use cqrs_core::envelope::{Envelope, ExpectedVersion, Metadata, NewEvent};
use cqrs_core::registry::StoredType;
use cqrs_core::{Error, EventReader, Result};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use crate::append::{append_on, PgAppendTx};
use crate::copy::read_log;
use crate::error::{db, to_the_end};
use crate::group::{Committer, GroupCommit, GroupCommitStats};
use crate::listen::Notifier;
use crate::schema::Schema;

/// Positions below this are final: their transactions have all ended.
pub(crate) const VISIBLE: &str = "pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 16";

const COLUMNS: &str = "position, stream_id, aggregate_type, version, event_name, event_version, \
                       payload::text AS payload, event_id, correlation_id, causation_id, \
                       created_at, meta::text AS meta";

/// The event store on PostgreSQL.
///
/// The global log is gap-safe: an event's position is its transaction's id shifted left by 16
/// bits plus its ordinal in the transaction, so positions follow transaction ids; readers
/// return only positions below the oldest running transaction's. A transaction that took a
/// smaller position but commits later is therefore never skipped, and one that rolls back
/// holds readers up only while it runs. Positions are sparse. See
/// `docs/adr/0003-gap-safe-global-log.md`.
#[derive(Clone)]
pub struct PgEventStore {
    pub(crate) pool: PgPool,
    pub(crate) schema: Arc<Schema>,
    pub(crate) notifier: Arc<Notifier>,
    pub(crate) group: Option<Arc<Committer>>,
}

impl std::fmt::Debug for PgEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgEventStore")
            .field("schema", &self.schema.name)
            .field("group_commit", &self.group.is_some())
            .finish()
    }
}

/// Decodes a row selected with [`COLUMNS`] (by index: a name lookup per column costs more
/// than the decoding on a replay).
fn to_envelope(row: &PgRow) -> Result<Envelope> {
    let position: i64 = row.try_get(0).map_err(|e| db("reading an event", e))?;
    let malformed = |reason: String| Error::Malformed {
        what: format!("event row at position {position}"),
        reason,
    };
    let get = |e: sqlx::Error| malformed(e.to_string());
    let version: i64 = row.try_get(3).map_err(get)?;
    let event_version: i32 = row.try_get(5).map_err(get)?;
    let payload: String = row.try_get(6).map_err(get)?;
    let meta: Option<String> = row.try_get(11).map_err(get)?;
    let stored: BTreeMap<String, String> = match meta {
        Some(text) => serde_json::from_str(&text)
            .map_err(|e| malformed(format!("metadata is not a map of strings: {e}")))?,
        None => BTreeMap::new(),
    };
    let parts =
        Metadata::split_stored_map(stored).map_err(|e| malformed(format!("metadata: {e}")))?;
    Ok(Envelope {
        stream_id: row.try_get(1).map_err(get)?,
        aggregate_type: row.try_get(2).map_err(get)?,
        version: u64::try_from(version)
            .map_err(|_| malformed(format!("negative version {version}")))?,
        position: u64::try_from(position).map_err(|_| malformed("negative position".into()))?,
        event_name: row.try_get(4).map_err(get)?,
        event_version: u32::try_from(event_version)
            .map_err(|_| malformed(format!("negative event version {event_version}")))?,
        payload: Bytes::from(payload.into_bytes()),
        metadata: Metadata {
            event_id: row.try_get(7).map_err(get)?,
            correlation_id: row.try_get(8).map_err(get)?,
            causation_id: row.try_get(9).map_err(get)?,
            command_id: parts.command_id,
            idempotency_key: parts.idempotency_key,
            routing_key: parts.routing_key,
            timestamp: row.try_get::<DateTime<Utc>, _>(10).map_err(get)?,
            user: parts.user,
        },
    })
}

pub(crate) fn to_i64(n: u64, what: &str) -> Result<i64> {
    i64::try_from(n).map_err(|_| Error::Config(format!("{what} {n} is out of range")))
}

impl PgEventStore {
    pub(crate) fn new(pool: PgPool, schema: Arc<Schema>) -> Self {
        PgEventStore {
            pool,
            schema,
            notifier: Notifier::new(),
            group: Some(Committer::new(GroupCommit::default())),
        }
    }

    /// Gathers concurrent appends into shared transactions as `config` says (on by default,
    /// with [`GroupCommit::default`]). Stores cloned from this one share its group.
    #[must_use]
    pub fn group_commit(mut self, config: GroupCommit) -> Self {
        self.group = Some(Committer::new(config));
        self
    }

    /// What the group commit has done so far; `None` when it is off.
    pub fn group_commit_stats(&self) -> Option<GroupCommitStats> {
        self.group.as_ref().map(|g| g.stats())
    }

    /// Writes every append in a transaction of its own.
    #[must_use]
    pub fn without_group_commit(mut self) -> Self {
        self.group = None;
        self
    }

    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub(crate) fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Wakes readers tailing the log (in any process) after a commit.
    pub(crate) fn wake_readers(&self) {
        self.notifier.poke(&self.pool, &self.schema.channel);
    }

    /// Appends in a transaction of its own.
    pub(crate) async fn append_alone(
        &self,
        aggregate_type: &str,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Envelope>> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| db("acquiring a connection", e))?;
        append_on(
            &mut conn,
            &self.pool,
            &self.schema,
            aggregate_type,
            stream_id,
            expected,
            events,
        )
        .await
    }

    /// Opens a transaction to append in, so the append commits together with the caller's own
    /// writes (made after it), or not at all.
    ///
    /// # Errors
    /// A backend error.
    pub async fn begin(&self) -> Result<PgAppendTx> {
        // On a task of its own: sqlx's `begin`, cancelled while `BEGIN` is under way, returns
        // the connection to the pool inside a transaction nothing ends. A finished task's
        // transaction that nobody takes is dropped, and so rolled back.
        let pool = self.pool.clone();
        let tx = to_the_end("starting a transaction", async move {
            pool.begin()
                .await
                .map_err(|e| db("starting a transaction", e))
        })
        .await?;
        Ok(PgAppendTx {
            tx,
            store: self.clone(),
        })
    }

    /// Whether events after `after` are readable, and whether some are committed at all
    /// (readable or held back by an older transaction still running).
    async fn after(&self, after: u64) -> Result<(bool, bool)> {
        let row = sqlx::query(self.schema.sql(&format!(
            "SELECT EXISTS (SELECT 1 FROM {{schema}}.events
                             WHERE position > $1 AND position < ({VISIBLE})),
                    EXISTS (SELECT 1 FROM {{schema}}.events WHERE position > $1)"
        )))
        .bind(to_i64(after, "position")?)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| db("checking for new events", e))?;
        let readable = row
            .try_get(0)
            .map_err(|e| db("checking for new events", e))?;
        let committed = row
            .try_get(1)
            .map_err(|e| db("checking for new events", e))?;
        Ok((readable, committed))
    }
}

#[async_trait]
impl EventReader for PgEventStore {
    async fn held_back(&self) -> Result<Option<cqrs_core::store::HeldBack>> {
        crate::held::held_back(&self.pool, &self.schema).await
    }

    async fn read_stream(&self, stream_id: &str, after_version: u64) -> Result<Vec<Envelope>> {
        let rows = sqlx::query(self.schema.sql(&format!(
            "SELECT {COLUMNS} FROM {{schema}}.events
              WHERE stream_id = $1 AND version > $2 ORDER BY version"
        )))
        .bind(stream_id)
        .bind(to_i64(after_version, "version")?)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db(&format!("reading stream `{stream_id}`"), e))?;
        rows.iter().map(to_envelope).collect()
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<Envelope>> {
        // A binary COPY (see `copy.rs`). COPY takes no parameters: both numbers are formatted
        // into the statement, as integers.
        // The page's plan holds without statistics: see `page.rs`.
        let select = crate::page::select(after, limit)?;
        let statement = self
            .schema
            .sql(&format!("COPY ({select}) TO STDOUT (FORMAT binary)"));
        read_log(&self.pool, statement.0).await
    }

    async fn head(&self) -> Result<u64> {
        let head: Option<i64> =
            sqlx::query_scalar(self.schema.sql("SELECT max(position) FROM {schema}.events"))
                .fetch_one(&self.pool)
                .await
                .map_err(|e| db("reading the head of the log", e))?;
        Ok(head.unwrap_or(0) as u64)
    }

    async fn wait_for_events(&self, after: u64, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut bumps = self.notifier.subscribe();
        self.notifier
            .ensure_listening(&self.pool, &self.schema.channel)
            .await?;
        let mut pause = Duration::from_millis(1);
        loop {
            let (readable, committed) = self.after(after).await?;
            if readable {
                return Ok(());
            }
            if committed {
                // Committed but held back by an older transaction (perhaps another schema's,
                // which notifies another channel): check again shortly.
                if tokio::time::timeout_at(deadline, tokio::time::sleep(pause))
                    .await
                    .is_err()
                {
                    return Ok(());
                }
                pause = (pause * 2).min(Duration::from_millis(20));
                continue;
            }
            // Nothing committed yet: sleep until a commit notifies, or the deadline.
            if tokio::time::timeout_at(deadline, bumps.changed())
                .await
                .is_err()
            {
                return Ok(());
            }
            pause = Duration::from_millis(1);
        }
    }

    async fn stored_types(&self) -> Result<Vec<StoredType>> {
        // A scan of the whole log: it may outlast the session's statement limit.
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| db("listing stored event types", e))?;
        crate::session::unbounded(&mut tx)
            .await
            .map_err(|e| db("listing stored event types", e))?;
        let rows = sqlx::query(self.schema.sql(
            "SELECT DISTINCT aggregate_type, event_name, event_version FROM {schema}.events
                  ORDER BY 1, 2, 3",
        ))
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| db("listing stored event types", e))?;
        tx.commit()
            .await
            .map_err(|e| db("listing stored event types", e))?;
        rows.iter()
            .map(|row| {
                let version: i32 = row
                    .try_get(2)
                    .map_err(|e| db("listing stored event types", e))?;
                Ok(StoredType {
                    aggregate_type: row
                        .try_get(0)
                        .map_err(|e| db("listing stored event types", e))?,
                    name: row
                        .try_get(1)
                        .map_err(|e| db("listing stored event types", e))?,
                    version: version as u32,
                })
            })
            .collect()
    }
}
