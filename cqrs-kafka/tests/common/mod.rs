//! Shared by the Kafka tests: the broker's address, a bus on a prefix of its own, a small
//! domain and a projection that records the versions it applies.
#![allow(dead_code, missing_docs, clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use cqrs_core::memory::MemoryViewStore;
use cqrs_core::{Aggregate, BoxError, Command, Envelope, Projection, Query, ReadModel};
use cqrs_kafka::{KafkaBus, KafkaConfig};
use cqrs_testing::envelope_of;
use serde::{Deserialize, Serialize};

pub fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

pub fn config(brokers: &str) -> KafkaConfig {
    let prefix = format!("t{}.", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    KafkaConfig::new(brokers, prefix.clone())
        .expect("config")
        // Groups are broker-wide: each test's own, like its topics.
        .group_prefix(prefix)
        .partitions(3)
        .session_timeout(Duration::from_secs(6))
        .message_timeout(Duration::from_secs(3))
}

pub async fn bus() -> KafkaBus {
    bus_with(config(&brokers())).await
}

pub async fn bus_with(config: KafkaConfig) -> KafkaBus {
    let bus = KafkaBus::new(config).expect("bus");
    // A missing broker fails the test loudly: it never passes by skipping.
    if let Err(e) = bus
        .ensure_topics(&[bus.topic("probe").expect("topic")])
        .await
    {
        panic!("the Kafka broker at {} is not reachable ({e}); set KAFKA_BROKERS or run ./scripts/test.sh", brokers());
    }
    bus
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ticked {
    pub n: u64,
}
cqrs_core::event!(Ticked, "kafkatest.Ticked");

pub struct Tick(pub String, pub u64);
impl Command for Tick {
    type Aggregate = Clock;
    fn aggregate_id(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
pub struct Never;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Clock;

impl Aggregate for Clock {
    const TYPE: &'static str = "clock";
    type Command = Tick;
    type Event = Ticked;
    type Error = Never;
    fn handle(&self, c: &Tick) -> Result<Vec<Ticked>, Never> {
        Ok(vec![Ticked { n: c.1 }])
    }
    fn apply(&mut self, _: &Ticked) {}
}

/// One view per stream: every version applied, in order.
#[derive(Debug, Default)]
pub struct Seen;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SeenView {
    pub versions: Vec<u64>,
}

impl Projection for Seen {
    const NAME: &'static str = "seen";
    type Event = Ticked;
    type View = SeenView;
    fn view_id(&self, _: &Ticked, e: &Envelope) -> String {
        e.stream_id.clone()
    }
    fn apply(&self, view: &mut Option<SeenView>, _: &Ticked, e: &Envelope) -> Result<(), BoxError> {
        view.get_or_insert_with(SeenView::default)
            .versions
            .push(e.version);
        Ok(())
    }
}

pub fn events(streams: u64, each: u64) -> Vec<Envelope> {
    let mut out = Vec::new();
    let mut position = 0;
    for v in 1..=each {
        for s in 0..streams {
            position += 1;
            out.push(envelope_of(
                "clock",
                &format!("s-{s}"),
                v,
                position,
                &Ticked { n: v },
            ));
        }
    }
    out
}

pub async fn views(store: &Arc<MemoryViewStore>) -> Vec<(String, SeenView)> {
    ReadModel::<Seen>::new(store.clone())
        .find(&Query::all())
        .await
        .expect("find")
}

pub async fn until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
