#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! The Kafka bus on a real broker: the conformance suite, round trips, poison, configured names.
//! The relay through a broker outage is in `outage.rs`.

mod common;

use common::*;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cqrs_core::memory::MemoryViewStore;
use cqrs_core::processor::ErrorPolicy;
use cqrs_core::{BusFeed, DeadLetterStore, EventBus, TrackingProcessor};
use cqrs_kafka::{KafkaBus, KafkaConfig};
use cqrs_testing::raw_envelope;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kafka_bus_passes_the_bus_conformance_suite() {
    cqrs_testing::bus_conformance::run(bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_trip_keeps_keys_headers_and_per_key_order_over_partitions() {
    let bus = bus().await;
    let published = events(6, 20);
    bus.publish(&published).await.expect("publish");
    let mut sub = bus
        .subscribe("g", &["clock"], Duration::from_millis(500))
        .await
        .expect("subscribe");
    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.len() < published.len() {
        assert!(
            Instant::now() < deadline,
            "received {} of {}",
            received.len(),
            published.len()
        );
        let batch = sub.next_batch(50).await.expect("batch");
        sub.ack(&batch).await.expect("ack");
        received.extend(batch.events);
    }
    let mut by_stream: HashMap<String, Vec<u64>> = HashMap::new();
    for e in &received {
        by_stream
            .entry(e.stream_id.clone())
            .or_default()
            .push(e.version);
    }
    for (stream, versions) in &by_stream {
        assert_eq!(versions, &(1..=20).collect::<Vec<_>>(), "order of {stream}");
    }
    // Every field survives the trip: key, payload and the headers.
    let sent: BTreeMap<_, _> = published
        .iter()
        .map(|e| (e.metadata.event_id, e.clone()))
        .collect();
    for e in &received {
        assert_eq!(Some(e), sent.get(&e.metadata.event_id));
    }
    // And the records really are keyed by stream id, spread over the partitions.
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", "inspector")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()
        .expect("consumer");
    consumer
        .subscribe(&[&bus.topic("clock").expect("topic")])
        .expect("subscribe");
    let mut partitions = HashMap::new();
    while partitions.values().map(Vec::len).sum::<usize>() < published.len() {
        let m = tokio::time::timeout(Duration::from_secs(20), consumer.recv())
            .await
            .expect("recv")
            .expect("message");
        let key = String::from_utf8(m.key().expect("key").to_vec()).expect("utf8");
        assert!(m
            .headers()
            .expect("headers")
            .iter()
            .any(|h| h.key == cqrs_core::wire::compact::ENVELOPE));
        partitions
            .entry(m.partition())
            .or_insert_with(Vec::new)
            .push(key);
    }
    assert!(
        partitions.len() >= 2,
        "keys spread over the partitions: {:?}",
        partitions.keys()
    );
    for keys in partitions.values() {
        for key in keys {
            let elsewhere = partitions.values().filter(|k| k.contains(key)).count();
            assert_eq!(elsewhere, 1, "stream {key} lives in one partition");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_is_a_dead_letter_of_the_projection_and_on_the_topic_and_the_rest_flows() {
    let bus = Arc::new(bus().await);
    let topic = bus.topic("clock").expect("topic");
    bus.publish(&events(1, 2)).await.expect("publish");
    // A record with no headers at all, then an event no code knows, then good ones.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("producer");
    producer
        .send(
            FutureRecord::to(&topic)
                .key("s-0")
                .payload("not an envelope"),
            Duration::from_secs(5),
        )
        .await
        .expect("raw record");
    let unknown = raw_envelope("clock", "x-0", 1, 3, "kafkatest.Unknown", 1, "{}");
    bus.publish(&[unknown]).await.expect("unknown event");
    bus.publish(&events(1, 5)[2..])
        .await
        .expect("publish the rest");

    let views_store = Arc::new(MemoryViewStore::new());
    let feed = Arc::new(BusFeed::new(bus.clone(), "poison", ["clock"]));
    let handle = TrackingProcessor::new(Seen, views_store.clone())
        .error_policy(ErrorPolicy::dead_letter())
        .idle_wait(Duration::from_millis(300))
        .spawn(feed);
    until("the good events", Duration::from_secs(60), || async {
        views(&views_store)
            .await
            .first()
            .is_some_and(|(_, v)| v.versions.len() == 5)
    })
    .await;
    handle.stop().await.expect("stop");
    assert_eq!(views(&views_store).await[0].1.versions, vec![1, 2, 3, 4, 5]);
    let dead = views_store
        .dead_letters("seen")
        .await
        .expect("dead letters");
    // One dead-letter path for every feed: the record that is no envelope is a dead letter
    // of the projection too, listed, with its reason and where it came from.
    assert_eq!(dead.len(), 2, "{dead:?}");
    let raw = dead
        .iter()
        .find(|d| d.reason.contains("header `cqrs.timestamp` is missing"))
        .expect("the raw record is a dead letter");
    assert_eq!(raw.envelope.stream_id, "s-0");
    assert_eq!(&raw.envelope.payload[..], b"not an envelope");
    assert!(raw.envelope.metadata.user["cqrs.dlq.source"].starts_with(&topic));
    assert!(
        dead.iter().any(|d| d.reason.contains("kafkatest.Unknown")),
        "{dead:?}"
    );
    // ... and retryable like any other: it fails again (no code reads it), and stays.
    let report = TrackingProcessor::new(Seen, views_store.clone())
        .retry_dead_letters(views_store.as_ref())
        .await
        .expect("retry");
    assert_eq!((report.resolved.len(), report.failed.len()), (0, 2));
    assert_eq!(
        views_store.dead_letters("seen").await.expect("list").len(),
        2
    );

    // Both are on `<topic>.dlq`, with their reasons.
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", "dlq-reader")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()
        .expect("consumer");
    consumer
        .subscribe(&[&format!("{topic}.dlq")])
        .expect("subscribe");
    let mut reasons = Vec::new();
    while reasons.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("dlq record")
            .expect("message");
        let reason = m
            .headers()
            .and_then(|h| {
                h.iter()
                    .find(|h| h.key == "cqrs.dlq.reason")
                    .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
            })
            .expect("a reason header");
        reasons.push(reason);
    }
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("header `cqrs.timestamp` is missing")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("kafkatest.Unknown")),
        "{reasons:?}"
    );
}

#[tokio::test]
async fn configured_names_are_validated_and_credentials_never_shown() {
    let hostile = [
        "a b",
        "x;y",
        "../etc",
        "topic\u{0}",
        "prefix'--",
        "é",
        ".",
        "..",
        &"t".repeat(250),
    ];
    for bad in hostile {
        let err = KafkaConfig::new("127.0.0.1:9092", bad).expect_err(bad);
        assert!(
            matches!(err, cqrs_core::Error::Config(ref m) if m.contains("invalid topic name")),
            "{bad:?}: {err}"
        );
    }
    assert!(KafkaConfig::new("  ", "shop.").is_err(), "no brokers");
    let bus = KafkaBus::new(
        KafkaConfig::new("127.0.0.1:9092", "shop.")
            .expect("config")
            .property("sasl.username", "shop")
            .property("sasl.password", "s3cret"),
    )
    .expect("bus");
    for bad in ["a/b", "x y", "c;d", &"t".repeat(250)] {
        assert!(bus.topic(bad).is_err(), "{bad:?}");
    }
    assert_eq!(bus.topic("product").expect("topic"), "shop.product");
    let shown = format!("{bus:?} {:?}", bus.config());
    assert!(!shown.contains("s3cret"), "{shown}");
    println!(
        "[fault] Kafka names: {} hostile topic prefixes and 4 hostile aggregate types refused \
         with a typed error; a SASL password absent from Debug output",
        hostile.len()
    );
}
