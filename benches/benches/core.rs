//! Criterion micro-benchmarks of the in-memory core: `cargo bench -p cqrs-benches`.

use cqrs_benches::{
    batches, catalog_envelopes, gateway_with_products, project, send_commands, ProductStats,
};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn projection(c: &mut Criterion) {
    let rt = runtime();
    // As the harness: 100 views, batches of 1 000.
    let events = batches(catalog_envelopes(100_000, 100), 1_000);
    let mut group = c.benchmark_group("projection");
    group.throughput(Throughput::Elements(100_000));
    group.sample_size(10);
    group.bench_function("product_stats_from_json_100k", |b| {
        b.iter(|| rt.block_on(project(ProductStats, &events)))
    });
    group.finish();
}

fn commands(c: &mut Criterion) {
    let rt = runtime();
    let gateway = rt.block_on(gateway_with_products(1_000));
    let mut group = c.benchmark_group("commands");
    group.throughput(Throughput::Elements(20_000));
    group.sample_size(10);
    group.bench_function("change_price_20k_over_1k_products", |b| {
        b.iter(|| rt.block_on(send_commands(&gateway, 20_000, 1_000, 8)))
    });
    group.finish();
}

// criterion's macros generate undocumented functions.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group!(benches, projection, commands);
}
criterion_main!(group::benches);
