//! Read models on PostgreSQL: view documents, checkpoints and dead letters in one transaction.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use cqrs_core::view::{StoredDoc, UnitOfWork};
use cqrs_core::{Error, Filter, Order, Query, Result, ViewQuery, ViewStore};
use serde_json::Value;
use sqlx::postgres::PgArguments;
use sqlx::{Arguments, PgPool, Row};

use crate::error::{db, to_the_end};
use crate::schema::Schema;

/// Views, checkpoints and dead letters on PostgreSQL. A unit of work commits in one
/// transaction: the views and the checkpoint move together, exactly once.
#[derive(Debug, Clone)]
pub struct PgViewStore {
    pool: PgPool,
    schema: Arc<Schema>,
}

fn json_text<T: serde::Serialize>(value: &T, what: &str) -> Result<String> {
    serde_json::to_string(value).map_err(|source| Error::Serialize {
        what: what.to_owned(),
        source,
    })
}

pub(crate) fn parse<T: serde::de::DeserializeOwned>(
    text: &str,
    what: impl FnOnce() -> String,
) -> Result<T> {
    serde_json::from_str(text).map_err(|e| Error::Malformed {
        what: what(),
        reason: e.to_string(),
    })
}

impl PgViewStore {
    async fn commit_now(&self, work: UnitOfWork) -> Result<()> {
        let projection = work.projection.as_str();
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| db("starting a unit of work", e))?;
        if let Some(claim) = &work.claim {
            self.fence(&mut tx, projection, claim).await?;
        }
        let (mut new, mut old) = (Vec::new(), Vec::new());
        for doc in &work.writes {
            let view = doc
                .view
                .as_ref()
                .map(|v| json_text(v, "a view"))
                .transpose()?;
            let applied = json_text(&doc.applied, "a view's applied versions")?;
            let parked = json_text(&doc.parked, "a view's parked events")?;
            let row = (
                doc.id.clone(),
                view,
                applied,
                doc.position as i64,
                doc.revision as i64,
                parked,
            );
            if doc.revision == 0 {
                new.push(row);
            } else {
                old.push(row);
            }
        }
        type Cols = (
            Vec<String>,
            Vec<Option<String>>,
            Vec<String>,
            Vec<i64>,
            Vec<i64>,
            Vec<String>,
        );
        type Row = (String, Option<String>, String, i64, i64, String);
        let columns = |rows: Vec<Row>| -> Cols {
            let mut c: Cols = Default::default();
            for (id, view, applied, position, revision, parked) in rows {
                c.0.push(id);
                c.1.push(view);
                c.2.push(applied);
                c.3.push(position);
                c.4.push(revision);
                c.5.push(parked);
            }
            c
        };
        if !new.is_empty() {
            let expected: Vec<(String, u64)> = new.iter().map(|r| (r.0.clone(), 0)).collect();
            let (ids, views, applied, positions, _, parked) = columns(new);
            let inserted: Vec<String> = sqlx::query_scalar(self.schema.sql(
                "INSERT INTO {schema}.views
                        (projection, id, view, applied, position, revision, parked)
                 SELECT $1, t.id, t.view::jsonb, t.applied::jsonb, t.position, 1, t.parked::jsonb
                   FROM unnest($2::text[], $3::text[], $4::text[], $5::int8[], $6::text[])
                        AS t(id, view, applied, position, parked)
                 ON CONFLICT (projection, id) DO NOTHING
                 RETURNING id",
            ))
            .bind(projection)
            .bind(&ids)
            .bind(&views)
            .bind(&applied)
            .bind(&positions)
            .bind(&parked)
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| db("inserting views", e))?;
            if inserted.len() != ids.len() {
                let written = inserted.into_iter().collect();
                return Err(Self::conflict(projection, &expected, &written));
            }
        }
        if !old.is_empty() {
            let expected: Vec<(String, u64)> =
                old.iter().map(|r| (r.0.clone(), r.4 as u64)).collect();
            let (ids, views, applied, positions, revisions, parked) = columns(old);
            let updated: Vec<String> = sqlx::query_scalar(self.schema.sql(
                "UPDATE {schema}.views v
                    SET view = t.view::jsonb, applied = t.applied::jsonb,
                        position = t.position, revision = v.revision + 1,
                        parked = t.parked::jsonb
                   FROM unnest($2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[],
                               $7::text[])
                        AS t(id, view, applied, position, revision, parked)
                  WHERE v.projection = $1 AND v.id = t.id AND v.revision = t.revision
                 RETURNING v.id",
            ))
            .bind(projection)
            .bind(&ids)
            .bind(&views)
            .bind(&applied)
            .bind(&positions)
            .bind(&revisions)
            .bind(&parked)
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| db("updating views", e))?;
            if updated.len() != ids.len() {
                let written = updated.into_iter().collect();
                return Err(Self::conflict(projection, &expected, &written));
            }
        }
        if !work.resolved.is_empty() {
            let removed = sqlx::query(self.schema.sql(
                "DELETE FROM {schema}.dead_letters WHERE projection = $1 AND event_id = ANY($2)",
            ))
            .bind(projection)
            .bind(&work.resolved)
            .execute(&mut *tx)
            .await
            .map_err(|e| db("removing resolved dead letters", e))?;
            // A dead letter resolved meanwhile (a concurrent retry) refuses the unit of work.
            if removed.rows_affected() != work.resolved.len() as u64 {
                return Err(Error::ViewConflict {
                    projection: projection.to_owned(),
                    id: "a dead letter resolved concurrently".into(),
                    expected: work.resolved.len() as u64,
                    actual: removed.rows_affected(),
                });
            }
        }
        for letter in &work.dead_letters {
            sqlx::query(self.schema.sql(
                "INSERT INTO {schema}.dead_letters
                        (projection, event_id, position, envelope, reason, at, view_id)
                 VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7)
                 ON CONFLICT (projection, event_id) DO UPDATE
                    SET reason = excluded.reason, at = excluded.at,
                        view_id = coalesce(excluded.view_id, {schema}.dead_letters.view_id)",
            ))
            .bind(projection)
            .bind(letter.envelope.metadata.event_id)
            .bind(letter.envelope.position as i64)
            .bind(json_text(&letter.envelope, "a dead letter")?)
            .bind(&letter.reason)
            .bind(letter.at)
            .bind(letter.view.as_deref())
            .execute(&mut *tx)
            .await
            .map_err(|e| db("saving a dead letter", e))?;
        }
        if let (Some(checkpoint), Some(claim)) = (work.checkpoint, &work.claim) {
            self.segment_checkpoint(&mut tx, projection, claim, checkpoint)
                .await?;
        } else if let Some(checkpoint) = work.checkpoint {
            sqlx::query(self.schema.sql(
                "INSERT INTO {schema}.view_checkpoints (projection, position) VALUES ($1, $2)
                 ON CONFLICT (projection) DO UPDATE
                    SET position = greatest({schema}.view_checkpoints.position, excluded.position)",
            ))
            .bind(projection)
            .bind(checkpoint as i64)
            .execute(&mut *tx)
            .await
            .map_err(|e| db("saving the checkpoint", e))?;
        }
        tx.commit()
            .await
            .map_err(|e| db("committing a unit of work", e))
    }

    pub(crate) fn new(pool: PgPool, schema: Arc<Schema>) -> Self {
        PgViewStore { pool, schema }
    }

    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub(crate) fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Tells which of `ids` changed under the writer, for the conflict error.
    fn conflict(projection: &str, expected: &[(String, u64)], written: &HashSet<String>) -> Error {
        let (id, revision) = expected
            .iter()
            .find(|(id, _)| !written.contains(id))
            .cloned()
            .unwrap_or_default();
        Error::ViewConflict {
            projection: projection.to_owned(),
            id,
            expected: revision,
            actual: revision + 1,
        }
    }
}

#[async_trait]
impl ViewStore for PgViewStore {
    async fn load(&self, projection: &str, ids: &[String]) -> Result<Vec<StoredDoc>> {
        let rows = sqlx::query(self.schema.sql(
            "SELECT id, view::text, applied::text, position, revision, parked::text
               FROM {schema}.views
              WHERE projection = $1 AND id = ANY($2)",
        ))
        .bind(projection)
        .bind(ids)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db("loading views", e))?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get(0).map_err(|e| db("loading views", e))?;
                let what = || format!("view `{id}` of projection `{projection}`");
                let view: Option<String> = row.try_get(1).map_err(|e| db("loading views", e))?;
                let applied: String = row.try_get(2).map_err(|e| db("loading views", e))?;
                let position: i64 = row.try_get(3).map_err(|e| db("loading views", e))?;
                let revision: i64 = row.try_get(4).map_err(|e| db("loading views", e))?;
                let parked: String = row.try_get(5).map_err(|e| db("loading views", e))?;
                Ok(StoredDoc {
                    parked: parse(&parked, what)?,
                    view: view.map(|v| parse::<Value>(&v, what)).transpose()?,
                    applied: parse::<BTreeMap<String, u64>>(&applied, what)?,
                    position: position as u64,
                    revision: revision as u64,
                    id,
                })
            })
            .collect()
    }

    /// Runs the transaction on a task of its own: a caller that is cancelled (an aborted
    /// processor) cannot cut it short. sqlx's `begin` is not cancel-safe: cancelled while
    /// `BEGIN` is under way, it returns the connection to the pool inside a transaction that
    /// nothing will end, and the next user's statements (appends among them) would run in it
    /// uncommitted while holding every reader of the log back.
    async fn commit(&self, work: UnitOfWork) -> Result<()> {
        let store = self.clone();
        to_the_end("committing a unit of work", async move {
            store.commit_now(work).await
        })
        .await
    }

    async fn checkpoint(&self, projection: &str) -> Result<Option<u64>> {
        let position: Option<i64> = sqlx::query_scalar(
            self.schema
                .sql("SELECT position FROM {schema}.view_checkpoints WHERE projection = $1"),
        )
        .bind(projection)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db("loading a checkpoint", e))?;
        Ok(position.map(|p| p as u64))
    }

    fn claims(&self) -> Option<&dyn cqrs_core::segment::SegmentClaims> {
        Some(self)
    }

    async fn reset(&self, projection: &str) -> Result<()> {
        // Deleting a large read model may outlast the session's statement limit.
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| db("resetting a projection", e))?;
        crate::session::unbounded(&mut tx)
            .await
            .map_err(|e| db("resetting a projection", e))?;
        sqlx::query(self.schema.sql(
            "WITH a AS (DELETE FROM {schema}.views WHERE projection = $1),
                  b AS (DELETE FROM {schema}.view_checkpoints WHERE projection = $1),
                  c AS (DELETE FROM {schema}.segment_claims WHERE projection = $1),
                  d AS (DELETE FROM {schema}.segment_members WHERE projection = $1)
             DELETE FROM {schema}.dead_letters WHERE projection = $1",
        ))
        .bind(projection)
        .execute(&mut *tx)
        .await
        .map_err(|e| db("resetting a projection", e))?;
        tx.commit()
            .await
            .map_err(|e| db("resetting a projection", e))
    }
}

/// Builds `WHERE` conditions for a filter, binding every path and value as a parameter.
fn condition(filter: &Filter, args: &mut PgArguments, n: &mut usize) -> Result<String> {
    let bind_path = |path: &str, args: &mut PgArguments, n: &mut usize| -> Result<String> {
        let parts: Vec<String> = path.split('.').map(str::to_owned).collect();
        if path.is_empty() || parts.iter().any(String::is_empty) {
            return Err(Error::Config(format!("invalid field path `{path}`")));
        }
        args.add(parts)
            .map_err(|e| Error::Config(format!("field path `{path}`: {e}")))?;
        *n += 1;
        Ok(format!("view #> ${}::text[]", *n))
    };
    let compare = |path: &str, value: &Value, op: &str, args: &mut PgArguments, n: &mut usize| {
        let lhs = bind_path(path, args, n)?;
        args.add(value.to_string())
            .map_err(|e| Error::Config(format!("filter value: {e}")))?;
        *n += 1;
        Ok::<_, Error>(format!("{lhs} {op} ${}::jsonb", *n))
    };
    Ok(match filter {
        Filter::All => "TRUE".to_owned(),
        Filter::Eq(p, v) => compare(p, v, "=", args, n)?,
        Filter::Gt(p, v) => compare(p, v, ">", args, n)?,
        Filter::Gte(p, v) => compare(p, v, ">=", args, n)?,
        Filter::Lt(p, v) => compare(p, v, "<", args, n)?,
        Filter::Lte(p, v) => compare(p, v, "<=", args, n)?,
        Filter::And(all) => {
            let mut parts = Vec::with_capacity(all.len());
            for f in all {
                parts.push(condition(f, args, n)?);
            }
            if parts.is_empty() {
                "TRUE".to_owned()
            } else {
                format!("({})", parts.join(" AND "))
            }
        }
        other => return Err(Error::Config(format!("unsupported filter {other:?}"))),
    })
}

#[async_trait]
impl ViewQuery for PgViewStore {
    async fn get(&self, projection: &str, id: &str) -> Result<Option<Value>> {
        let view: Option<Option<String>> = sqlx::query_scalar(
            self.schema
                .sql("SELECT view::text FROM {schema}.views WHERE projection = $1 AND id = $2"),
        )
        .bind(projection)
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db("reading a view", e))?;
        view.flatten()
            .map(|v| parse(&v, || format!("view `{id}` of projection `{projection}`")))
            .transpose()
    }

    async fn find(&self, projection: &str, query: &Query) -> Result<Vec<(String, Value)>> {
        let mut args = PgArguments::default();
        args.add(projection)
            .map_err(|e| Error::Config(format!("projection: {e}")))?;
        let mut n = 1;
        let cond = condition(&query.filter, &mut args, &mut n)?;
        let mut order = Vec::new();
        for (path, dir) in &query.sort {
            let parts: Vec<String> = path.split('.').map(str::to_owned).collect();
            if path.is_empty() || parts.iter().any(String::is_empty) {
                return Err(Error::Config(format!("invalid sort path `{path}`")));
            }
            args.add(parts)
                .map_err(|e| Error::Config(format!("sort path `{path}`: {e}")))?;
            n += 1;
            let dir = match dir {
                Order::Asc => "ASC NULLS FIRST",
                Order::Desc => "DESC NULLS LAST",
            };
            order.push(format!("view #> ${n}::text[] {dir}"));
        }
        order.push("id ASC".to_owned());
        args.add(query.skip as i64)
            .map_err(|e| Error::Config(format!("skip: {e}")))?;
        n += 1;
        let offset = n;
        let limit = match query.limit {
            Some(l) => {
                args.add(l as i64)
                    .map_err(|e| Error::Config(format!("limit: {e}")))?;
                n += 1;
                format!("LIMIT ${n}")
            }
            None => String::new(),
        };
        let sql = format!(
            "SELECT id, view::text FROM {{schema}}.views
              WHERE projection = $1 AND view IS NOT NULL AND {cond}
              ORDER BY {} OFFSET ${offset} {limit}",
            order.join(", "),
        );
        let rows = sqlx::query_with(self.schema.sql(&sql), args)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db("querying views", e))?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get(0).map_err(|e| db("querying views", e))?;
                let view: String = row.try_get(1).map_err(|e| db("querying views", e))?;
                let value = parse(&view, || {
                    format!("view `{id}` of projection `{projection}`")
                })?;
                Ok((id, value))
            })
            .collect()
    }

    async fn count(&self, projection: &str, filter: &Filter) -> Result<u64> {
        let mut args = PgArguments::default();
        args.add(projection)
            .map_err(|e| Error::Config(format!("projection: {e}")))?;
        let mut n = 1;
        let cond = condition(filter, &mut args, &mut n)?;
        let sql = format!(
            "SELECT count(*) FROM {{schema}}.views
              WHERE projection = $1 AND view IS NOT NULL AND {cond}"
        );
        let count: i64 = sqlx::query_scalar_with(self.schema.sql(&sql), args)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| db("counting views", e))?;
        Ok(count as u64)
    }
}
