#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! The bus torture run (`cqrs_testing::bus_torture`) on Redis Streams: on the shared
//! server (`REDIS_URL`), and on a server of the test's own (`CQRS_REDIS_SERVER`, the
//! `redis-server` binary) that is also paused (`kill -STOP`) and resumed now and then, longer
//! than the members' leases at times.

mod common;

#[cfg(target_os = "linux")]
use std::sync::Arc;
use std::time::Duration;

use cqrs_testing::bus_conformance::TYPE;
use cqrs_testing::bus_torture::{self, Options};
#[cfg(target_os = "linux")]
use cqrs_testing::server::OwnServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_bus_survives_the_torture() {
    let options = Options::from_env(Duration::from_secs(10));
    let bus = common::bus().await;
    let report = bus_torture::run(bus.clone(), options).await;
    println!("[torture] Redis Streams: {report}");
    assert!(report.events > 0, "{report}");
    bus.delete_streams(&[TYPE]).await.unwrap();
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_bus_survives_the_torture_with_its_server_paused() {
    let binary = std::env::var("CQRS_REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned());
    let command = format!(
        "{binary} --port {{port}} --bind 127.0.0.1 --dir {{dir}} --appendonly yes --appendfsync always"
    );
    let server = Arc::new(OwnServer::start_command("CQRS_REDIS_SERVER", &command).await);
    let bus = common::bus_with(common::config(&format!(
        "redis://127.0.0.1:{}",
        server.port
    )))
    .await;
    let options = Options {
        broker: Some(server.clone()),
        ..Options::from_env(Duration::from_secs(15))
    };
    let report = bus_torture::run(bus, options).await;
    println!("[torture] Redis Streams, its server paused: {report}");
    assert!(report.events > 0 && report.broker_pauses > 0, "{report}");
}
