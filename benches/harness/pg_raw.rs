//! Raw baselines beside the PostgreSQL scenarios, in the same invocation: what a plain `sqlx`
//! program does for the same work, so each framework figure is read as a ratio.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::TryStreamExt as _;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};

/// A pool like the framework's (32 connections) on `DATABASE_URL`.
pub async fn pool() -> PgPool {
    PgPoolOptions::new()
        .max_connections(32)
        .connect(&super::pg::url())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A plain event table: what a user writes without a framework.
pub async fn raw_table(pool: &PgPool, schema: &str, products: u64) {
    let ddl = format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema};
         CREATE TABLE {schema}.events (
             position bigserial PRIMARY KEY,
             stream_id text NOT NULL,
             version bigint NOT NULL,
             event_name text NOT NULL,
             payload jsonb NOT NULL,
             created_at timestamptz NOT NULL DEFAULT now(),
             UNIQUE (stream_id, version));
         INSERT INTO {schema}.events (stream_id, version, event_name, payload)
              SELECT 'p-' || i, 1, 'shop.ProductCreated',
                     jsonb_build_object('name', 'x', 'price_cents', 1)
                FROM generate_series(0, {} - 1) i;",
        products
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// `writers` tasks, `n` commands in all over `products` streams, each command one transaction:
/// select the stream (its events, to fold the state), insert the next version. A conflict on
/// the version (another writer got there first) is retried. Returns the seconds and each
/// command's latency.
pub async fn commands(
    pool: &PgPool,
    schema: &str,
    writers: u64,
    n: u64,
    products: u64,
) -> (f64, Vec<Duration>) {
    let select = format!(
        "SELECT version, payload::text FROM {schema}.events WHERE stream_id = $1 ORDER BY version"
    );
    let insert = format!(
        "INSERT INTO {schema}.events (stream_id, version, event_name, payload)
         VALUES ($1, $2, 'shop.ProductPriceChanged', $3::jsonb)"
    );
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..writers {
        let (pool, select, insert) = (pool.clone(), select.clone(), insert.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = t;
            while i < n {
                let began = Instant::now();
                let stream = format!("p-{}", i % products);
                loop {
                    let mut tx = pool.begin().await.unwrap_or_else(|e| panic!("{e}"));
                    let rows = sqlx::query(sqlx::AssertSqlSafe(select.as_str()))
                        .bind(&stream)
                        .fetch_all(&mut *tx)
                        .await
                        .unwrap_or_else(|e| panic!("{e}"));
                    let version: i64 = rows.last().map_or(0, |r| r.get(0));
                    let payload = format!("{{\"price_cents\": {i}}}");
                    let inserted = sqlx::query(sqlx::AssertSqlSafe(insert.as_str()))
                        .bind(&stream)
                        .bind(version + 1)
                        .bind(payload)
                        .execute(&mut *tx)
                        .await;
                    match inserted {
                        Ok(_) => {
                            tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
                            break;
                        }
                        // A unique violation: another writer took the version; again.
                        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => {}
                        Err(e) => panic!("{e}"),
                    }
                }
                latencies.push(began.elapsed());
                i += writers;
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap_or_else(|e| panic!("{e}")));
    }
    (start.elapsed().as_secs_f64(), latencies)
}

/// One streaming `SELECT ... ORDER BY position` of the framework's log, each payload decoded
/// (as JSON) into a map of the latest payload per stream. Returns the rows and the seconds.
pub async fn select_into_map(pool: &PgPool, schema: &str) -> (u64, f64) {
    let statement =
        format!("SELECT stream_id, payload::text FROM {schema}.events ORDER BY position");
    let start = Instant::now();
    let mut latest: HashMap<String, serde_json::Value> = HashMap::new();
    let mut rows = sqlx::query(sqlx::AssertSqlSafe(statement)).fetch(pool);
    let mut n = 0u64;
    while let Some(row) = rows.try_next().await.unwrap_or_else(|e| panic!("{e}")) {
        let stream: String = row.get(0);
        let payload: &str = row.get(1);
        let value = serde_json::from_str(payload).unwrap_or_else(|e| panic!("{e}"));
        latest.insert(stream, value);
        n += 1;
    }
    (n, start.elapsed().as_secs_f64())
}

/// The binary `COPY` of the framework's log in position order, bytes counted, nothing
/// decoded: the server's and the wire's ceiling. Returns the bytes and the seconds.
pub async fn copy_out(pool: &PgPool, schema: &str) -> (u64, f64) {
    let statement = format!(
        "COPY (SELECT position, stream_id, aggregate_type, version, event_name, event_version,
                      payload::json, event_id, correlation_id, causation_id, created_at, meta::json
                 FROM {schema}.events ORDER BY position) TO STDOUT (FORMAT binary)"
    );
    let start = Instant::now();
    let mut conn = pool.acquire().await.unwrap_or_else(|e| panic!("{e}"));
    let mut stream = conn
        .copy_out_raw(&statement)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut bytes = 0u64;
    while let Some(chunk) = stream.try_next().await.unwrap_or_else(|e| panic!("{e}")) {
        bytes += chunk.len() as u64;
    }
    (bytes, start.elapsed().as_secs_f64())
}
