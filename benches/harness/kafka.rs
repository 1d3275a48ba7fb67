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

/// **Baseline**: a plain rdkafka `BaseConsumer` in a group of its own reading the bus's topics
/// from the start, counting messages and their bytes, nothing decoded; timed from the first.
fn raw_consume(bus: &KafkaBus, events: u64) -> f64 {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    use rdkafka::Message as _;

    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("raw{}", uuid_like()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap_or_else(|e| panic!("{e}"));
    let topics: Vec<String> = ["product", "comment"]
        .iter()
        .map(|t| bus.topic(t).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .unwrap_or_else(|e| panic!("{e}"));
    let (mut start, mut seen, mut bytes) = (None, 0u64, 0usize);
    while seen < events {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                start.get_or_insert_with(Instant::now);
                bytes += message.payload().map_or(0, <[u8]>::len);
                seen += 1;
            }
            Some(Err(e)) => panic!("{e}"),
            None => {}
        }
    }
    assert!(bytes > 0);
    start.map_or(0.0, |s| s.elapsed().as_secs_f64())
}

pub async fn run(events: u64, runs: u64, products: u64) {
    let envelopes = catalog_envelopes(events, products);
    for partitions in [1, 3] {
        let scenario = format!("kafka_to_projection_{partitions}p");
        let raw = format!("kafka_raw_consume_{partitions}p");
        if !wanted(&scenario) && !wanted(&raw) && !wanted(&format!("kafka_bus_only_{partitions}p"))
        {
            continue;
        }
        for _ in 0..runs {
            let bus = bus(partitions);
            for chunk in envelopes.chunks(50_000) {
                bus.publish(chunk).await.unwrap_or_else(|e| panic!("{e}"));
            }
            // The same messages read twice, in one invocation: a plain consumer, then the bus
            // into the processor on its default batch size.
            if wanted(&raw) {
                let reader = bus.clone();
                let seconds = tokio::task::spawn_blocking(move || raw_consume(&reader, events))
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                report(&raw, events, seconds);
            }
            // Where the time goes: the bus alone (decode, offsets committed), no processor.
            let bus_only = format!("kafka_bus_only_{partitions}p");
            if wanted(&bus_only) {
                let mut source = bus
                    .subscribe(
                        "bench-bus-only",
                        &["product", "comment"],
                        Duration::from_secs(1),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                let (mut start, mut seen) = (None, 0u64);
                while seen < events {
                    let batch = source
                        .next_batch(crate::arg("--bus-batch", 1_000) as usize)
                        .await
                        .unwrap_or_else(|e| panic!("{e}"));
                    if batch.events.is_empty() {
                        continue;
                    }
                    start.get_or_insert_with(Instant::now);
                    seen += batch.events.len() as u64;
                    source.ack(&batch).await.unwrap_or_else(|e| panic!("{e}"));
                }
                let seconds = start.map_or(0.0, |s: Instant| s.elapsed().as_secs_f64());
                report(&bus_only, events, seconds);
            }
            if wanted(&scenario) {
                let mut source = bus
                    .subscribe("bench", &["product", "comment"], Duration::from_secs(1))
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                let seconds = consume_into_stats(source.as_mut(), events, 1_000).await;
                report(&scenario, events, seconds);
            }
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
