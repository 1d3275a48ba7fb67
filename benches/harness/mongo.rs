//! Scenarios on a real MongoDB-API server (`MONGODB_URI`).

use std::sync::Arc;
use std::time::Instant;

use cqrs_benches::{batches, catalog_envelopes, ProductStats};
use cqrs_core::TrackingProcessor;
use cqrs_mongo::{CommitMode, Mongo};

use crate::{report, wanted};

fn uri() -> String {
    std::env::var("MONGODB_URI")
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27017/?directConnection=true".into())
}

/// **Baseline**: a plain `mongodb` program doing the projection's work: each payload parsed,
/// the per-product figures folded in memory, and after every batch each changed document
/// written with one upsert (`replace_one`, in turn). No revisions, no stream versions, no
/// checkpoint.
async fn raw_upserts(db: &mongodb::Database, envelopes: &[cqrs_core::processor::Batch]) -> u64 {
    use mongodb::bson::{doc, Document};
    use std::collections::{HashMap, HashSet};

    let views = db.collection::<Document>("raw_views");
    let mut state: HashMap<String, (i64, i64, i64, i64)> = HashMap::new();
    let mut n = 0u64;
    for batch in envelopes {
        let mut changed: HashSet<String> = HashSet::new();
        for e in &batch.events {
            let payload: serde_json::Value =
                serde_json::from_slice(&e.payload).unwrap_or_else(|e| panic!("{e}"));
            let product = payload["product_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let entry = state.entry(product.clone()).or_default();
            if let Some(price) = payload["price_cents"].as_i64() {
                (entry.0, entry.1) = (price, entry.1 + 1);
            }
            if let Some(rating) = payload["rating"].as_i64() {
                (entry.2, entry.3) = (entry.2 + rating, entry.3 + 1);
            }
            changed.insert(product);
            n += 1;
        }
        for id in changed {
            let (price, changes, sum, ratings) = state[&id];
            let view = doc! { "_id": &id, "price_cents": price, "changes": changes,
            "rating_sum": sum, "ratings": ratings };
            views
                .replace_one(doc! { "_id": &id }, view)
                .upsert(true)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }
    n
}

pub async fn run(events: u64, runs: u64, products: u64, _batch: usize) {
    // Larger batches than in memory: each batch is one round trip of view upserts.
    let envelopes = batches(catalog_envelopes(events, products), 10_000);
    if wanted("mongo_raw_upserts") {
        for run in 0..runs {
            let client = mongodb::Client::with_uri_str(uri())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let db = client.database(&format!("bench_raw_{run}"));
            db.drop().await.unwrap_or_else(|e| panic!("{e}"));
            let start = Instant::now();
            let n = raw_upserts(&db, &envelopes).await;
            report("mongo_raw_upserts", n, start.elapsed().as_secs_f64());
            db.drop().await.unwrap_or_else(|e| panic!("{e}"));
        }
    }
    for (scenario, mode) in [
        ("mongo_read_model_transaction", CommitMode::Transaction),
        ("mongo_read_model_idempotent", CommitMode::Idempotent),
    ] {
        if !wanted(scenario) {
            continue;
        }
        for run in 0..runs {
            let mongo = Mongo::connect(&uri(), &format!("bench_{run}"), "cqrs_")
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .with_commit_mode(mode);
            mongo
                .drop_database()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let processor = TrackingProcessor::new(ProductStats, Arc::new(mongo.view_store()));
            let start = Instant::now();
            let mut applied = 0;
            for batch in &envelopes {
                applied += processor
                    .process(batch)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            report(scenario, applied as u64, start.elapsed().as_secs_f64());
            mongo
                .drop_database()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }
    crate::segments::run(&uri(), runs).await;
    // From the PostgreSQL event store (the log `--pg` leaves in schema `bench_log`).
    if wanted("pg_to_mongo_read_model") {
        let url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let Ok(pg) = cqrs_postgres::Postgres::connect(&url, "bench_log").await else {
            eprintln!("pg_to_mongo_read_model: no PostgreSQL log (run with --pg)");
            return;
        };
        let store = Arc::new(pg.event_store());
        if cqrs_core::EventReader::head(store.as_ref())
            .await
            .unwrap_or(0)
            == 0
        {
            eprintln!("pg_to_mongo_read_model: the PostgreSQL log is empty (run with --pg)");
            return;
        }
        for run in 0..runs {
            let mongo = Mongo::connect(&uri(), &format!("bench_pg_{run}"), "cqrs_")
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            mongo
                .drop_database()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let processor = TrackingProcessor::new(ProductStats, Arc::new(mongo.view_store()))
                .batch_size(10_000);
            let start = Instant::now();
            let n = processor
                .catch_up(store.clone())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            report("pg_to_mongo_read_model", n, start.elapsed().as_secs_f64());
            mongo
                .drop_database()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
