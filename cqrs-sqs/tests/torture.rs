#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! The bus torture run (`cqrs_testing::bus_torture`) on SQS.

mod common;

use std::time::Duration;

use cqrs_testing::bus_torture::{self, GROUP};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqs_bus_survives_the_torture() {
    // After kills, a FIFO queue holds a dead member's message groups until their visibility
    // ends, one held batch after another: the test server drained the tail of a run in up to
    // 114 s (FAULTS.md).
    let options = bus_torture::Options {
        catch_up: Duration::from_secs(300),
        ..bus_torture::Options::from_env(Duration::from_secs(10))
    };
    let bus = common::bus_with(common::config().groups([GROUP]).unwrap()).await;
    let report = bus_torture::run(bus.clone(), options).await;
    println!("[torture] SQS: {report}");
    assert!(report.events > 0, "{report}");
    bus.delete_queues().await.unwrap();
}
