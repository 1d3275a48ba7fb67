//! Read models in MongoDB: one collection per projection, batched conditional upserts.

use std::collections::BTreeMap;

use async_trait::async_trait;
use cqrs_core::view::{commit_in_order, Atomicity, DeadLetter, StoredDoc, UnitOfWork};
use cqrs_core::{
    DeadLetterCursor, DeadLetterStore, Error, Filter, Order, Query, Result, ViewQuery, ViewStore,
};
use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use serde_json::Value;
use uuid::Uuid;

use crate::names::{field_path, validate_projection};
use crate::{backend, CommitMode, Mongo};

/// Views, checkpoints and dead letters in MongoDB.
///
/// A batch's views go to the server as one `update` command of conditional upserts: each
/// names the revision the view was loaded at, so a view another processor changed meanwhile
/// is refused (a view conflict) rather than overwritten. On a replica set the views, dead
/// letters and checkpoint commit in one transaction. On a standalone server they are written
/// dead letters first, then views, checkpoint last, and every view records what it applied, so
/// a batch written twice changes nothing. Either way a batch's events reach the views exactly
/// once. Without a transaction dead letters are at least once: a crash before the checkpoint
/// repeats the batch, which records them again, and a retried dead letter whose view was
/// written but whose removal was not (a crash in between) is applied again when retried.
#[derive(Debug, Clone)]
pub struct MongoViewStore {
    pub(crate) mongo: Mongo,
}

pub(crate) fn to_bson(value: &Value, what: &str) -> Result<Bson> {
    mongodb::bson::to_bson(value).map_err(|e| Error::Malformed {
        what: what.to_owned(),
        reason: format!("cannot be stored in MongoDB: {e}"),
    })
}

fn to_json(value: Bson) -> Value {
    value.into_relaxed_extjson()
}

fn malformed(projection: &str, id: &str, reason: impl Into<String>) -> Error {
    Error::Malformed {
        what: format!("document `{id}` of projection `{projection}`"),
        reason: reason.into(),
    }
}

fn from_document(projection: &str, d: Document) -> Result<StoredDoc> {
    let id = match d.get("_id") {
        Some(Bson::String(s)) => s.clone(),
        other => {
            return Err(malformed(
                projection,
                &format!("{other:?}"),
                "its _id is not a string",
            ))
        }
    };
    let view = match d.get("view") {
        None | Some(Bson::Null) => None,
        Some(v) => Some(to_json(v.clone())),
    };
    let mut applied = BTreeMap::new();
    if let Some(list) = d.get("applied") {
        let Bson::Array(list) = list else {
            return Err(malformed(projection, &id, "`applied` is not an array"));
        };
        for entry in list {
            let (Some(s), Some(v)) = (
                entry.as_document().and_then(|e| e.get_str("s").ok()),
                entry.as_document().and_then(|e| e.get_i64("v").ok()),
            ) else {
                return Err(malformed(
                    projection,
                    &id,
                    "an `applied` entry is not {s, v}",
                ));
            };
            applied.insert(s.to_owned(), v as u64);
        }
    }
    let mut parked = std::collections::BTreeSet::new();
    if let Some(list) = d.get("parked") {
        let Bson::Array(list) = list else {
            return Err(malformed(projection, &id, "`parked` is not an array"));
        };
        for entry in list {
            let Some(event_id) = entry.as_str().and_then(|e| e.parse::<uuid::Uuid>().ok()) else {
                return Err(malformed(
                    projection,
                    &id,
                    "a `parked` entry is not an event id",
                ));
            };
            parked.insert(event_id);
        }
    }
    let number = |field: &str| -> Result<u64> {
        match d.get(field) {
            None => Ok(0),
            Some(Bson::Int64(n)) => Ok(*n as u64),
            Some(Bson::Int32(n)) => Ok(*n as u64),
            Some(other) => Err(malformed(projection, &id, format!("`{field}` is {other}"))),
        }
    };
    Ok(StoredDoc {
        view,
        applied,
        position: number("position")?,
        revision: number("revision")?,
        parked,
        id,
    })
}

fn condition(filter: &Filter, out: &mut Vec<Document>) -> Result<()> {
    let mut op = |path: &str, operator: &str, value: &Value| -> Result<()> {
        let field = field_path(path)?;
        let value = to_bson(value, "a filter value")?;
        out.push(doc! { field: { operator: value } });
        Ok(())
    };
    match filter {
        Filter::All => Ok(()),
        Filter::Eq(p, v) => op(p, "$eq", v),
        Filter::Gt(p, v) => op(p, "$gt", v),
        Filter::Gte(p, v) => op(p, "$gte", v),
        Filter::Lt(p, v) => op(p, "$lt", v),
        Filter::Lte(p, v) => op(p, "$lte", v),
        Filter::And(all) => all.iter().try_for_each(|f| condition(f, out)),
        other => Err(Error::Config(format!("unsupported filter {other:?}"))),
    }
}

fn query_filter(filter: &Filter) -> Result<Document> {
    let mut all = vec![doc! { "view": { "$ne": Bson::Null } }];
    condition(filter, &mut all)?;
    Ok(doc! { "$and": all })
}

impl MongoViewStore {
    pub(crate) fn new(mongo: Mongo) -> Self {
        MongoViewStore { mongo }
    }

    /// The store's commit mode.
    pub fn commit_mode(&self) -> CommitMode {
        self.mongo.commit_mode()
    }

    pub(crate) fn views(&self, projection: &str) -> Result<mongodb::Collection<Document>> {
        validate_projection(projection)?;
        Ok(self.mongo.collection(&format!("view_{projection}")))
    }

    /// Creates an ascending index on a view field (idempotent), for filters and sorts.
    ///
    /// # Errors
    /// [`Error::Config`] for a bad projection or path; a backend error.
    pub async fn create_index(&self, projection: &str, path: &str) -> Result<()> {
        let field = field_path(path)?;
        let model = mongodb::IndexModel::builder()
            .keys(doc! { field: 1, "_id": 1 })
            .build();
        self.views(projection)?
            .create_index(model)
            .await
            .map(|_| ())
            .map_err(|e| backend("creating an index", e))
    }
}

#[async_trait]
impl ViewStore for MongoViewStore {
    async fn load(&self, projection: &str, ids: &[String]) -> Result<Vec<StoredDoc>> {
        let cursor = self
            .views(projection)?
            .find(doc! { "_id": { "$in": ids } })
            .await
            .map_err(|e| backend("loading views", e))?;
        let docs: Vec<Document> = cursor
            .try_collect()
            .await
            .map_err(|e| backend("loading views", e))?;
        docs.into_iter()
            .map(|d| from_document(projection, d))
            .collect()
    }

    async fn commit(&self, work: UnitOfWork) -> Result<()> {
        match self.mongo.inner.mode {
            CommitMode::Idempotent => commit_in_order(self, &work).await,
            CommitMode::Transaction => self.commit_in_transaction(work).await,
        }
    }

    fn atomicity(&self) -> Atomicity {
        match self.mongo.inner.mode {
            CommitMode::Transaction => Atomicity::Atomic,
            CommitMode::Idempotent => Atomicity::Stepwise,
        }
    }

    async fn checkpoint(&self, projection: &str) -> Result<Option<u64>> {
        let found = self
            .mongo
            .collection("view_checkpoints")
            .find_one(doc! { "_id": projection })
            .await
            .map_err(|e| backend("loading a checkpoint", e))?;
        Ok(found
            .and_then(|d| d.get_i64("position").ok())
            .map(|p| p as u64))
    }

    fn claims(&self) -> Option<&dyn cqrs_core::segment::SegmentClaims> {
        Some(self)
    }

    async fn reset(&self, projection: &str) -> Result<()> {
        self.reset_claims(projection).await?;
        self.views(projection)?
            .drop()
            .await
            .map_err(|e| backend("dropping views", e))?;
        self.mongo
            .collection("view_checkpoints")
            .delete_one(doc! { "_id": projection })
            .await
            .map_err(|e| backend("deleting a checkpoint", e))?;
        self.mongo
            .collection("dead_letters")
            .delete_many(doc! { "projection": projection })
            .await
            .map(|_| ())
            .map_err(|e| backend("deleting dead letters", e))
    }
}

#[async_trait]
impl ViewQuery for MongoViewStore {
    async fn get(&self, projection: &str, id: &str) -> Result<Option<Value>> {
        let found = self
            .views(projection)?
            .find_one(doc! { "_id": id })
            .await
            .map_err(|e| backend("reading a view", e))?;
        Ok(
            match found.map(|d| from_document(projection, d)).transpose()? {
                Some(doc) => doc.view,
                None => None,
            },
        )
    }

    async fn find(&self, projection: &str, query: &Query) -> Result<Vec<(String, Value)>> {
        let mut sort = Document::new();
        for (path, order) in &query.sort {
            sort.insert(field_path(path)?, if *order == Order::Asc { 1 } else { -1 });
        }
        sort.insert("_id", 1);
        let views = self.views(projection)?;
        let mut find = views
            .find(query_filter(&query.filter)?)
            .sort(sort)
            .skip(query.skip);
        if let Some(limit) = query.limit {
            find = find.limit(i64::try_from(limit).unwrap_or(i64::MAX));
        }
        let docs: Vec<Document> = find
            .await
            .map_err(|e| backend("querying views", e))?
            .try_collect()
            .await
            .map_err(|e| backend("querying views", e))?;
        let mut out = Vec::with_capacity(docs.len());
        for d in docs {
            let doc = from_document(projection, d)?;
            if let Some(view) = doc.view {
                out.push((doc.id, view));
            }
        }
        Ok(out)
    }

    async fn count(&self, projection: &str, filter: &Filter) -> Result<u64> {
        self.views(projection)?
            .count_documents(query_filter(filter)?)
            .await
            .map_err(|e| backend("counting views", e))
    }
}

#[async_trait]
impl DeadLetterStore for MongoViewStore {
    async fn dead_letters_page(
        &self,
        projection: &str,
        after: Option<DeadLetterCursor>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>> {
        if limit == 0 {
            // MongoDB reads a limit of 0 as none at all.
            return Ok(Vec::new());
        }
        // Event ids are stored as hyphenated lowercase hex: as strings they sort as the ids do.
        let filter = match after {
            None => doc! { "projection": projection },
            Some(a) => {
                let position = i64::try_from(a.position).unwrap_or(i64::MAX);
                doc! {
                    "projection": projection,
                    "$or": [
                        { "position": { "$gt": position } },
                        { "position": position, "event_id": { "$gt": a.event_id.to_string() } },
                    ],
                }
            }
        };
        let docs: Vec<Document> = self
            .mongo
            .collection("dead_letters")
            .find(filter)
            .sort(doc! { "position": 1, "event_id": 1 })
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await
            .map_err(|e| backend("listing dead letters", e))?
            .try_collect()
            .await
            .map_err(|e| backend("listing dead letters", e))?;
        docs.into_iter()
            .map(|d| {
                let bad = |reason: &str| Error::Malformed {
                    what: format!("a dead letter of `{projection}`"),
                    reason: reason.to_owned(),
                };
                let envelope = d.get_str("envelope").map_err(|_| bad("no envelope"))?;
                let at = d.get_str("at").map_err(|_| bad("no time"))?;
                Ok(DeadLetter {
                    projection: projection.to_owned(),
                    envelope: serde_json::from_str(envelope).map_err(|e| bad(&e.to_string()))?,
                    reason: d
                        .get_str("reason")
                        .map_err(|_| bad("no reason"))?
                        .to_owned(),
                    at: chrono::DateTime::parse_from_rfc3339(at)
                        .map_err(|e| bad(&e.to_string()))?
                        .with_timezone(&chrono::Utc),
                    view: d.get_str("view").ok().map(str::to_owned),
                })
            })
            .collect()
    }

    async fn remove_dead_letter(&self, projection: &str, event_id: Uuid) -> Result<bool> {
        let id = format!("{projection}/{event_id}");
        let done = self
            .mongo
            .collection("dead_letters")
            .delete_one(doc! { "_id": id })
            .await
            .map_err(|e| backend("removing a dead letter", e))?;
        Ok(done.deleted_count > 0)
    }
}
