#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! The bus torture run (`cqrs_testing::bus_torture`) on Kafka.
//!
//! Two runs: on the shared broker (`KAFKA_BROKERS`), and on a broker of the test's own
//! (`CQRS_KAFKA_SERVER`) that is also paused (`kill -STOP`) and resumed now and then.
//!
//! Members are killed only once the group has settled: the test broker (tansu 0.6) keeps a
//! member that left while the group was forming as the group's leader, and the group never
//! forms again (FAULTS.md). `CQRS_KAFKA_DEBUG=cgrp` turns on librdkafka's group log and
//! `CQRS_TEST_LOG=1` prints it.

mod common;

use std::time::Duration;

#[cfg(target_os = "linux")]
use std::sync::Arc;

use cqrs_testing::bus_torture::{self, Options, Report};
#[cfg(target_os = "linux")]
use cqrs_testing::server::OwnServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kafka_bus_survives_the_torture() {
    let report = torture(
        &common::brokers(),
        Options::from_env(Duration::from_secs(30)),
    )
    .await;
    println!("[torture] Kafka: {report}");
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kafka_bus_survives_the_torture_with_a_broker_paused() {
    let broker = Arc::new(OwnServer::start("CQRS_KAFKA_SERVER").await);
    let brokers = format!("127.0.0.1:{}", broker.port);
    let options = Options {
        broker: Some(broker.clone()),
        ..Options::from_env(Duration::from_secs(30))
    };
    let report = torture(&brokers, options).await;
    println!("[torture] Kafka, its broker paused: {report}");
    assert!(report.broker_pauses > 0, "{report}");
}

async fn torture(brokers: &str, options: Options) -> Report {
    let options = Options {
        settle: Duration::from_secs(8),
        ..options
    };
    if std::env::var_os("CQRS_TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .try_init();
    }
    let mut config = common::config(brokers);
    if let Ok(debug) = std::env::var("CQRS_KAFKA_DEBUG") {
        config = config.property("debug", debug);
    }
    let bus = common::bus_with(config).await;
    let report = bus_torture::run(bus, options).await;
    assert!(report.events > 0 && report.member_kills > 0, "{report}");
    report
}
