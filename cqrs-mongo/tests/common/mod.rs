//! Shared by the MongoDB tests: a database of their own on the real server.
#![allow(dead_code, missing_docs, clippy::expect_used, clippy::unwrap_used)]

use cqrs_mongo::Mongo;

/// The server's address: `MONGODB_URI`, else the local default the test script starts.
pub fn uri() -> String {
    std::env::var("MONGODB_URI")
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27017/?directConnection=true".to_owned())
}

/// A database of its own for one test. A missing server fails the test loudly.
pub async fn fresh() -> Mongo {
    let name = format!("t_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    match Mongo::connect(&uri(), &name, "cqrs_").await {
        Ok(m) => m,
        Err(e) => panic!(
            "MongoDB is not reachable ({e}). Set MONGODB_URI or run ./scripts/test.sh, which \
             starts a MongoDB-API server."
        ),
    }
}
