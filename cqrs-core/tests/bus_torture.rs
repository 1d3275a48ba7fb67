#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! The bus torture run on the in-memory bus (every bus crate runs it on its own server).

use std::time::Duration;

use cqrs_core::memory::MemoryEventBus;
use cqrs_testing::bus_torture;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_bus_survives_the_torture() {
    let options = bus_torture::Options::from_env(Duration::from_secs(8));
    let report = bus_torture::run(MemoryEventBus::new(4), options).await;
    println!("[torture] memory bus: {report}");
    assert!(report.events > 0 && report.handler_failures > 0, "{report}");
}
