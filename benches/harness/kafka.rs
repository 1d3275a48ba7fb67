//! Scenarios on a real Kafka-API broker (`KAFKA_BROKERS`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use cqrs_benches::{catalog_envelopes, ProductStats};
use cqrs_core::memory::{MemoryCheckpointStore, MemoryEventStore, MemoryViewStore};
use cqrs_core::{EventBus, Relay, TrackingProcessor};
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
            let processor = TrackingProcessor::new(ProductStats, Arc::new(MemoryViewStore::new()));
            // Timed from the first batch: joining the group is not throughput.
            let (mut start, mut seen) = (None, 0u64);
            while seen < events {
                let batch = source
                    .next_batch(10_000)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                if batch.events.is_empty() {
                    continue;
                }
                start.get_or_insert_with(Instant::now);
                seen += batch.events.len() as u64;
                processor
                    .process(&batch)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                source.ack(&batch).await.unwrap_or_else(|e| panic!("{e}"));
            }
            let seconds = start.map_or(0.0, |s| s.elapsed().as_secs_f64());
            report(&scenario, seen, seconds);
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
