//! Run with: `cargo run --release -p cqrs-benches --bin harness -- [--events N] [--runs R]`
//!
//! Scenario harness: runs each scenario `runs` times and prints one JSON line per run:
//! scenario, events, seconds, events/s. Options: `--batch N` (events per batch, 1000),
//! `--products N` (views, 100), `--catalog-events N` (100 000), `--only a,b` (scenarios),
//! `--pg` (also the PostgreSQL scenarios, on `DATABASE_URL`), `--mongo` (also the MongoDB
//! scenarios, on `MONGODB_URI`), `--kafka` (also the Kafka scenarios, on `KAFKA_BROKERS`).

use std::time::Instant;

use cqrs_benches::{
    batches, catalog_envelopes, gateway_with_products, project, send_commands, ProductStats,
};
use shop::catalog::Catalog;

// The allocator is the application's choice; glibc's malloc costs a third of the time here.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod kafka;
mod mongo;
mod pg;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn wanted(scenario: &str) -> bool {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--only") {
        Some(i) => args
            .get(i + 1)
            .is_some_and(|s| s.split(',').any(|one| one == scenario)),
        None => true,
    }
}

fn report_latency(
    scenario: &str,
    events: u64,
    seconds: f64,
    latencies: &mut [std::time::Duration],
) {
    latencies.sort();
    let at = |q: f64| {
        let i = ((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1));
        latencies
            .get(i)
            .map_or(0.0, |d| (d.as_secs_f64() * 1e5).round() / 1e2)
    };
    let line = serde_json::json!({
        "scenario": scenario,
        "events": events,
        "seconds": (seconds * 1e4).round() / 1e4,
        "events_per_s": (events as f64 / seconds).round(),
        "p50_ms": at(0.5),
        "p99_ms": at(0.99),
    });
    println!("{line}");
}

fn report(scenario: &str, events: u64, seconds: f64) {
    let line = serde_json::json!({
        "scenario": scenario,
        "events": events,
        "seconds": (seconds * 1e4).round() / 1e4,
        "events_per_s": (events as f64 / seconds).round(),
    });
    println!("{line}");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let events = arg("--events", 1_000_000);
    let runs = arg("--runs", 3);
    let batch_size = arg("--batch", 1_000) as usize;
    let products = arg("--products", 100);
    let envelopes = batches(catalog_envelopes(events, products), batch_size);
    for _ in 0..runs * u64::from(wanted("projection_memory_json")) {
        let start = Instant::now();
        let applied = project(ProductStats, &envelopes).await;
        report(
            "projection_memory_json",
            applied as u64,
            start.elapsed().as_secs_f64(),
        );
    }
    drop(envelopes);
    // The catalog embeds every comment in its product's document, and a document is written
    // whole: its cost grows with the document, so it runs on fewer events.
    let catalog_events = arg("--catalog-events", 100_000);
    let envelopes = batches(catalog_envelopes(catalog_events, products), batch_size);
    for _ in 0..runs * u64::from(wanted("projection_memory_json_catalog")) {
        let start = Instant::now();
        let applied = project(Catalog, &envelopes).await;
        report(
            "projection_memory_json_catalog",
            applied as u64,
            start.elapsed().as_secs_f64(),
        );
    }
    drop(envelopes);

    if std::env::args().any(|a| a == "--pg") {
        pg::run(events, runs).await;
    }
    if std::env::args().any(|a| a == "--kafka") {
        kafka::run(events, runs, products).await;
    }
    if std::env::args().any(|a| a == "--mongo") {
        mongo::run(events, runs, products, batch_size).await;
    }

    for _ in 0..runs * u64::from(wanted("commands_memory")) {
        // A fresh store each run: the in-memory log grows by `events` every run.
        let gateway = gateway_with_products(1_000).await;
        let start = Instant::now();
        send_commands(&gateway, events, 1_000, 8).await;
        report("commands_memory", events, start.elapsed().as_secs_f64());
    }
}
