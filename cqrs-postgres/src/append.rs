//! Appending to the PostgreSQL event store: the column arrays the append functions take, the
//! version check, the envelopes of an accepted append, and appends alone, in a group or in a
//! caller's transaction.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cqrs_core::envelope::{Envelope, ExpectedVersion, Metadata, NewEvent};
use cqrs_core::{Error, EventAppender, Result};
use sqlx::postgres::{PgArguments, PgConnection};
use sqlx::query::Query;
use sqlx::{PgPool, Postgres, Row, Transaction};
use uuid::Uuid;

use crate::error::db;
use crate::schema::Schema;
use crate::store::{to_i64, PgEventStore};

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

/// The envelopes of an append the database accepted, from its `(position, version)` rows and
/// the routing key the stream has (stamped on events that named none).
pub(crate) fn committed(
    aggregate_type: &str,
    stream_id: &str,
    events: Vec<NewEvent>,
    written: &[(i64, i64)],
    key: Option<String>,
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
            metadata: Metadata {
                routing_key: event.metadata.routing_key.or_else(|| key.clone()),
                ..event.metadata
            },
        })
        .collect())
}

/// The error for a refused routing key (SQLSTATE CQ002, the stream's key in DETAIL).
pub(crate) fn rerouted(e: &dyn sqlx::error::DatabaseError, stream_id: &str, key: &str) -> Error {
    let expected = e
        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        .and_then(|e| e.detail());
    cqrs_core::routing::changed(stream_id, expected, key)
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
    let mut events = events;
    let key = cqrs_core::routing::settle(stream_id, &mut events)?;
    let mut columns = Columns::with_capacity(events.len());
    columns.push(&events)?;
    let query = sqlx::query(schema.sql(
        "SELECT out_position, out_version, out_actual, out_key FROM {schema}.append_events(
            $1, $2, $3, $4, $5, $6, $7, $8::text[]::json[], $9, $10, $11, $12,
            $13::text[]::json[])",
    ))
    .bind(stream_id)
    .bind(aggregate_type)
    .bind(expected_version)
    .bind(check)
    .bind(key.as_deref());
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
        // The transaction's id is older than the stream's last writer's: appending here would
        // put this version's position before the previous version's. Retried as a conflict,
        // in a new transaction.
        Err(sqlx::Error::Database(e))
            if e.code().as_deref() == Some(crate::error::LATER_WRITER) =>
        {
            let actual = e
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .and_then(|e| e.detail())
                .and_then(|d| d.parse::<u64>().ok())
                .unwrap_or(0);
            return Err(Error::Conflict {
                stream_id: stream_id.to_owned(),
                expected: expected_version as u64,
                actual,
            });
        }
        Err(sqlx::Error::Database(e))
            if e.code().as_deref() == Some(crate::error::REROUTED_STREAM) =>
        {
            return Err(rerouted(
                &*e,
                stream_id,
                key.as_deref().unwrap_or(stream_id),
            ));
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
    let key = match rows.first() {
        Some(row) => row.try_get(3).map_err(|e| db("reading the append", e))?,
        None => key,
    };
    committed(aggregate_type, stream_id, events, &written, key)
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
    pub(crate) tx: Transaction<'static, Postgres>,
    pub(crate) store: PgEventStore,
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
    /// The routing key is settled and checked as [`EventAppender::append`] says.
    ///
    /// Positions come from the transaction's id (docs/adr/0003), so a stream's next version
    /// must come from a transaction whose id is larger than its previous version's. Once this
    /// transaction has written anything, its id is fixed: if a transaction that began after it
    /// has appended to the stream since, this append is refused as a conflict, even when the
    /// version matches (docs/adr/0017). Roll back and retry in a new transaction.
    ///
    /// # Errors
    /// [`Error::RoutingKeyChanged`](cqrs_core::Error::RoutingKeyChanged) when the append names
    /// a key the stream does not have, [`Error::Conflict`] on a version mismatch or a stream
    /// written by a later transaction, a backend error.
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
