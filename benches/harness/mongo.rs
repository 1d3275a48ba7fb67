//! Scenarios on a real MongoDB-API server (`MONGODB_URI`).

use std::sync::Arc;
use std::time::Instant;

use cqrs_benches::{batches, catalog_envelopes, ProductStats};
use cqrs_core::TrackingProcessor;
use cqrs_mongo::{CommitMode, Mongo};

use crate::raw_fold::{Figures, RawFold};
use crate::{report, wanted};

fn uri() -> String {
    std::env::var("MONGODB_URI")
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27017/?directConnection=true".into())
}

/// Writes changed views with one `update` command of upserts (what drivers send for a bulk
/// write to servers before MongoDB 8.0).
async fn bulk_upsert(db: &mongodb::Database, changed: Vec<(String, Figures)>) {
    use mongodb::bson::{doc, Document};
    if changed.is_empty() {
        return;
    }
    let updates: Vec<Document> = changed
        .into_iter()
        .map(|(id, f)| {
            doc! {
                "q": { "_id": &id },
                "u": { "_id": &id, "price_cents": f.price_cents, "changes": f.changes,
                       "rating_sum": f.rating_sum, "ratings": f.ratings },
                "upsert": true,
            }
        })
        .collect();
    let expected = updates.len() as i64;
    let reply = db
        .run_command(doc! { "update": "raw_views", "updates": updates, "ordered": false })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // A refused upsert is reported in the reply, not as an error: the baseline must not
    // count writes that did not happen.
    assert!(!reply.contains_key("writeErrors"), "{reply:?}");
    let matched = reply
        .get_i32("n")
        .map(i64::from)
        .or_else(|_| reply.get_i64("n"));
    assert_eq!(matched.ok(), Some(expected), "{reply:?}");
}

/// **Baseline**: a plain `mongodb` program doing the projection's work: each payload parsed,
/// the per-product figures folded in memory, and after every batch the changed documents
/// written in one bulk request of upserts. No revisions, no stream versions, no checkpoint.
async fn raw_bulk_upserts(
    db: &mongodb::Database,
    envelopes: &[cqrs_core::processor::Batch],
) -> u64 {
    let mut fold = RawFold::default();
    let mut n = 0u64;
    for batch in envelopes {
        for e in &batch.events {
            fold.apply(&e.payload);
            n += 1;
        }
        bulk_upsert(db, fold.take_changed()).await;
    }
    n
}

pub async fn run(events: u64, runs: u64, products: u64, _batch: usize) {
    // Larger batches than in memory: each batch is one round trip of view upserts.
    let envelopes = batches(catalog_envelopes(events, products), 10_000);
    if wanted("mongo_raw_bulk_upserts") {
        for run in 0..runs {
            let client = mongodb::Client::with_uri_str(uri())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let db = client.database(&format!("bench_raw_{run}"));
            db.drop().await.unwrap_or_else(|e| panic!("{e}"));
            let start = Instant::now();
            let n = raw_bulk_upserts(&db, &envelopes).await;
            report("mongo_raw_bulk_upserts", n, start.elapsed().as_secs_f64());
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
    if wanted("pg_to_mongo_read_model") || wanted("pg_raw_to_mongo") {
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
        // **Baseline**: the log streamed with a plain `SELECT`, folded, and the changed
        // documents written in one bulk request every 10 000 rows.
        if wanted("pg_raw_to_mongo") {
            let pool = crate::pg_raw::pool().await;
            for run in 0..runs {
                let client = mongodb::Client::with_uri_str(uri())
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                let db = client.database(&format!("bench_raw_pg_{run}"));
                db.drop().await.unwrap_or_else(|e| panic!("{e}"));
                let start = Instant::now();
                let n = crate::pg_raw::fold_log(&pool, "bench_log", 10_000, |changed, _| {
                    let db = db.clone();
                    async move { bulk_upsert(&db, changed).await }
                })
                .await;
                report("pg_raw_to_mongo", n, start.elapsed().as_secs_f64());
                db.drop().await.unwrap_or_else(|e| panic!("{e}"));
            }
        }
        for run in 0..runs {
            if !wanted("pg_to_mongo_read_model") {
                break;
            }
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
