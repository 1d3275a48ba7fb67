//! Raw baselines beside the PostgreSQL scenarios, in the same invocation: what a plain `sqlx`
//! program does for the same work, so each framework figure is read as a ratio.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::TryStreamExt as _;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};

use crate::raw_fold::{Figures, RawFold};

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

/// One writer appending `envelopes` to the plain table in transactions of `batch` rows, each
/// one multi-row `INSERT` of arrays (`unnest`). Returns the seconds.
pub async fn append_batched(
    pool: &PgPool,
    schema: &str,
    envelopes: &[cqrs_core::Envelope],
    batch: usize,
) -> f64 {
    let insert = format!(
        "INSERT INTO {schema}.events (stream_id, version, event_name, payload)
         SELECT s, v, n, p::jsonb FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[])
             AS t(s, v, n, p)"
    );
    let start = Instant::now();
    for (i, chunk) in envelopes.chunks(batch).enumerate() {
        // One stream per batch, as the framework's scenario appends.
        let stream = format!("batch-{i}");
        let streams: Vec<&str> = chunk.iter().map(|_| stream.as_str()).collect();
        let versions: Vec<i64> = (1..=chunk.len() as i64).collect();
        let names: Vec<&str> = chunk.iter().map(|e| e.event_name.as_str()).collect();
        let payloads: Vec<&str> = chunk
            .iter()
            .map(|e| std::str::from_utf8(&e.payload).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        let mut tx = pool.begin().await.unwrap_or_else(|e| panic!("{e}"));
        sqlx::query(sqlx::AssertSqlSafe(insert.as_str()))
            .bind(streams)
            .bind(versions)
            .bind(names)
            .bind(payloads)
            .execute(&mut *tx)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
    }
    start.elapsed().as_secs_f64()
}

/// Streams the framework's log in position order, folding each payload, and hands the
/// changed products to `flush` (with the last position) every `every` rows and at the end.
/// Returns the rows read.
pub async fn fold_log<F, Fut>(pool: &PgPool, schema: &str, every: u64, mut flush: F) -> u64
where
    F: FnMut(Vec<(String, Figures)>, i64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let statement =
        format!("SELECT position, payload::text FROM {schema}.events ORDER BY position");
    let mut fold = RawFold::default();
    let mut rows = sqlx::query(sqlx::AssertSqlSafe(statement)).fetch(pool);
    let (mut n, mut last) = (0u64, 0i64);
    while let Some(row) = rows.try_next().await.unwrap_or_else(|e| panic!("{e}")) {
        last = row.get(0);
        let payload: &str = row.get(1);
        fold.apply(payload.as_bytes());
        n += 1;
        if n % every == 0 {
            flush(fold.take_changed(), last).await;
        }
    }
    flush(fold.take_changed(), last).await;
    n
}

/// A plain view table and checkpoint row in `schema`, empty.
pub async fn raw_views(pool: &PgPool, schema: &str) {
    let ddl = format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema};
         CREATE TABLE {schema}.views (id text PRIMARY KEY, doc jsonb NOT NULL);
         CREATE TABLE {schema}.checkpoint (name text PRIMARY KEY, position bigint NOT NULL);
         INSERT INTO {schema}.checkpoint VALUES ('stats', 0);"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Writes changed views and the checkpoint in one transaction: one upsert of arrays, one
/// update.
pub async fn write_views(pool: &PgPool, schema: &str, changed: Vec<(String, Figures)>, at: i64) {
    let upsert = format!(
        "INSERT INTO {schema}.views (id, doc)
         SELECT i, d::jsonb FROM unnest($1::text[], $2::text[]) AS t(i, d)
         ON CONFLICT (id) DO UPDATE SET doc = excluded.doc"
    );
    let checkpoint = format!("UPDATE {schema}.checkpoint SET position = $1 WHERE name = 'stats'");
    let (ids, docs): (Vec<String>, Vec<String>) = changed
        .into_iter()
        .map(|(id, f)| (id, serde_json::to_string(&f).unwrap_or_default()))
        .unzip();
    let mut tx = pool.begin().await.unwrap_or_else(|e| panic!("{e}"));
    sqlx::query(sqlx::AssertSqlSafe(upsert))
        .bind(ids)
        .bind(docs)
        .execute(&mut *tx)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    sqlx::query(sqlx::AssertSqlSafe(checkpoint))
        .bind(at)
        .execute(&mut *tx)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
}

/// The framework's log folded into the plain view table, views and checkpoint in one
/// transaction every `batch` rows. Returns the rows and the seconds.
pub async fn read_model(pool: &PgPool, log: &str, views: &str, batch: u64) -> (u64, f64) {
    raw_views(pool, views).await;
    let start = Instant::now();
    let n = fold_log(pool, log, batch, |changed, at| {
        let (pool, views) = (pool.clone(), views.to_owned());
        async move { write_views(&pool, &views, changed, at).await }
    })
    .await;
    (n, start.elapsed().as_secs_f64())
}

/// 10 writers, each inserting 5 rows every 10 ms (autocommit, `RETURNING position`) for
/// `run`, while one reader polls every millisecond for rows past its last position, folds
/// them and writes the changed views and its checkpoint in one transaction. A row's lag is
/// from its insert's return to the reader's commit of it. (A `bigserial` position is not
/// gap-safe: a reader polling like this can skip a row committed late; the framework's log
/// cannot.) Returns the rows, the seconds and the lags.
pub async fn tail_lag(pool: &PgPool, schema: &str, run: Duration) -> (u64, f64, Vec<Duration>) {
    raw_table(pool, schema, 0).await;
    raw_views(pool, &format!("{schema}_views")).await;
    let (committed, _) = tokio::sync::watch::channel(0u64);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = tokio::spawn({
        let (pool, schema, committed, stop) = (
            pool.clone(),
            schema.to_owned(),
            committed.clone(),
            stop.clone(),
        );
        async move {
            let select = format!(
                "SELECT position, payload::text FROM {schema}.events WHERE position > $1
                 ORDER BY position LIMIT 1000"
            );
            let (mut fold, mut last) = (RawFold::default(), 0i64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let rows = sqlx::query(sqlx::AssertSqlSafe(select.as_str()))
                    .bind(last)
                    .fetch_all(&pool)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                if rows.is_empty() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                for row in &rows {
                    last = row.get(0);
                    fold.apply(row.get::<&str, _>(1).as_bytes());
                }
                write_views(&pool, &format!("{schema}_views"), fold.take_changed(), last).await;
                committed.send_replace(last as u64);
            }
        }
    });
    let insert = format!(
        "INSERT INTO {schema}.events (stream_id, version, event_name, payload)
         VALUES ($1, $2, 'shop.ProductPriceChanged', $3::jsonb) RETURNING position"
    );
    let start = Instant::now();
    let writer_pool = pool.clone();
    let (sent, lags) = lag_writers(run, committed.subscribe(), move |w, k, sent| {
        let (pool, insert) = (writer_pool.clone(), insert.clone());
        async move {
            let payload = format!(
                "{{\"product_id\": \"p-{}\", \"price_cents\": {sent}}}",
                w * 10 + k
            );
            let position: i64 = sqlx::query(sqlx::AssertSqlSafe(insert.as_str()))
                .bind(format!("w{w}-{k}"))
                .bind((sent / 5 + 1) as i64)
                .bind(payload)
                .fetch_one(&pool)
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .get(0);
            position as u64
        }
    })
    .await;
    let seconds = start.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    reader.await.unwrap_or_else(|e| panic!("{e}"));
    (sent, seconds, lags)
}

/// 10 writers, each sending 5 events every 10 ms for `run` through `send` (writer, index in
/// the tick, events the writer sent so far; it returns the event's position), each then
/// waiting until `committed` reaches that position. Returns the events sent and each one's
/// lag from its send's return to its commit by the reader.
pub async fn lag_writers<F, Fut>(
    run: Duration,
    committed: tokio::sync::watch::Receiver<u64>,
    send: F,
) -> (u64, Vec<Duration>)
where
    F: Fn(u64, u64, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = u64> + Send,
{
    let start = Instant::now();
    let mut writers = Vec::new();
    for w in 0..10u64 {
        let (send, mut seen) = (send.clone(), committed.clone());
        writers.push(tokio::spawn(async move {
            let (mut lags, mut sent) = (Vec::new(), 0u64);
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            while start.elapsed() < run {
                tick.tick().await;
                for k in 0..5u64 {
                    let position = send(w, k, sent).await;
                    let at = Instant::now();
                    let waited = seen.wait_for(|p| *p >= position);
                    let _ = tokio::time::timeout(Duration::from_secs(5), waited).await;
                    lags.push(at.elapsed());
                    sent += 1;
                }
            }
            (sent, lags)
        }));
    }
    let (mut sent, mut lags) = (0u64, Vec::new());
    for w in writers {
        let (n, l) = w.await.unwrap_or_else(|e| panic!("{e}"));
        sent += n;
        lags.extend(l);
    }
    (sent, lags)
}
