//! The PostgreSQL event store.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use cqrs_core::envelope::{Envelope, ExpectedVersion, Metadata, NewEvent};
use cqrs_core::registry::StoredType;
use cqrs_core::{Error, EventAppender, EventReader, Result};
use sqlx::postgres::{PgArguments, PgConnection, PgRow};
use sqlx::query::Query;
use sqlx::{PgPool, Postgres, Row, Transaction};
use uuid::Uuid;

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
    notifier: Arc<Notifier>,
    group: Option<Arc<Committer>>,
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
    let (user, command_id, idempotency_key) =
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
            command_id,
            idempotency_key,
            timestamp: row.try_get::<DateTime<Utc>, _>(10).map_err(get)?,
            user,
        },
    })
}

pub(crate) fn to_i64(n: u64, what: &str) -> Result<i64> {
    i64::try_from(n).map_err(|_| Error::Config(format!("{what} {n} is out of range")))
}

/// The events of one or more appends, as the column arrays the append functions take.
#[derive(Default)]
pub(crate) struct Columns<'a> {
    pub(crate) names: Vec<&'a str>,
    pub(crate) versions: Vec<i32>,
    pub(crate) payloads: Vec<&'a str>,
    pub(crate) ids: Vec<Uuid>,
    pub(crate) correlations: Vec<Uuid>,
    pub(crate) causations: Vec<Option<Uuid>>,
    pub(crate) created: Vec<DateTime<Utc>>,
    pub(crate) metas: Vec<Option<String>>,
}

impl<'a> Columns<'a> {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Columns {
            names: Vec::with_capacity(n),
            versions: Vec::with_capacity(n),
            payloads: Vec::with_capacity(n),
            ids: Vec::with_capacity(n),
            correlations: Vec::with_capacity(n),
            causations: Vec::with_capacity(n),
            created: Vec::with_capacity(n),
            metas: Vec::with_capacity(n),
        }
    }

    /// Adds one append's events: all of them, or (on an error) none.
    pub(crate) fn push(&mut self, events: &'a [NewEvent]) -> Result<()> {
        let before = self.names.len();
        let pushed = self.push_each(events);
        if pushed.is_err() {
            self.truncate(before);
        }
        pushed
    }

    fn push_each(&mut self, events: &'a [NewEvent]) -> Result<()> {
        for e in events {
            let version = i32::try_from(e.event_version).map_err(|_| {
                Error::Config(format!("event version {} is out of range", e.event_version))
            })?;
            let payload = std::str::from_utf8(&e.payload).map_err(|err| Error::Malformed {
                what: format!("payload of `{}`", e.event_name),
                reason: format!("not UTF-8 JSON: {err}"),
            })?;
            let stored = e.metadata.stored_map();
            let meta = if stored.is_empty() {
                None
            } else {
                Some(
                    serde_json::to_string(&*stored).map_err(|source| Error::Serialize {
                        what: "event metadata".into(),
                        source,
                    })?,
                )
            };
            self.names.push(e.event_name.as_str());
            self.versions.push(version);
            self.payloads.push(payload);
            self.ids.push(e.metadata.event_id);
            self.correlations.push(e.metadata.correlation_id);
            self.causations.push(e.metadata.causation_id);
            self.created.push(e.metadata.timestamp);
            self.metas.push(meta);
        }
        Ok(())
    }

    /// Binds the eight event columns, in the order both append functions take them.
    pub(crate) fn bind<'q>(
        &'q self,
        query: Query<'q, Postgres, PgArguments>,
    ) -> Query<'q, Postgres, PgArguments> {
        query
            .bind(&self.names)
            .bind(&self.versions)
            .bind(&self.payloads)
            .bind(&self.ids)
            .bind(&self.correlations)
            .bind(&self.causations)
            .bind(&self.created)
            .bind(&self.metas)
    }

    fn truncate(&mut self, len: usize) {
        self.names.truncate(len);
        self.versions.truncate(len);
        self.payloads.truncate(len);
        self.ids.truncate(len);
        self.correlations.truncate(len);
        self.causations.truncate(len);
        self.created.truncate(len);
        self.metas.truncate(len);
    }
}

/// The version check of an append, as the append functions take it: whether to check, and
/// the version expected.
pub(crate) fn version_check(expected: ExpectedVersion) -> Result<(bool, i64)> {
    match expected {
        ExpectedVersion::Exact(v) => Ok((true, to_i64(v, "expected version")?)),
        ExpectedVersion::Any => Ok((false, 0)),
    }
}

/// The envelopes of an append the database accepted, from its `(position, version)` rows.
pub(crate) fn committed(
    aggregate_type: &str,
    stream_id: &str,
    events: Vec<NewEvent>,
    written: &[(i64, i64)],
) -> Result<Vec<Envelope>> {
    if written.len() != events.len() {
        return Err(Error::Backend {
            backend: "postgres",
            message: format!(
                "append to `{stream_id}` returned {} rows for {} events",
                written.len(),
                events.len()
            ),
            source: None,
        });
    }
    Ok(written
        .iter()
        .zip(events)
        .map(|(&(position, version), event)| Envelope {
            stream_id: stream_id.to_owned(),
            aggregate_type: aggregate_type.to_owned(),
            version: version as u64,
            position: position as u64,
            event_name: event.event_name,
            event_version: event.event_version,
            payload: event.payload,
            metadata: event.metadata,
        })
        .collect())
}

/// Appends on any connection (a pooled one, or a caller's transaction).
pub(crate) async fn append_on(
    conn: &mut PgConnection,
    pool: &PgPool,
    schema: &Schema,
    aggregate_type: &str,
    stream_id: &str,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
) -> Result<Vec<Envelope>> {
    if stream_id.is_empty() {
        return Err(Error::Config("stream id must not be empty".into()));
    }
    let (check, expected_version) = version_check(expected)?;
    let mut columns = Columns::with_capacity(events.len());
    columns.push(&events)?;
    let query = sqlx::query(schema.sql(
        "SELECT out_position, out_version, out_actual FROM {schema}.append_events(
            $1, $2, $3, $4, $5, $6, $7::text[]::json[], $8, $9, $10, $11, $12::text[]::json[])",
    ))
    .bind(stream_id)
    .bind(aggregate_type)
    .bind(expected_version)
    .bind(check);
    let rows = columns.bind(query).fetch_all(&mut *conn).await;
    let rows = match rows {
        Ok(rows) => rows,
        // A concurrent append to the same stream took the versions first.
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            // The winner has committed (the index waited for it): read its version.
            let actual: Option<i64> = sqlx::query_scalar(
                schema.sql("SELECT max(version) FROM {schema}.events WHERE stream_id = $1"),
            )
            .bind(stream_id)
            .fetch_one(pool)
            .await
            .map_err(|e| db("reading a stream's version", e))?;
            return Err(Error::Conflict {
                stream_id: stream_id.to_owned(),
                expected: expected_version as u64,
                actual: actual.unwrap_or(0) as u64,
            });
        }
        Err(sqlx::Error::Database(e))
            if e.code().as_deref() == Some(crate::error::FOREIGN_STREAM) =>
        {
            let owner = e
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .and_then(|e| e.detail())
                .unwrap_or_default();
            return Err(Error::WrongAggregateType {
                stream_id: stream_id.to_owned(),
                expected: aggregate_type.to_owned(),
                actual: owner.to_owned(),
            });
        }
        Err(e) => return Err(db(&format!("appending to stream `{stream_id}`"), e)),
    };
    if let Some(first) = rows.first() {
        let actual: Option<i64> = first.try_get(2).map_err(|e| db("reading the append", e))?;
        if let Some(actual) = actual {
            return Err(Error::Conflict {
                stream_id: stream_id.to_owned(),
                expected: expected_version as u64,
                actual: actual as u64,
            });
        }
    }
    let mut written = Vec::with_capacity(rows.len());
    for row in &rows {
        let position: i64 = row.try_get(0).map_err(|e| db("reading the append", e))?;
        let version: i64 = row.try_get(1).map_err(|e| db("reading the append", e))?;
        written.push((position, version));
    }
    committed(aggregate_type, stream_id, events, &written)
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
    pub fn group_commit(mut self, config: GroupCommit) -> Self {
        self.group = Some(Committer::new(config));
        self
    }

    /// What the group commit has done so far; `None` when it is off.
    pub fn group_commit_stats(&self) -> Option<GroupCommitStats> {
        self.group.as_ref().map(|g| g.stats())
    }

    /// Writes every append in a transaction of its own.
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
        let rows = sqlx::query(self.schema.sql(
            "SELECT DISTINCT aggregate_type, event_name, event_version FROM {schema}.events
                  ORDER BY 1, 2, 3",
        ))
        .fetch_all(&self.pool)
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

#[async_trait]
impl EventAppender for PgEventStore {
    async fn append(
        &self,
        aggregate_type: &str,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Envelope>> {
        if events.is_empty() {
            // Nothing to write; still answer the version check.
            if let ExpectedVersion::Exact(expected) = expected {
                let actual: Option<i64> = sqlx::query_scalar(
                    self.schema
                        .sql("SELECT max(version) FROM {schema}.events WHERE stream_id = $1"),
                )
                .bind(stream_id)
                .fetch_one(&self.pool)
                .await
                .map_err(|e| db("reading a stream's version", e))?;
                let actual = actual.unwrap_or(0) as u64;
                if actual != expected {
                    return Err(Error::Conflict {
                        stream_id: stream_id.to_owned(),
                        expected,
                        actual,
                    });
                }
            }
            return Ok(Vec::new());
        }
        if expected != ExpectedVersion::Any {
            return self
                .append_once(aggregate_type, stream_id, expected, events)
                .await;
        }
        // With no version expected, a conflict only says a concurrent append took the same
        // versions first (and this one wrote nothing): take the next ones.
        let mut attempt = 1;
        loop {
            match self
                .append_once(aggregate_type, stream_id, expected, events.clone())
                .await
            {
                Err(Error::Conflict { .. }) if attempt < ANY_ATTEMPTS => attempt += 1,
                outcome => return outcome,
            }
        }
    }
}

/// How often an append that expects no version is tried when concurrent appends to its
/// stream keep taking the versions first.
const ANY_ATTEMPTS: u32 = 32;

impl PgEventStore {
    async fn append_once(
        &self,
        aggregate_type: &str,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Envelope>> {
        if let Some(group) = &self.group {
            return group
                .append(self, aggregate_type, stream_id, expected, events)
                .await;
        }
        let committed = self
            .append_alone(aggregate_type, stream_id, expected, events)
            .await?;
        self.wake_readers();
        Ok(committed)
    }
}

/// A transaction to append in: commit the appends with the caller's own writes, or roll
/// everything back.
///
/// A conflict (a concurrent append to the same stream) aborts the transaction: roll it back.
pub struct PgAppendTx {
    tx: Transaction<'static, Postgres>,
    store: PgEventStore,
}

impl std::fmt::Debug for PgAppendTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgAppendTx").finish_non_exhaustive()
    }
}

impl PgAppendTx {
    /// Appends to a stream inside this transaction. Positions are final, and visible to
    /// readers, once the transaction commits.
    ///
    /// # Errors
    /// [`Error::Conflict`] on a version mismatch, a backend error.
    pub async fn append(
        &mut self,
        aggregate_type: &str,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Envelope>> {
        append_on(
            &mut self.tx,
            &self.store.pool,
            &self.store.schema,
            aggregate_type,
            stream_id,
            expected,
            events,
        )
        .await
    }

    /// The transaction's connection, for the caller's own statements.
    pub fn connection(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// Commits, and wakes readers.
    ///
    /// # Errors
    /// A backend error; then nothing was written.
    pub async fn commit(self) -> Result<()> {
        self.tx.commit().await.map_err(|e| db("committing", e))?;
        self.store
            .notifier
            .poke(&self.store.pool, &self.store.schema.channel);
        Ok(())
    }

    /// Rolls back: nothing is written. Readers held up by this transaction are woken.
    ///
    /// # Errors
    /// A backend error.
    pub async fn rollback(self) -> Result<()> {
        self.tx
            .rollback()
            .await
            .map_err(|e| db("rolling back", e))?;
        self.store
            .notifier
            .poke(&self.store.pool, &self.store.schema.channel);
        Ok(())
    }
}
