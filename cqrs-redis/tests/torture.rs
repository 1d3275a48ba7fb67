#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! The bus torture run (`cqrs_core::testing::bus_torture`) on Redis Streams.

mod common;

use std::time::Duration;

use cqrs_core::testing::bus_conformance::TYPE;
use cqrs_core::testing::bus_torture;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_bus_survives_the_torture() {
    let (seed, writing) = (
        bus_torture::seed(),
        bus_torture::writing(Duration::from_secs(10)),
    );
    let bus = common::bus().await;
    let report = bus_torture::run(bus.clone(), seed, writing).await;
    println!("[torture] Redis Streams: {report}");
    assert!(report.events > 0, "{report}");
    bus.delete_streams(&[TYPE]).await.unwrap();
}
