//! Scenarios on a real Kafka-API broker (`KAFKA_BROKERS`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use cqrs_benches::{catalog_envelopes, consume_into_stats};
use cqrs_core::memory::{MemoryCheckpointStore, MemoryEventStore};
use cqrs_core::{EventBus, Relay};
use cqrs_kafka::{KafkaBus, KafkaConfig};

use crate::{report, wanted};

fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

fn bus(partitions: i32) -> KafkaBus {
    let prefix = format!("bench{}.", uuid_like());
    let config = KafkaConfig::new(brokers(), prefix)
        .unwrap_or_else(|e| panic!("{e}"))
        .partitions(partitions)
        .session_timeout(Duration::from_secs(6));
    KafkaBus::new(config).unwrap_or_else(|e| panic!("{e}"))
}

fn uuid_like() -> String {
    format!(
        "{:x}",
        Instant::now().elapsed().as_nanos() ^ u128::from(std::process::id()) << 64
    )
    .chars()
    .rev()
    .take(10)
    .collect()
}

pub async fn run(events: u64, runs: u64, products: u64) {
    let envelopes = catalog_envelopes(events, products);
    for partitions in [1, 3] {
        let scenario = format!("kafka_to_projection_{partitions}p");
        if !wanted(&scenario) {
            continue;
        }
        for _ in 0..runs {
            let bus = bus(partitions);
            for chunk in envelopes.chunks(50_000) {
                bus.publish(chunk).await.unwrap_or_else(|e| panic!("{e}"));
            }
            let mut source = bus
                .subscribe("bench", &["product", "comment"], Duration::from_secs(1))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let seconds = consume_into_stats(source.as_mut(), events, 10_000).await;
            report(&scenario, events, seconds);
        }
    }
    if wanted("relay_to_kafka") {
        for _ in 0..runs {
            let store = Arc::new(MemoryEventStore::new());
            store.insert_raw(envelopes.clone());
            let relay = Relay::new(
                "bench-relay",
                store,
                Arc::new(bus(3)),
                Arc::new(MemoryCheckpointStore::new()),
            )
            .batch_size(20_000);
            let start = Instant::now();
            let published = relay
                .publish_pending()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            report("relay_to_kafka", published, start.elapsed().as_secs_f64());
        }
    }
}
