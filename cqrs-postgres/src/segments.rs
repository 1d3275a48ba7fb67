//! Segment claims on PostgreSQL, beside the views: leases by the server's clock, a new token
//! per claim, checked (and the row locked) in the unit of work that moves the checkpoint.

use std::time::Duration;

use async_trait::async_trait;
use cqrs_core::segment::{count_changed, Claim, Claimed, Segment, SegmentClaims};
use cqrs_core::{Error, Result};
use sqlx::{Postgres, Row, Transaction};
use uuid::Uuid;

use crate::error::db;
use crate::view::PgViewStore;

fn seconds(lease: Duration) -> f64 {
    lease.as_secs_f64()
}

fn index(segment: Segment) -> i32 {
    i32::try_from(segment.index).unwrap_or(i32::MAX)
}

impl PgViewStore {
    /// Locks the claim's row in the unit of work and checks its token: a claim taken meanwhile
    /// refuses the whole unit of work; one taken after waits for it to commit.
    pub(crate) async fn fence(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        projection: &str,
        claim: &Claim,
    ) -> Result<()> {
        let held: Option<i32> = sqlx::query_scalar(self.schema().sql(
            "SELECT segment FROM {schema}.segment_claims
              WHERE projection = $1 AND segment = $2 AND token = $3 FOR UPDATE",
        ))
        .bind(projection)
        .bind(index(claim.segment))
        .bind(claim.token)
        .fetch_optional(&mut **tx)
        .await
        .map_err(|e| db("checking a segment claim", e))?;
        match held {
            Some(_) => Ok(()),
            None => Err(Error::ClaimLost {
                projection: projection.to_owned(),
                segment: claim.segment,
            }),
        }
    }

    /// Moves a segment's checkpoint (its row is locked by [`fence`](Self::fence)).
    pub(crate) async fn segment_checkpoint(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        projection: &str,
        claim: &Claim,
        position: u64,
    ) -> Result<()> {
        sqlx::query(self.schema().sql(
            "UPDATE {schema}.segment_claims
                SET position = greatest(coalesce(position, 0), $3)
              WHERE projection = $1 AND segment = $2",
        ))
        .bind(projection)
        .bind(index(claim.segment))
        .bind(position as i64)
        .execute(&mut **tx)
        .await
        .map(|_| ())
        .map_err(|e| db("saving a segment's checkpoint", e))
    }
}

#[async_trait]
impl SegmentClaims for PgViewStore {
    async fn heartbeat(&self, projection: &str, owner: Uuid, lease: Duration) -> Result<u32> {
        let live: i64 = sqlx::query_scalar(self.schema().sql(
            "WITH beat AS (
                INSERT INTO {schema}.segment_members (projection, owner, lease_until)
                VALUES ($1, $2, now() + make_interval(secs => $3))
                ON CONFLICT (projection, owner) DO UPDATE SET lease_until = excluded.lease_until
             ), gone AS (
                -- Rows another member is deleting too are skipped: two members cleaning up
                -- at once would otherwise wait for each other.
                DELETE FROM {schema}.segment_members
                 WHERE (projection, owner) IN (
                    SELECT projection, owner FROM {schema}.segment_members
                     WHERE projection = $1 AND lease_until <= now() AND owner <> $2
                       FOR UPDATE SKIP LOCKED)
             )
             SELECT count(*) FROM {schema}.segment_members
              WHERE projection = $1 AND lease_until > now() AND owner <> $2",
        ))
        .bind(projection)
        .bind(owner)
        .bind(seconds(lease))
        .fetch_one(self.pool())
        .await
        .map_err(|e| db("a segment heartbeat", e))?;
        // The statement sees the table as it was before it: itself counted apart.
        let me = u32::from(!lease.is_zero());
        Ok(u32::try_from(live).unwrap_or(u32::MAX).saturating_add(me))
    }

    async fn claim(
        &self,
        projection: &str,
        segment: Segment,
        owner: Uuid,
        lease: Duration,
    ) -> Result<Option<Claimed>> {
        let other: Option<i32> = sqlx::query_scalar(self.schema().sql(
            "SELECT segments FROM {schema}.segment_claims
              WHERE projection = $1 AND segments <> $2 LIMIT 1",
        ))
        .bind(projection)
        .bind(i32::try_from(segment.count).unwrap_or(i32::MAX))
        .fetch_optional(self.pool())
        .await
        .map_err(|e| db("claiming a segment", e))?;
        if let Some(stored) = other {
            return Err(count_changed(
                projection,
                u32::try_from(stored).unwrap_or(0),
                segment.count,
            ));
        }
        let token = Uuid::new_v4();
        // A free row (no token, or its lease over) is taken; a row another session has locked
        // (a holder frozen in the middle of its unit of work) is skipped, not waited on: the
        // round goes on with the other segments and tries this one again next time, once the
        // server has ended the frozen session (docs/adr/0018).
        let row = sqlx::query(self.schema().sql(
            "WITH free AS (
                SELECT segment FROM {schema}.segment_claims
                 WHERE projection = $1 AND segment = $2
                   AND (token IS NULL OR lease_until <= now())
                   FOR UPDATE SKIP LOCKED
             ), taken AS (
                UPDATE {schema}.segment_claims c
                   SET owner = $4, token = $5, lease_until = now() + make_interval(secs => $6)
                  FROM free
                 WHERE c.projection = $1 AND c.segment = free.segment
                RETURNING c.position
             ), fresh AS (
                INSERT INTO {schema}.segment_claims
                       (projection, segment, segments, owner, token, lease_until)
                SELECT $1, $2, $3, $4, $5, now() + make_interval(secs => $6)
                 WHERE NOT EXISTS (SELECT 1 FROM {schema}.segment_claims
                                    WHERE projection = $1 AND segment = $2)
                ON CONFLICT (projection, segment) DO NOTHING
                RETURNING position
             )
             SELECT position FROM taken UNION ALL SELECT position FROM fresh",
        ))
        .bind(projection)
        .bind(index(segment))
        .bind(i32::try_from(segment.count).unwrap_or(i32::MAX))
        .bind(owner)
        .bind(token)
        .bind(seconds(lease))
        .fetch_optional(self.pool())
        .await
        .map_err(|e| db("claiming a segment", e))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let position: Option<i64> = row.try_get(0).map_err(|e| db("claiming a segment", e))?;
        Ok(Some(Claimed {
            claim: Claim {
                segment,
                owner,
                token,
            },
            checkpoint: position.map(|p| p as u64),
        }))
    }

    async fn renew(&self, projection: &str, claim: &Claim, lease: Duration) -> Result<bool> {
        let done = sqlx::query(self.schema().sql(
            "UPDATE {schema}.segment_claims SET lease_until = now() + make_interval(secs => $4)
              WHERE projection = $1 AND segment = $2 AND token = $3",
        ))
        .bind(projection)
        .bind(index(claim.segment))
        .bind(claim.token)
        .bind(seconds(lease))
        .execute(self.pool())
        .await
        .map_err(|e| db("renewing a segment claim", e))?;
        Ok(done.rows_affected() == 1)
    }

    async fn release(&self, projection: &str, claim: &Claim) -> Result<()> {
        sqlx::query(self.schema().sql(
            "UPDATE {schema}.segment_claims SET owner = NULL, token = NULL, lease_until = now()
              WHERE projection = $1 AND segment = $2 AND token = $3",
        ))
        .bind(projection)
        .bind(index(claim.segment))
        .bind(claim.token)
        .execute(self.pool())
        .await
        .map(|_| ())
        .map_err(|e| db("releasing a segment claim", e))
    }
}
