//! Named checkpoints in MongoDB.

use async_trait::async_trait;
use cqrs_core::{CheckpointStore, Result};
use mongodb::bson::doc;

use crate::{backend, Mongo};

/// Named checkpoints in the `<prefix>checkpoints` collection.
#[derive(Debug, Clone)]
pub struct MongoCheckpointStore {
    mongo: Mongo,
}

impl MongoCheckpointStore {
    pub(crate) fn new(mongo: Mongo) -> Self {
        MongoCheckpointStore { mongo }
    }
}

#[async_trait]
impl CheckpointStore for MongoCheckpointStore {
    async fn load(&self, name: &str) -> Result<Option<u64>> {
        let found = self
            .mongo
            .collection("checkpoints")
            .find_one(doc! { "_id": name })
            .await
            .map_err(|e| backend("loading a checkpoint", e))?;
        Ok(found
            .and_then(|d| d.get_i64("position").ok())
            .map(|p| p as u64))
    }

    async fn save(&self, name: &str, position: u64) -> Result<()> {
        self.mongo
            .collection("checkpoints")
            .update_one(
                doc! { "_id": name },
                doc! { "$set": { "position": position as i64 } },
            )
            .upsert(true)
            .await
            .map(|_| ())
            .map_err(|e| backend("saving a checkpoint", e))
    }
}
