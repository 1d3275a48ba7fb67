//! Scenarios on a real PostgreSQL server (`DATABASE_URL`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use cqrs_benches::{catalog_envelopes, ProductStats};
use cqrs_core::envelope::{ExpectedVersion, NewEvent};
use cqrs_core::memory::MemoryViewStore;
use cqrs_core::{CommandGateway, EventAppender, EventStore, StoreFeed, TrackingProcessor};
use cqrs_postgres::{PgEventStore, Postgres};
use shop::product::ProductCommand;

use crate::{report, report_latency, wanted};

pub(crate) fn url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

async fn fresh(name: &str) -> Postgres {
    let pg = Postgres::connect(&url(), name)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    pg.drop_schema().await.unwrap_or_else(|e| panic!("{e}"));
    pg.migrate().await.unwrap_or_else(|e| panic!("{e}"));
    pg
}

/// Appends `n` catalog events in batches of `batch` per stream append (one writer).
async fn seed(store: &PgEventStore, n: u64, batch: usize) -> f64 {
    let events = catalog_envelopes(n, 100);
    let start = Instant::now();
    for (i, chunk) in events.chunks(batch).enumerate() {
        let new: Vec<NewEvent> = chunk
            .iter()
            .map(|e| NewEvent {
                event_name: e.event_name.clone(),
                event_version: e.event_version,
                payload: e.payload.clone(),
                // A stream of mixed events for the load: it routes by its own id.
                metadata: cqrs_core::Metadata {
                    routing_key: None,
                    ..e.metadata.clone()
                },
            })
            .collect();
        store
            .append("bench", &format!("batch-{i}"), ExpectedVersion::NEW, new)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    start.elapsed().as_secs_f64()
}

pub async fn run(events: u64, runs: u64) {
    let pg = fresh("bench").await;
    let store = pg.event_store();

    let raw_pool = crate::pg_raw::pool().await;
    if wanted("pg_raw_append_batched") {
        let envelopes = catalog_envelopes(events.min(200_000), 100);
        for _ in 0..runs {
            crate::pg_raw::raw_table(&raw_pool, "bench_raw_append", 0).await;
            let seconds =
                crate::pg_raw::append_batched(&raw_pool, "bench_raw_append", &envelopes, 1_000)
                    .await;
            report("pg_raw_append_batched", events.min(200_000), seconds);
        }
    }
    if wanted("pg_append_batched") {
        for run in 0..runs {
            let pg = fresh(&format!("bench_append_{run}")).await;
            let seconds = seed(&pg.event_store(), events.min(200_000), 1_000).await;
            report("pg_append_batched", events.min(200_000), seconds);
            pg.drop_schema().await.unwrap_or_else(|e| panic!("{e}"));
        }
    }

    // Commands: the app's gateway on the store as it comes (group commit on, the gateway's
    // defaults), beside a plain sqlx loop of one transaction per command, 8 and 32 writers.
    for writers in [8u64, 32] {
        let raw = format!("pg_raw_commands_{writers}_writers");
        if wanted(&raw) {
            for _ in 0..runs {
                crate::pg_raw::raw_table(&raw_pool, "bench_raw", 1_000).await;
                let (seconds, mut latencies) =
                    crate::pg_raw::commands(&raw_pool, "bench_raw", writers, 20_000, 1_000).await;
                report_latency(&raw, 20_000, seconds, &mut latencies);
            }
        }
        let scenario = format!("pg_commands_{writers}_writers");
        if wanted(&scenario) {
            let app = cqrs_core::App::builder()
                .with(fresh(&format!("bench_cmd_{writers}")).await)
                .build()
                .unwrap_or_else(|e| panic!("{e}"));
            commands(&scenario, app.gateway().clone(), writers, runs).await;
            app.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
        }
    }
    // Tuning: the group commit with more transactions at once (`--group-tx N`).
    let group_tx = crate::arg("--group-tx", 0) as usize;
    if group_tx > 0 {
        for writers in [8u64, 32] {
            let scenario = format!("pg_commands_{writers}_writers_group_tx_{group_tx}");
            let store = fresh(&format!("bench_gtx_{writers}"))
                .await
                .event_store()
                .group_commit(cqrs_postgres::GroupCommit::new(group_tx));
            let gateway = CommandGateway::builder(Arc::new(store) as Arc<dyn EventStore>).build();
            commands(&scenario, gateway, writers, runs).await;
        }
    }
    if wanted("pg_commands_32_writers_unbatched") {
        let gateway = CommandGateway::builder(
            Arc::new(store.clone().without_group_commit()) as Arc<dyn EventStore>
        )
        .build();
        commands("pg_commands_32_writers_unbatched", gateway, 32, runs).await;
    }

    // A log of `events` events for the read scenarios.
    let log = fresh("bench_log").await;
    let log_store = log.event_store();
    let seconds = seed(&log_store, events, 1_000).await;
    report("pg_append_batched_seed", events, seconds);
    // Replays of the log as loaded, never analyzed (autovacuum is off here), on the defaults,
    // beside a plain streaming SELECT decoded into a map and the raw binary COPY.
    if wanted("pg_raw_copy") {
        for _ in 0..runs {
            let (_bytes, seconds) = crate::pg_raw::copy_out(&raw_pool, "bench_log").await;
            report("pg_raw_copy", events, seconds);
        }
    }
    if wanted("pg_raw_select_into_map") {
        for _ in 0..runs {
            let (n, seconds) = crate::pg_raw::select_into_map(&raw_pool, "bench_log").await;
            report("pg_raw_select_into_map", n, seconds);
        }
    }
    for (scenario, batch) in [
        ("pg_rebuild_fresh_log_defaults", None),
        ("pg_rebuild_fresh_log_batch_10000", Some(10_000)),
    ] {
        if !wanted(scenario) {
            continue;
        }
        for _ in 0..runs {
            let mut processor =
                TrackingProcessor::new(ProductStats, Arc::new(MemoryViewStore::new()));
            if let Some(size) = batch {
                processor = processor.batch_size(size);
            }
            let start = Instant::now();
            let n = processor
                .catch_up(Arc::new(log_store.clone()))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            report(scenario, n, start.elapsed().as_secs_f64());
        }
    }
    // The first scan of freshly written rows sets their hint bits (minutes of I/O on a big
    // table); a vacuum after a bulk load does it once. Rebuilds below read a settled table.
    let start = Instant::now();
    sqlx::raw_sql("VACUUM ANALYZE bench_log.events")
        .execute(log.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // And a checkpoint, so the load's dirty pages are not written out during the rebuilds
    // (it needs a superuser or pg_checkpoint; without, the rebuilds share the server with it).
    if let Err(e) = sqlx::raw_sql("CHECKPOINT").execute(log.pool()).await {
        eprintln!("note: CHECKPOINT after the load failed: {e}");
    }
    report(
        "pg_vacuum_after_seed",
        events,
        start.elapsed().as_secs_f64(),
    );

    if wanted("pg_rebuild_into_memory") {
        for _ in 0..runs {
            let processor = TrackingProcessor::new(ProductStats, Arc::new(MemoryViewStore::new()))
                .batch_size(10_000);
            let start = Instant::now();
            let n = processor
                .catch_up(Arc::new(log_store.clone()))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            report("pg_rebuild_into_memory", n, start.elapsed().as_secs_f64());
        }
    }

    if wanted("pg_raw_read_model") {
        for _ in 0..runs {
            let (n, seconds) =
                crate::pg_raw::read_model(&raw_pool, "bench_log", "bench_raw_views", 5_000).await;
            report("pg_raw_read_model", n, seconds);
        }
    }
    if wanted("pg_to_pg_read_model") {
        for run in 0..runs {
            let processor = TrackingProcessor::new(ProductStats, Arc::new(log.view_store()))
                .named(format!("stats-{run}"))
                .batch_size(5_000);
            let start = Instant::now();
            let n = processor
                .catch_up(Arc::new(log_store.clone()))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            report("pg_to_pg_read_model", n, start.elapsed().as_secs_f64());
        }
    }

    if wanted("pg_raw_tail_lag_at_5k_per_s") {
        let (sent, seconds, mut lags) =
            crate::pg_raw::tail_lag(&raw_pool, "bench_raw_lag", Duration::from_secs(4)).await;
        report_latency("pg_raw_tail_lag_at_5k_per_s", sent, seconds, &mut lags);
    }
    if wanted("pg_catch_up_lag_at_5k_per_s") {
        // 10 writers, each sending 5 commands every 10 ms: 5 000 events/s, while a processor
        // tails the log. A command's lag is from its return to the processor having committed
        // its event.
        let lag_pg = fresh("bench_lag").await;
        let lag_store = Arc::new(lag_pg.event_store());
        let handle = TrackingProcessor::new(ProductStats, Arc::new(MemoryViewStore::new()))
            .spawn(Arc::new(StoreFeed::new(lag_store.clone())));
        let gateway = CommandGateway::builder(lag_store.clone() as Arc<dyn EventStore>).build();
        for p in 0..100 {
            gateway
                .send(ProductCommand::Create {
                    product_id: format!("p-{p}"),
                    name: "x".into(),
                    price_cents: 1,
                })
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let start = Instant::now();
        let (sent, mut lags) = crate::pg_raw::lag_writers(
            Duration::from_secs(4),
            handle.watch_position(),
            move |w, k, sent| {
                let gateway = gateway.clone();
                async move {
                    let committed = gateway
                        .send(ProductCommand::ChangePrice {
                            product_id: format!("p-{}", (w * 10 + k) % 100),
                            price_cents: sent as i64,
                        })
                        .await
                        .unwrap_or_else(|e| panic!("{e}"));
                    committed.last().map_or(0, |e| e.position)
                }
            },
        )
        .await;
        report_latency(
            "pg_catch_up_lag_at_5k_per_s",
            sent,
            start.elapsed().as_secs_f64(),
            &mut lags,
        );
        handle.stop().await.unwrap_or_else(|e| panic!("{e}"));
        lag_pg.drop_schema().await.unwrap_or_else(|e| panic!("{e}"));
    }
    let _ = store;
}

/// `writers` tasks sending 20 000 price changes to 1 000 products through `gateway` (its
/// defaults: a state cache), each command one event.
async fn commands(scenario: &str, gateway: CommandGateway, writers: u64, runs: u64) {
    for p in 0..1_000 {
        gateway
            .send(ProductCommand::Create {
                product_id: format!("{scenario}-{p}"),
                name: "x".into(),
                price_cents: 1,
            })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    for _ in 0..runs {
        let n = 20_000u64;
        let start = Instant::now();
        let mut tasks = Vec::new();
        for t in 0..writers {
            let gateway = gateway.clone();
            let scenario = scenario.to_owned();
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut i = t;
                while i < n {
                    let began = Instant::now();
                    gateway
                        .send(ProductCommand::ChangePrice {
                            product_id: format!("{scenario}-{}", i % 1_000),
                            price_cents: i as i64,
                        })
                        .await
                        .unwrap_or_else(|e| panic!("{e}"));
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
        report_latency(scenario, n, start.elapsed().as_secs_f64(), &mut latencies);
    }
}
