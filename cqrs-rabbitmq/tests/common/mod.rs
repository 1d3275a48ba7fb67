#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]
//! What the RabbitMQ tests share: the broker's address, fresh buses, cleanup.

use std::time::Duration;

use cqrs_core::{BoxError, Envelope, Projection};
use cqrs_rabbitmq::{RabbitBus, RabbitConfig};
use cqrs_testing::bus_conformance::{SeenView, Ticked};
use parking_lot::Mutex;

pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// A fresh prefix, so tests never share queues.
pub fn prefix() -> String {
    format!("t{}.", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

pub fn config(url: &str) -> RabbitConfig {
    RabbitConfig::new(url, prefix())
        .expect("config")
        .rebalance_every(Duration::from_millis(500))
        .publish_timeout(Duration::from_secs(5))
}

/// A bus on the shared broker. A missing broker fails the test loudly: it never passes by
/// skipping.
pub async fn bus_with(config: RabbitConfig) -> RabbitBus {
    let bus = RabbitBus::new(config);
    if let Err(e) = bus.check().await {
        panic!("the RabbitMQ broker is not reachable ({e}); set AMQP_URL or run ./scripts/test.sh");
    }
    bus
}

pub async fn bus() -> RabbitBus {
    bus_with(config(&amqp_url())).await
}

/// The groups a test created on the shared broker, deleted by [`Cleanup::run`] so the broker
/// does not fill up with test queues.
#[derive(Default)]
pub struct Cleanup(Mutex<Vec<(RabbitBus, String, Vec<String>)>>);

impl Cleanup {
    pub fn add(&self, bus: &RabbitBus, group: &str, types: &[&str]) {
        self.0.lock().push((
            bus.clone(),
            group.to_owned(),
            types.iter().map(|t| (*t).to_owned()).collect(),
        ));
    }

    pub async fn run(self) {
        for (bus, group, types) in self.0.into_inner() {
            let types: Vec<&str> = types.iter().map(String::as_str).collect();
            bus.delete_group(&group, &types)
                .await
                .expect("delete the group's queues");
        }
    }
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
