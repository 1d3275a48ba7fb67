//! One page of the global log, in an order the planner keeps whatever its statistics.
//!
//! The page is the first `limit` rows after a position, then cut at the visible bound (see
//! ADR 0003). Written as one `WHERE position > a AND position < b`, a log the planner has no
//! statistics for yet (a bulk load, a restore, autovacuum off) gets the default selectivity
//! of a range, 0.5 %: so few rows that a bitmap scan of every later row plus a sort looks
//! cheap, and each page of a replay reads the whole rest of the log. A single `position > a`
//! under `ORDER BY position LIMIT n` is estimated at a third of the table, of which the limit
//! takes a sliver: the planner walks the primary key in order and stops after `n` rows,
//! statistics or not. The visible bound is applied to those `n` rows; they are in position
//! order, so what it keeps is a prefix, as before.

use cqrs_core::Result;
use sqlx::Row;

use crate::copy::COPY_COLUMNS;
use crate::error::db;
use crate::store::{to_i64, PgEventStore, VISIBLE};

/// The `SELECT` of one page: the next `limit` events after position `after` that are visible.
pub(crate) fn select(after: u64, limit: usize) -> Result<String> {
    let after = to_i64(after, "position")?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    Ok(format!(
        "SELECT {COPY_COLUMNS} FROM (
             SELECT * FROM {{schema}}.events WHERE position > {after}
              ORDER BY position LIMIT {limit}
         ) page WHERE position < ({VISIBLE}) ORDER BY position"
    ))
}

impl PgEventStore {
    /// The plan PostgreSQL chooses for one page of [`read_all`](cqrs_core::EventReader::read_all)
    /// (the text of `EXPLAIN`), to check a database the store reads: the primary key walked in
    /// order, whether or not the table has statistics.
    ///
    /// # Errors
    /// A database error.
    pub async fn explain_read_all(&self, after: u64, limit: usize) -> Result<String> {
        let statement = self
            .schema
            .sql(&format!("EXPLAIN {}", select(after, limit)?));
        let rows = sqlx::query(statement)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db("explaining a page of the log", e))?;
        rows.iter()
            .map(|r| {
                r.try_get::<String, _>(0)
                    .map_err(|e| db("explaining a page of the log", e))
            })
            .collect::<Result<Vec<_>>>()
            .map(|lines| lines.join("\n"))
    }
}
