#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! The bus torture run (`cqrs_testing::bus_torture`) on RabbitMQ.

mod common;

use std::time::Duration;

use common::{amqp_url, config, Cleanup};
use cqrs_testing::bus_conformance::TYPE;
use cqrs_testing::bus_torture::{self, GROUP};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rabbitmq_bus_survives_the_torture() {
    let options = bus_torture::Options::from_env(Duration::from_secs(10));
    // The group is declared before the first publish, so it keeps what comes before its members.
    let bus = common::bus_with(config(&amqp_url()).groups([GROUP]).expect("groups")).await;
    let cleanup = Cleanup::default();
    cleanup.add(&bus, GROUP, &[TYPE]);
    let report = bus_torture::run(bus, options).await;
    println!("[torture] RabbitMQ: {report}");
    assert!(report.events > 0, "{report}");
    cleanup.run().await;
}
