//! The dead letters PostgreSQL keeps beside the views: paged in the order of their events'
//! positions, listed, and removed on request.

use async_trait::async_trait;
use cqrs_core::view::{DeadLetter, DeadLetterCursor, DeadLetterStore};
use cqrs_core::Result;
use sqlx::Row;
use uuid::Uuid;

use crate::error::db;
use crate::view::{parse, PgViewStore};

#[async_trait]
impl DeadLetterStore for PgViewStore {
    async fn dead_letters_page(
        &self,
        projection: &str,
        after: Option<DeadLetterCursor>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>> {
        // Keyset paging on the (projection, position, event_id) order: no OFFSET to scan.
        let (position, event_id) = after.map_or((-1, Uuid::nil()), |a| {
            (i64::try_from(a.position).unwrap_or(i64::MAX), a.event_id)
        });
        let rows = sqlx::query(self.schema().sql(
            "SELECT envelope::text, reason, at, view_id FROM {schema}.dead_letters
              WHERE projection = $1 AND (position, event_id) > ($2, $3)
              ORDER BY position, event_id LIMIT $4",
        ))
        .bind(projection)
        .bind(position)
        .bind(event_id)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(self.pool())
        .await
        .map_err(|e| db("listing dead letters", e))?;
        rows.iter()
            .map(|row| {
                let envelope: String = row.try_get(0).map_err(|e| db("listing dead letters", e))?;
                Ok(DeadLetter {
                    projection: projection.to_owned(),
                    envelope: parse(&envelope, || format!("dead letter of `{projection}`"))?,
                    reason: row.try_get(1).map_err(|e| db("listing dead letters", e))?,
                    at: row.try_get(2).map_err(|e| db("listing dead letters", e))?,
                    view: row.try_get(3).map_err(|e| db("listing dead letters", e))?,
                })
            })
            .collect()
    }

    async fn remove_dead_letter(&self, projection: &str, event_id: Uuid) -> Result<bool> {
        let done = sqlx::query(
            self.schema()
                .sql("DELETE FROM {schema}.dead_letters WHERE projection = $1 AND event_id = $2"),
        )
        .bind(projection)
        .bind(event_id)
        .execute(self.pool())
        .await
        .map_err(|e| db("removing a dead letter", e))?;
        Ok(done.rows_affected() > 0)
    }
}
