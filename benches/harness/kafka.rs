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

/// A bus on topics of its own; `named`: the envelope in the eleven named headers instead of
/// the one `cqrs.envelope` header (the `_named` scenarios, the form before it).
fn bus_with(partitions: i32, named: bool) -> KafkaBus {
    let prefix = format!("bench{}.", uuid_like());
    let config = KafkaConfig::new(brokers(), prefix)
        .unwrap_or_else(|e| panic!("{e}"))
        .partitions(partitions)
        .session_timeout(Duration::from_secs(6))
        .named_headers(named);
    KafkaBus::new(config).unwrap_or_else(|e| panic!("{e}"))
}

fn bus(partitions: i32) -> KafkaBus {
    bus_with(partitions, false)
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

/// The bus's two topics, made (idempotent).
async fn made_topics(bus: &KafkaBus) -> Vec<String> {
    let topics: Vec<String> = ["product", "comment"]
        .iter()
        .map(|t| bus.topic(t).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    bus.ensure_topics(&topics)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    topics
}

/// **Baseline**: a plain rdkafka `FutureProducer` with the bus's settings (idempotence,
/// `linger.ms` 5) sending the same records (the stream id as key, the payload, no headers) to
/// topics of 3 partitions, 20 000 at a time, every delivery awaited; nothing read from a log.
async fn raw_produce(envelopes: &[cqrs_core::Envelope]) -> f64 {
    use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};

    let bus = bus(3);
    let topics = made_topics(&bus).await;
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap_or_else(|e| panic!("{e}"));
    // Connected and the topics' leaders known before the clock starts, as the bus's own
    // producer is by the time the relay runs (it connects while the log is loaded).
    for topic in &topics {
        producer
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let topic_of = |e: &cqrs_core::Envelope| {
        if e.aggregate_type == "product" {
            &topics[0]
        } else {
            &topics[1]
        }
    };
    let start = Instant::now();
    for chunk in envelopes.chunks(20_000) {
        let sends = chunk.iter().map(|e| {
            let record = FutureRecord::to(topic_of(e))
                .key(e.stream_id.as_bytes())
                .payload(e.payload.as_ref());
            producer.send(record, Duration::from_secs(30))
        });
        for outcome in futures::future::join_all(sends).await {
            outcome.unwrap_or_else(|(e, _)| panic!("{e}"));
        }
    }
    start.elapsed().as_secs_f64()
}

pub async fn run(events: u64, runs: u64, products: u64) {
    let envelopes = catalog_envelopes(events, products);
    for (partitions, suffix) in [(1, ""), (3, ""), (1, "_named"), (3, "_named")] {
        let scenario = format!("kafka_to_projection_{partitions}p{suffix}");
        let raw = format!("kafka_raw_consume_{partitions}p{suffix}");
        let bus_only = format!("kafka_bus_only_{partitions}p{suffix}");
        if !wanted(&scenario) && !wanted(&raw) && !wanted(&bus_only) {
            continue;
        }
        for _ in 0..runs {
            let bus = bus_with(partitions, !suffix.is_empty());
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
    if wanted("kafka_raw_produce") {
        for _ in 0..runs {
            let seconds = raw_produce(&envelopes).await;
            report("kafka_raw_produce", envelopes.len() as u64, seconds);
        }
    }
    for scenario in ["relay_to_kafka", "relay_to_kafka_named"] {
        if !wanted(scenario) {
            continue;
        }
        for _ in 0..runs {
            let store = Arc::new(MemoryEventStore::new());
            store.insert_raw(envelopes.clone());
            // The topics made before the clock starts, as for the raw producer: a relay
            // makes them once in its life, on its first publish.
            let bus = bus_with(3, scenario.ends_with("_named"));
            made_topics(&bus).await;
            let relay = Relay::new(
                "bench-relay",
                store,
                Arc::new(bus),
                Arc::new(MemoryCheckpointStore::new()),
            )
            .batch_size(20_000);
            let start = Instant::now();
            let published = relay
                .publish_pending()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            report(scenario, published, start.elapsed().as_secs_f64());
        }
    }
}
