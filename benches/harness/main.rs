//! Run with: `cargo run --release -p cqrs-benches --bin harness -- [--events N] [--runs R]`
//!
//! Scenario harness: runs each scenario `runs` times and prints one JSON line per run:
//! scenario, events, seconds, events/s. Options: `--batch N` (events per batch, 1000),
//! `--products N` (views, 100), `--catalog-events N` (100 000), `--only a,b` (scenarios),
//! `--table` (the scenarios of BENCHMARKS.md's main table, each backend row with its raw
//! baseline), `--quick` (50 000 events, one run), `--chart FILE.svg` (a chart of the medians),
//! `--pg` (also the PostgreSQL scenarios, on `DATABASE_URL`), `--mongo` (also the MongoDB
//! scenarios, on `MONGODB_URI`), `--kafka` (also the Kafka scenarios, on `KAFKA_BROKERS`),
//! `--rabbitmq` (also the RabbitMQ scenarios, on `AMQP_URL`, `--rabbit-events N`, 100 000).
//! `--redis` (also the Redis Streams scenarios, on `REDIS_URL`, `--redis-events N`, 100 000).
//! `--sqs` (also the SQS scenarios, on `AWS_ENDPOINT_URL`, `--sqs-events N`, 1 000).
//! Tuning knobs: `--group-tx N` (PostgreSQL commands with a group commit of N transactions),
//! `--bus-batch N` (the batch size of `kafka_bus_only_*`).

use std::time::Instant;

use cqrs_benches::{
    batches, catalog_envelopes, gateway_with_products, project, send_commands, ProductStats,
};
use shop::catalog::Catalog;

// The allocator is the application's choice; glibc's malloc costs a third of the time here.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod kafka;
mod members;
mod mongo;
mod pg;
mod pg_raw;
mod rabbit;
mod raw_fold;
mod redis_streams;
mod segments;
mod sqs;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The scenarios of BENCHMARKS.md's main table (`--table`): each backend row with its raw
/// baseline.
const TABLE: &[&str] = &[
    "projection_memory_json",
    "projection_memory_json_catalog",
    "commands_memory",
    "pg_raw_append_batched",
    "pg_append_batched",
    "pg_raw_commands_8_writers",
    "pg_commands_8_writers",
    "pg_raw_commands_32_writers",
    "pg_commands_32_writers",
    "pg_commands_32_writers_unbatched",
    "pg_raw_copy",
    "pg_raw_select_into_map",
    "pg_rebuild_fresh_log_defaults",
    "pg_rebuild_into_memory",
    "pg_raw_read_model",
    "pg_to_pg_read_model",
    "pg_raw_tail_lag_at_5k_per_s",
    "pg_catch_up_lag_at_5k_per_s",
    "kafka_raw_consume_1p",
    "kafka_to_projection_1p",
    "kafka_raw_consume_3p",
    "kafka_to_projection_3p",
    "kafka_raw_produce",
    "relay_to_kafka",
    "mongo_raw_bulk_upserts",
    "mongo_read_model_transaction",
    "mongo_read_model_idempotent",
    "pg_raw_to_mongo",
    "pg_to_mongo_read_model",
];

/// Whether to run `scenario`: the ones `--only a,b` names, else the main table's with
/// `--table`, else every one.
fn wanted(scenario: &str) -> bool {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--only") {
        Some(i) => args
            .get(i + 1)
            .is_some_and(|s| s.split(',').any(|one| one == scenario)),
        None if args.iter().any(|a| a == "--table") => TABLE.contains(&scenario),
        None => true,
    }
}

/// Framework scenarios and the raw baseline each is read against (same invocation).
const RATIOS: &[(&str, &str)] = &[
    ("pg_append_batched", "pg_raw_append_batched"),
    ("pg_to_pg_read_model", "pg_raw_read_model"),
    ("pg_catch_up_lag_at_5k_per_s", "pg_raw_tail_lag_at_5k_per_s"),
    ("relay_to_kafka", "kafka_raw_produce"),
    ("pg_to_mongo_read_model", "pg_raw_to_mongo"),
    ("pg_commands_8_writers", "pg_raw_commands_8_writers"),
    ("pg_commands_32_writers", "pg_raw_commands_32_writers"),
    ("pg_rebuild_fresh_log_defaults", "pg_raw_select_into_map"),
    ("pg_rebuild_fresh_log_defaults", "pg_raw_copy"),
    ("pg_rebuild_into_memory", "pg_raw_select_into_map"),
    ("kafka_to_projection_1p", "kafka_raw_consume_1p"),
    ("kafka_to_projection_3p", "kafka_raw_consume_3p"),
    ("kafka_to_projection_1p_named", "kafka_raw_consume_1p_named"),
    ("kafka_to_projection_3p_named", "kafka_raw_consume_3p_named"),
    ("relay_to_kafka_named", "kafka_raw_produce"),
    ("rabbitmq_to_projection", "rabbitmq_raw_consume"),
    ("relay_to_rabbitmq", "rabbitmq_raw_publish"),
    ("redis_to_projection", "redis_raw_consume"),
    ("sqs_to_projection", "sqs_raw_consume"),
    ("mongo_read_model_transaction", "mongo_raw_bulk_upserts"),
    ("mongo_read_model_idempotent", "mongo_raw_bulk_upserts"),
];

/// Every result so far: scenario, events/s, p99 in ms where measured.
static RESULTS: std::sync::Mutex<Vec<(String, f64, Option<f64>)>> =
    std::sync::Mutex::new(Vec::new());

fn record(scenario: &str, per_second: f64, p99: Option<f64>) {
    if let Ok(mut all) = RESULTS.lock() {
        all.push((scenario.to_owned(), per_second, p99));
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// One summary line per scenario (the median of its runs), and the chart.
fn summarize(chart: Option<String>) {
    let all = RESULTS.lock().map(|r| r.clone()).unwrap_or_default();
    let mut names: Vec<String> = Vec::new();
    for (name, _, _) in &all {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    let mut medians = Vec::new();
    for name in names {
        let runs: Vec<&(String, f64, Option<f64>)> = all.iter().filter(|r| r.0 == name).collect();
        let rate = median(runs.iter().map(|r| r.1).collect());
        let p99: Vec<f64> = runs.iter().filter_map(|r| r.2).collect();
        let p99 = (!p99.is_empty()).then(|| median(p99));
        let line = serde_json::json!({
            "summary": name,
            "runs": runs.len(),
            "median_events_per_s": rate.round(),
            "median_p99_ms": p99,
        });
        println!("{line}");
        medians.push((name, rate, p99));
    }
    // Each framework scenario over its raw baseline of the same invocation; where both
    // measured latencies, the p99s' ratio too (above 1: the framework's is longer).
    let of = |name: &str| medians.iter().find(|m| m.0 == name).map(|m| (m.1, m.2));
    for (framework, baseline) in RATIOS {
        if let (Some((f, f99)), Some((b, b99))) = (of(framework), of(baseline)) {
            let p99_ratio: serde_json::Value = match (f99, b99) {
                (Some(f99), Some(b99)) if b99 > 0.0 => ((f99 / b99 * 100.0).round() / 100.0).into(),
                _ => serde_json::Value::Null,
            };
            let line = serde_json::json!({
                "ratio": framework,
                "over": baseline,
                "median_ratio": (f / b * 100.0).round() / 100.0,
                "p99_ratio": p99_ratio,
            });
            println!("{line}");
        }
    }
    let medians: Vec<(String, f64)> = medians.into_iter().map(|(n, r, _)| (n, r)).collect();
    if let Some(path) = chart {
        match std::fs::write(&path, svg(&medians)) {
            Ok(()) => eprintln!("chart written to {path}"),
            Err(e) => eprintln!("cannot write the chart to {path}: {e}"),
        }
    }
}

/// A horizontal bar chart of median events/s per scenario, on a log scale (the rates span
/// three orders of magnitude).
fn svg(medians: &[(String, f64)]) -> String {
    let (left, width, bar, gap) = (300.0, 520.0, 22.0, 8.0);
    let height = 60.0 + medians.len() as f64 * (bar + gap);
    let top = medians
        .iter()
        .map(|m| m.1)
        .fold(10.0, f64::max)
        .log10()
        .ceil();
    let x = |v: f64| left + width * (v.max(1.0).log10() / top);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" \
         fill=\"white\"/>\n<text x=\"10\" y=\"20\" font-size=\"14\">cqrs-rs: median events/s \
         per scenario (log scale)</text>\n",
        w = left + width + 110.0
    );
    for decade in 0..=(top as i32) {
        let px = x(10f64.powi(decade));
        out.push_str(&format!(
            "<line x1=\"{px}\" y1=\"35\" x2=\"{px}\" y2=\"{}\" stroke=\"#ddd\"/>\
             <text x=\"{px}\" y=\"{}\" text-anchor=\"middle\" fill=\"#666\">1e{decade}</text>\n",
            height - 15.0,
            height - 3.0
        ));
    }
    for (i, (name, rate)) in medians.iter().enumerate() {
        let y = 40.0 + i as f64 * (bar + gap);
        out.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{name}</text>\
             <rect x=\"{left}\" y=\"{y}\" width=\"{}\" height=\"{bar}\" fill=\"#4a7fb5\"/>\
             <text x=\"{}\" y=\"{}\">{}</text>\n",
            left - 8.0,
            y + bar * 0.7,
            (x(*rate) - left).max(1.0),
            x(*rate) + 5.0,
            y + bar * 0.7,
            human(*rate)
        ));
    }
    out.push_str("</svg>\n");
    out
}

fn human(rate: f64) -> String {
    if rate >= 1e6 {
        format!("{:.2} M/s", rate / 1e6)
    } else if rate >= 1e3 {
        format!("{:.0} k/s", rate / 1e3)
    } else {
        format!("{rate:.0}/s")
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
    record(scenario, events as f64 / seconds, Some(at(0.99)));
}

fn report(scenario: &str, events: u64, seconds: f64) {
    let line = serde_json::json!({
        "scenario": scenario,
        "events": events,
        "seconds": (seconds * 1e4).round() / 1e4,
        "events_per_s": (events as f64 / seconds).round(),
    });
    println!("{line}");
    if !scenario.ends_with("_seed") && !scenario.starts_with("pg_vacuum") {
        record(scenario, events as f64 / seconds, None);
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let events = arg("--events", if quick { 50_000 } else { 1_000_000 });
    let runs = arg("--runs", if quick { 1 } else { 3 });
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
    if std::env::args().any(|a| a == "--rabbitmq") {
        rabbit::run(arg("--rabbit-events", 100_000), runs, products).await;
    }
    if std::env::args().any(|a| a == "--redis") {
        redis_streams::run(arg("--redis-events", 100_000), runs, products).await;
    }
    if std::env::args().any(|a| a == "--sqs") {
        sqs::run(arg("--sqs-events", 1_000), runs, products).await;
    }
    if std::env::args().any(|a| a == "--mongo") {
        mongo::run(events, runs, products, batch_size).await;
    }
    if std::env::args().any(|a| a == "--kafka") && std::env::args().any(|a| a == "--mongo") {
        let uri = std::env::var("MONGODB_URI")
            .unwrap_or_else(|_| "mongodb://127.0.0.1:27017/?directConnection=true".into());
        members::run(&uri, events, runs, products).await;
    }

    for _ in 0..runs * u64::from(wanted("commands_memory")) {
        // A fresh store each run: the in-memory log grows by `events` every run.
        let gateway = gateway_with_products(1_000).await;
        let start = Instant::now();
        send_commands(&gateway, events, 1_000, 8).await;
        report("commands_memory", events, start.elapsed().as_secs_f64());
    }
    let args: Vec<String> = std::env::args().collect();
    let chart = args
        .iter()
        .position(|a| a == "--chart")
        .and_then(|i| args.get(i + 1).cloned());
    summarize(chart);
}
