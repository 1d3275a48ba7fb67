//! Segment claims in MongoDB, beside the views: `<prefix>segment_claims` (one document per
//! segment: its token, lease and checkpoint) and `<prefix>segment_members`. Leases are
//! measured by the instances' clocks.

use std::time::Duration;

use async_trait::async_trait;
use cqrs_core::segment::{count_changed, Claim, Claimed, Segment, SegmentClaims};
use cqrs_core::view::UnitOfWork;
use cqrs_core::{Error, Result};
use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::options::ReturnDocument;
use uuid::Uuid;

use crate::backend;
use crate::view::MongoViewStore;

fn until(lease: Duration) -> DateTime {
    let millis = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    DateTime::from_millis(DateTime::now().timestamp_millis().saturating_add(millis))
}

fn id(projection: &str, segment: Segment) -> String {
    format!("{projection}/{}", segment.index)
}

/// The filter of a claim's document while the store holds its token.
pub(crate) fn held(projection: &str, claim: &Claim) -> Document {
    doc! { "_id": id(projection, claim.segment), "token": claim.token.to_string() }
}

/// Where a segment's checkpoint is kept: in `<prefix>view_checkpoints`, apart from its claim,
/// so that a transaction left open by a killed instance holds no lock on the claim (the next
/// holder's claim would wait for it).
pub(crate) fn checkpoint_id(projection: &str, segment: Segment) -> String {
    format!("{projection}#{}", segment.index)
}

/// The error for a unit of work whose claim the store no longer holds.
pub(crate) fn lost(work: &UnitOfWork, claim: &Claim) -> Error {
    Error::ClaimLost {
        projection: work.projection.clone(),
        segment: claim.segment,
    }
}

#[async_trait]
impl SegmentClaims for MongoViewStore {
    async fn heartbeat(&self, projection: &str, owner: Uuid, lease: Duration) -> Result<u32> {
        let members = self.mongo.collection("segment_members");
        members
            .update_one(
                doc! { "_id": format!("{projection}/{owner}") },
                doc! { "$set": { "projection": projection, "until": until(lease) } },
            )
            .upsert(true)
            .await
            .map_err(|e| backend("a segment heartbeat", e))?;
        let now = DateTime::now();
        members
            .delete_many(doc! { "projection": projection, "until": { "$lte": now } })
            .await
            .map_err(|e| backend("a segment heartbeat", e))?;
        let live = members
            .count_documents(doc! { "projection": projection, "until": { "$gt": now } })
            .await
            .map_err(|e| backend("a segment heartbeat", e))?;
        Ok(u32::try_from(live).unwrap_or(u32::MAX))
    }

    async fn claim(
        &self,
        projection: &str,
        segment: Segment,
        owner: Uuid,
        lease: Duration,
    ) -> Result<Option<Claimed>> {
        let claims = self.mongo.collection("segment_claims");
        let count = i64::from(segment.count);
        let other = claims
            .find_one(doc! { "projection": projection, "segments": { "$ne": count } })
            .await
            .map_err(|e| backend("claiming a segment", e))?;
        if let Some(other) = other {
            let stored = other.get_i64("segments").unwrap_or_default();
            return Err(count_changed(
                projection,
                u32::try_from(stored).unwrap_or(0),
                segment.count,
            ));
        }
        let token = Uuid::new_v4();
        // The session this claim's units of work will commit in, recorded with the claim so
        // that whoever takes the segment over after it can end it (see `fencing`).
        let session = self
            .mongo
            .inner
            .client
            .start_session()
            .await
            .map_err(|e| backend("starting a claim's session", e))?;
        let free = doc! {
            "_id": id(projection, segment),
            "$or": [ { "token": Bson::Null }, { "until": { "$lte": DateTime::now() } } ],
        };
        let take = doc! { "$set": {
            "projection": projection,
            "segment": i64::from(segment.index),
            "segments": count,
            "owner": owner.to_string(),
            "token": token.to_string(),
            "until": until(lease),
            "lsid": session.id().clone(),
        } };
        // The document as it was: none when the claim is the segment's first.
        let previous = claims
            .find_one_and_update(free, take)
            .upsert(true)
            .return_document(ReturnDocument::Before)
            .await;
        let previous = match previous {
            Ok(previous) => previous,
            // Held by another: the filter missed and the upsert met the existing `_id`.
            Err(e) if crate::is_duplicate_key(&e) => return Ok(None),
            Err(e) => return Err(backend("claiming a segment", e)),
        };
        // Taken over from a holder whose lease ran out: end its session before anything of
        // this claim writes, so a transaction it left open no longer holds the documents.
        if previous
            .as_ref()
            .is_some_and(|p| !matches!(p.get("token"), None | Some(Bson::Null)))
        {
            crate::fencing::end_previous(&self.mongo.inner.client, previous.as_ref(), projection)
                .await;
        }
        self.mongo.inner.sessions.keep(token, session);
        let kept = self
            .mongo
            .collection("view_checkpoints")
            .find_one(doc! { "_id": checkpoint_id(projection, segment) })
            .await
            .map_err(|e| backend("loading a segment's checkpoint", e))?;
        let checkpoint = match kept.as_ref().and_then(|d| d.get("position")) {
            Some(Bson::Int64(p)) => Some(*p as u64),
            Some(Bson::Int32(p)) => Some(*p as u64),
            _ => None,
        };
        Ok(Some(Claimed {
            claim: Claim {
                segment,
                owner,
                token,
            },
            checkpoint,
        }))
    }

    async fn renew(&self, projection: &str, claim: &Claim, lease: Duration) -> Result<bool> {
        let done = self
            .mongo
            .collection("segment_claims")
            .update_one(
                held(projection, claim),
                doc! { "$set": { "until": until(lease) } },
            )
            .await
            .map_err(|e| backend("renewing a segment claim", e))?;
        Ok(done.matched_count == 1)
    }

    async fn release(&self, projection: &str, claim: &Claim) -> Result<()> {
        self.mongo.inner.sessions.forget(claim.token);
        self.mongo
            .collection("segment_claims")
            .update_one(
                held(projection, claim),
                doc! { "$set": { "token": Bson::Null, "owner": Bson::Null, "until": DateTime::now() } },
            )
            .await
            .map(|_| ())
            .map_err(|e| backend("releasing a segment claim", e))
    }
}

impl MongoViewStore {
    /// Fails with [`Error::ClaimLost`] unless the store still holds the unit of work's claim.
    /// Without a transaction it is a read before the views and again before the checkpoint,
    /// not a conditional write: a holder fenced out between the read and its writes is caught
    /// by the views' revisions (its checkpoint `$max` never passes what its views applied).
    pub(crate) async fn check_claim(&self, work: &UnitOfWork) -> Result<()> {
        let Some(claim) = &work.claim else {
            return Ok(());
        };
        let found = self
            .mongo
            .collection("segment_claims")
            .find_one(held(&work.projection, claim))
            .await
            .map_err(|e| backend("checking a segment claim", e))?;
        match found {
            Some(_) => Ok(()),
            None => Err(lost(work, claim)),
        }
    }

    /// Deletes a projection's claims, members and segment checkpoints (a reset).
    pub(crate) async fn reset_claims(&self, projection: &str) -> Result<()> {
        let mine = format!("^{}#", regex_escape(projection));
        self.mongo
            .collection("view_checkpoints")
            .delete_many(doc! { "_id": { "$regex": mine } })
            .await
            .map_err(|e| backend("deleting segment checkpoints", e))?;
        for name in ["segment_claims", "segment_members"] {
            self.mongo
                .collection(name)
                .delete_many(doc! { "projection": projection })
                .await
                .map_err(|e| backend("deleting segment claims", e))?;
        }
        Ok(())
    }
}

/// `text` as a regular expression that matches it literally.
fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if !c.is_alphanumeric() && c != '_' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
