//! How a unit of work reaches MongoDB: one transaction on a replica set, or step by step in
//! the framework's `COMMIT_ORDER` on a standalone server.

use async_trait::async_trait;
use cqrs_core::view::{CommitStep, StepwiseCommit, UnitOfWork};
use cqrs_core::{Error, Result};
use mongodb::bson::{doc, Bson, Document};

use crate::backend;
use crate::view::{to_bson, MongoViewStore};

impl MongoViewStore {
    pub(crate) fn view_updates(&self, work: &UnitOfWork) -> Result<Vec<Document>> {
        work.writes
            .iter()
            .map(|w| {
                let view = match &w.view {
                    Some(v) => to_bson(v, &format!("view `{}`", w.id))?,
                    None => Bson::Null,
                };
                let applied: Vec<Bson> = w
                    .applied
                    .iter()
                    .map(|(s, v)| Bson::Document(doc! { "s": s, "v": *v as i64 }))
                    .collect();
                let parked: Vec<Bson> = w
                    .parked
                    .iter()
                    .map(|id| Bson::String(id.to_string()))
                    .collect();
                // A document written before revisions existed has none: it counts as 0.
                let q = if w.revision == 0 {
                    doc! { "_id": &w.id, "$or": [ { "revision": 0_i64 }, { "revision": { "$exists": false } } ] }
                } else {
                    doc! { "_id": &w.id, "revision": w.revision as i64 }
                };
                Ok(doc! {
                    "q": q,
                    "u": { "$set": {
                        "view": view,
                        "applied": applied,
                        "parked": parked,
                        "position": w.position as i64,
                        "revision": w.revision as i64 + 1,
                    } },
                    "upsert": true,
                })
            })
            .collect()
    }

    /// Checks the reply of an `update` command: every view written, or a typed conflict.
    pub(crate) fn check_reply(&self, work: &UnitOfWork, reply: &Document) -> Result<()> {
        if let Ok(errors) = reply.get_array("writeErrors") {
            for e in errors {
                let Some(e) = e.as_document() else { continue };
                let code = e.get_i32("code").unwrap_or_default();
                let index = e.get_i32("index").unwrap_or_default();
                let write = usize::try_from(index).ok().and_then(|i| work.writes.get(i));
                if code == 11000 {
                    let (id, revision) =
                        write.map_or((String::new(), 0), |w| (w.id.clone(), w.revision));
                    return Err(Error::ViewConflict {
                        projection: work.projection.clone(),
                        id,
                        expected: revision,
                        actual: revision + 1,
                    });
                }
                return Err(Error::Backend {
                    backend: "mongo",
                    message: format!(
                        "writing views of `{}`: {}",
                        work.projection,
                        e.get_str("errmsg").unwrap_or("write error")
                    ),
                    source: None,
                });
            }
        }
        let n = match reply.get("n") {
            Some(Bson::Int32(n)) => *n as usize,
            Some(Bson::Int64(n)) => *n as usize,
            _ => 0,
        };
        if n != work.writes.len() {
            return Err(Error::ViewConflict {
                projection: work.projection.clone(),
                id: String::new(),
                expected: 0,
                actual: 0,
            });
        }
        Ok(())
    }

    /// The unit of work in one multi-document transaction.
    pub(crate) async fn commit_in_transaction(&self, work: UnitOfWork) -> Result<()> {
        let views = self.views(&work.projection)?;
        let updates = self.view_updates(&work)?;
        let command = doc! { "update": views.name(), "updates": updates, "ordered": false };
        let letters = self.dead_letter_updates(&work)?;
        let dead = self.mongo.collection("dead_letters");
        let checkpoints = self.mongo.collection("view_checkpoints");
        let resolved = (!work.resolved.is_empty()).then(|| {
            let ids: Vec<String> = work
                .resolved
                .iter()
                .map(|id| format!("{}/{id}", work.projection))
                .collect();
            doc! { "_id": { "$in": ids } }
        });
        // A segment's checkpoint is a document of its own (see `segments::checkpoint_id`).
        let checkpoint_id = match &work.claim {
            Some(claim) => crate::segments::checkpoint_id(&work.projection, claim.segment),
            None => work.projection.clone(),
        };
        let checkpoint = work.checkpoint.map(|c| {
            (
                doc! { "_id": checkpoint_id },
                doc! { "$max": { "position": c as i64 } },
            )
        });
        let claims = self.mongo.collection("segment_claims");
        // Under a claim, its session (recorded with the claim, so a next holder can end it).
        let held = work
            .claim
            .as_ref()
            .and_then(|c| self.mongo.inner.sessions.take(c.token));
        let mut session = match held {
            Some(session) => session,
            None => self
                .mongo
                .inner
                .client
                .start_session()
                .await
                .map_err(|e| backend("starting a session", e))?,
        };
        session
            .start_transaction()
            .await
            .map_err(|e| backend("starting a transaction", e))?;
        let outcome: Result<()> = async {
            // First the fence: the claim read in the transaction's snapshot. It is not
            // written, so a transaction a killed instance left open locks no claim. Two
            // holders that both pass it write the same views, whose revisions refuse one.
            if let Some(claim) = &work.claim {
                let held = claims
                    .find_one(crate::segments::held(&work.projection, claim))
                    .session(&mut session)
                    .await
                    .map_err(|e| backend("checking a segment claim", e))?;
                if held.is_none() {
                    return Err(crate::segments::lost(&work, claim));
                }
            }
            if let Some((q, u)) = &checkpoint {
                checkpoints
                    .update_one(q.clone(), u.clone())
                    .upsert(true)
                    .session(&mut session)
                    .await
                    .map_err(|e| backend("saving the checkpoint", e))?;
            }
            if !work.writes.is_empty() {
                let reply = self
                    .mongo
                    .inner
                    .db
                    .run_command(command)
                    .session(&mut session)
                    .await
                    .map_err(|e| backend("writing views", e))?;
                self.check_reply(&work, &reply)?;
            }
            if let Some(resolved) = &resolved {
                let removed = dead
                    .delete_many(resolved.clone())
                    .session(&mut session)
                    .await
                    .map_err(|e| backend("removing resolved dead letters", e))?;
                // Resolved meanwhile by a concurrent retry: refuse the unit of work.
                if removed.deleted_count != work.resolved.len() as u64 {
                    return Err(Error::ViewConflict {
                        projection: work.projection.clone(),
                        id: "a dead letter resolved concurrently".into(),
                        expected: work.resolved.len() as u64,
                        actual: removed.deleted_count,
                    });
                }
            }
            for (q, u) in letters {
                dead.update_one(q, u)
                    .upsert(true)
                    .session(&mut session)
                    .await
                    .map_err(|e| backend("saving a dead letter", e))?;
            }
            Ok(())
        }
        .await;
        let committed = match outcome {
            Ok(()) => session
                .commit_transaction()
                .await
                .map_err(|e| backend("committing a unit of work", e)),
            Err(e) => {
                if let Err(abort) = session.abort_transaction().await {
                    tracing::warn!(error = %abort, "aborting a transaction failed");
                }
                Err(e)
            }
        };
        // The claim's session serves its next unit of work, unless the claim is gone.
        if let Some(claim) = &work.claim {
            if !matches!(committed, Err(Error::ClaimLost { .. })) {
                self.mongo.inner.sessions.keep(claim.token, session);
            }
        }
        committed
    }

    pub(crate) fn dead_letter_updates(
        &self,
        work: &UnitOfWork,
    ) -> Result<Vec<(Document, Document)>> {
        work.dead_letters
            .iter()
            .map(|d| {
                let envelope =
                    serde_json::to_string(&d.envelope).map_err(|source| Error::Serialize {
                        what: "a dead letter".into(),
                        source,
                    })?;
                let id = format!("{}/{}", work.projection, d.envelope.metadata.event_id);
                let mut set = doc! {
                    "projection": &work.projection,
                    "event_id": d.envelope.metadata.event_id.to_string(),
                    "position": d.envelope.position as i64,
                    "envelope": envelope,
                    "reason": &d.reason,
                    "at": d.at.to_rfc3339(),
                };
                // A letter written again without a view keeps the one it had.
                if let Some(view) = &d.view {
                    set.insert("view", view);
                }
                Ok((doc! { "_id": id }, doc! { "$set": set }))
            })
            .collect()
    }
}

#[async_trait]
impl StepwiseCommit for MongoViewStore {
    /// The steps of [`CommitMode::Idempotent`](crate::CommitMode::Idempotent), in the order `commit` takes them
    /// ([`COMMIT_ORDER`](cqrs_core::view::COMMIT_ORDER)): each is idempotent.
    async fn commit_step(&self, step: CommitStep, work: &UnitOfWork) -> Result<()> {
        match step {
            CommitStep::DeadLetters => {
                let dead = self.mongo.collection("dead_letters");
                for (q, u) in self.dead_letter_updates(work)? {
                    dead.update_one(q, u)
                        .upsert(true)
                        .await
                        .map_err(|e| backend("saving a dead letter", e))?;
                }
            }
            CommitStep::Views if !work.writes.is_empty() => {
                self.check_claim(work).await?;
                let views = self.views(&work.projection)?;
                let command = doc! {
                    "update": views.name(),
                    "updates": self.view_updates(work)?,
                    "ordered": false,
                };
                let reply = self
                    .mongo
                    .inner
                    .db
                    .run_command(command)
                    .await
                    .map_err(|e| backend("writing views", e))?;
                self.check_reply(work, &reply)?;
            }
            // Without a transaction a crash between the views and this removal leaves the
            // dead letter in place: retrying it again applies it again (at least once).
            CommitStep::Resolved if !work.resolved.is_empty() => {
                let ids: Vec<String> = work
                    .resolved
                    .iter()
                    .map(|id| format!("{}/{id}", work.projection))
                    .collect();
                self.mongo
                    .collection("dead_letters")
                    .delete_many(doc! { "_id": { "$in": ids } })
                    .await
                    .map_err(|e| backend("removing resolved dead letters", e))?;
            }
            CommitStep::Checkpoint => {
                if let Some(claim) = &work.claim {
                    // The checkpoint moves only while the store holds the claim.
                    self.check_claim(work).await?;
                    if let Some(c) = work.checkpoint {
                        let id = crate::segments::checkpoint_id(&work.projection, claim.segment);
                        self.mongo
                            .collection("view_checkpoints")
                            .update_one(
                                doc! { "_id": id },
                                doc! { "$max": { "position": c as i64 } },
                            )
                            .upsert(true)
                            .await
                            .map_err(|e| backend("saving a segment's checkpoint", e))?;
                    }
                } else if let Some(c) = work.checkpoint {
                    self.mongo
                        .collection("view_checkpoints")
                        .update_one(
                            doc! { "_id": &work.projection },
                            doc! { "$max": { "position": c as i64 } },
                        )
                        .upsert(true)
                        .await
                        .map_err(|e| backend("saving the checkpoint", e))?;
                }
            }
            CommitStep::Views | CommitStep::Resolved => {}
            other => {
                return Err(Error::Config(format!(
                    "this MongoDB store does not know the commit step {other:?}"
                )))
            }
        }
        Ok(())
    }
}
