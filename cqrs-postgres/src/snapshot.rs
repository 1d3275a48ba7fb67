//! Snapshots and named checkpoints on PostgreSQL.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use cqrs_core::store::Snapshot;
use cqrs_core::{CheckpointStore, Error, Result, SnapshotStore};
use sqlx::{PgPool, Row};

use crate::error::db;
use crate::schema::Schema;

/// Snapshots of aggregates on PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgSnapshotStore {
    pool: PgPool,
    schema: Arc<Schema>,
}

impl PgSnapshotStore {
    pub(crate) fn new(pool: PgPool, schema: Arc<Schema>) -> Self {
        PgSnapshotStore { pool, schema }
    }
}

#[async_trait]
impl SnapshotStore for PgSnapshotStore {
    async fn load(&self, aggregate_type: &str, stream_id: &str) -> Result<Option<Snapshot>> {
        let row = sqlx::query(self.schema.sql(
            "SELECT version, state::text FROM {schema}.snapshots
              WHERE aggregate_type = $1 AND stream_id = $2",
        ))
        .bind(aggregate_type)
        .bind(stream_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db("loading a snapshot", e))?;
        let Some(row) = row else { return Ok(None) };
        let version: i64 = row.try_get(0).map_err(|e| db("loading a snapshot", e))?;
        let state: String = row.try_get(1).map_err(|e| db("loading a snapshot", e))?;
        Ok(Some(Snapshot {
            aggregate_type: aggregate_type.to_owned(),
            stream_id: stream_id.to_owned(),
            version: version as u64,
            state: Bytes::from(state.into_bytes()),
        }))
    }

    async fn save(&self, snapshot: Snapshot) -> Result<()> {
        let state = std::str::from_utf8(&snapshot.state).map_err(|e| Error::Malformed {
            what: format!("snapshot of `{}`", snapshot.stream_id),
            reason: e.to_string(),
        })?;
        sqlx::query(self.schema.sql(
            "INSERT INTO {schema}.snapshots (aggregate_type, stream_id, version, state)
             VALUES ($1, $2, $3, $4::jsonb)
             ON CONFLICT (aggregate_type, stream_id) DO UPDATE
                SET version = excluded.version, state = excluded.state
              WHERE {schema}.snapshots.version < excluded.version",
        ))
        .bind(&snapshot.aggregate_type)
        .bind(&snapshot.stream_id)
        .bind(snapshot.version as i64)
        .bind(state)
        .execute(&self.pool)
        .await
        .map(|_| ())
        .map_err(|e| db("saving a snapshot", e))
    }
}

/// Named checkpoints on PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgCheckpointStore {
    pool: PgPool,
    schema: Arc<Schema>,
}

impl PgCheckpointStore {
    pub(crate) fn new(pool: PgPool, schema: Arc<Schema>) -> Self {
        PgCheckpointStore { pool, schema }
    }
}

#[async_trait]
impl CheckpointStore for PgCheckpointStore {
    async fn load(&self, name: &str) -> Result<Option<u64>> {
        let position: Option<i64> = sqlx::query_scalar(
            self.schema
                .sql("SELECT position FROM {schema}.checkpoints WHERE name = $1"),
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db("loading a checkpoint", e))?;
        Ok(position.map(|p| p as u64))
    }

    async fn save(&self, name: &str, position: u64) -> Result<()> {
        sqlx::query(self.schema.sql(
            "INSERT INTO {schema}.checkpoints (name, position) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET position = excluded.position",
        ))
        .bind(name)
        .bind(position as i64)
        .execute(&self.pool)
        .await
        .map(|_| ())
        .map_err(|e| db("saving a checkpoint", e))
    }
}
