#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]
//! What the Redis tests share: the server's address, fresh buses, cleanup.

use std::time::Duration;

use cqrs_core::{BoxError, Envelope, Projection};
use cqrs_redis::{RedisBus, RedisConfig};
use cqrs_testing::bus_conformance::{SeenView, Ticked};

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A fresh prefix, so tests never share keys.
pub fn prefix() -> String {
    format!("t{}.", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

pub fn config(url: &str) -> RedisConfig {
    RedisConfig::new(url, prefix())
        .expect("config")
        .partitions(4)
        .lease(Duration::from_secs(2))
        .rebalance_every(Duration::from_millis(300))
        .timeout(Duration::from_secs(5))
}

/// A bus on the shared server. A missing server fails the test loudly: it never passes by
/// skipping.
pub async fn bus_with(config: RedisConfig) -> RedisBus {
    let bus = RedisBus::new(config).expect("bus");
    if let Err(e) = bus.check().await {
        panic!("the Redis server is not reachable ({e}); set REDIS_URL or run ./scripts/test.sh");
    }
    bus
}

pub async fn bus() -> RedisBus {
    bus_with(config(&redis_url())).await
}

/// Every version a stream's view applied, in order.
#[derive(Debug, Default)]
pub struct Seen;

impl Projection for Seen {
    const NAME: &'static str = "seen";
    type Event = Ticked;
    type View = SeenView;
    fn apply(&self, view: &mut Option<SeenView>, _: &Ticked, e: &Envelope) -> Result<(), BoxError> {
        view.get_or_insert_with(SeenView::default)
            .versions
            .push(e.version);
        Ok(())
    }
}
