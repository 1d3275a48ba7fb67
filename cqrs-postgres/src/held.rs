//! Who holds the log's readers back: the oldest transaction still running on the server, while
//! events that committed after it wait for it to end (docs/adr/0003, 0018).

use cqrs_core::store::HeldBack;
use cqrs_core::Result;
use sqlx::{PgPool, Row};

use crate::error::db;
use crate::schema::Schema;

/// The transaction every reader waits for, when this schema has committed events it hides.
/// `pg_stat_activity` shows other roles' sessions only to a role with `pg_read_all_stats`:
/// without it the transaction id is still known, the session is not.
pub(crate) async fn held_back(pool: &PgPool, schema: &Schema) -> Result<Option<HeldBack>> {
    let row = sqlx::query(schema.sql(
        "WITH h AS (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin)
         SELECT h.xmin, a.pid, a.state,
                extract(epoch FROM clock_timestamp() - a.xact_start)::float8
           FROM h
           LEFT JOIN pg_stat_activity a
                  ON a.backend_xid IS NOT NULL
                 AND a.backend_xid::text::bigint = h.xmin % 4294967296
          WHERE EXISTS (SELECT 1 FROM {schema}.events e WHERE e.position >= h.xmin << 16)
          LIMIT 1",
    ))
    .fetch_optional(pool)
    .await
    .map_err(|e| db("finding what holds the log back", e))?;
    let Some(row) = row else {
        return Ok(None);
    };
    let what = |e| db("finding what holds the log back", e);
    let transaction: i64 = row.try_get(0).map_err(what)?;
    Ok(Some(HeldBack {
        transaction: transaction as u64,
        pid: row.try_get(1).map_err(what)?,
        state: row.try_get(2).map_err(what)?,
        seconds: row.try_get(3).map_err(what)?,
    }))
}
