//! Scenarios on a real RabbitMQ broker (`AMQP_URL`): the raw `lapin` consume rate beside the
//! framework's, in the same invocation on the same messages, and the relay's publish rate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cqrs_benches::{catalog_envelopes, consume_into_stats};
use cqrs_core::memory::{MemoryCheckpointStore, MemoryEventStore};
use cqrs_core::{EventBus, Relay};
use cqrs_rabbitmq::{RabbitBus, RabbitConfig};
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};

use crate::{report, wanted};

const TYPES: [&str; 2] = ["product", "comment"];

fn url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn bus(groups: &[&str]) -> RabbitBus {
    let prefix = format!("bench{:x}.", std::process::id() ^ fastrand_like());
    let config = RabbitConfig::new(url(), prefix)
        .and_then(|c| c.groups(groups.iter().copied()))
        .unwrap_or_else(|e| panic!("{e}"));
    RabbitBus::new(config)
}

fn fastrand_like() -> u32 {
    Instant::now().elapsed().subsec_nanos()
        ^ (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos()))
}

/// A plain `lapin` consumer on every partition queue of `group` (one channel each, the same
/// prefetch as the bus), acking every 1 000 messages per queue with one `multiple` ack: the
/// broker's and client's rate with nothing of the framework.
async fn raw_consume(bus: &RabbitBus, group: &str, events: u64) -> f64 {
    let connection = Connection::connect(&url(), ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let config = bus.config();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let mut tasks = Vec::new();
    for t in TYPES {
        for p in 0..4 {
            let queue = format!("{}{group}:{t}:{p}", config.prefix());
            let channel = connection
                .create_channel()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            channel
                .basic_qos(500, BasicQosOptions::default())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let mut consumer = channel
                .basic_consume(
                    queue.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let tx = tx.clone();
            tasks.push(tokio::spawn(async move {
                let (mut unacked, mut last_tag) = (0u32, 0u64);
                loop {
                    let next =
                        tokio::time::timeout(Duration::from_millis(20), consumer.next()).await;
                    let idle = next.is_err();
                    match next {
                        Ok(Some(Ok(delivery))) => {
                            if tx.send(Instant::now()).is_err() {
                                return;
                            }
                            unacked += 1;
                            last_tag = delivery.delivery_tag;
                        }
                        // Idle: acknowledge what is held so the broker sends more.
                        Err(_) => {}
                        _ => return,
                    }
                    if unacked >= 1_000 || (unacked > 0 && idle) {
                        let ack = BasicAckOptions { multiple: true };
                        if channel.basic_ack(last_tag, ack).await.is_err() {
                            return;
                        }
                        unacked = 0;
                    }
                }
            }));
        }
    }
    drop(tx);
    let mut start = None;
    let mut seen = 0;
    while seen < events {
        let Some(at) = rx.recv().await else { break };
        start.get_or_insert(at);
        seen += 1;
    }
    for task in tasks {
        task.abort();
    }
    let _ = connection.close(200, "done".into()).await;
    start.map_or(0.0, |s| s.elapsed().as_secs_f64())
}

/// A plain `lapin` publisher with confirms: the same bodies to the same exchanges and
/// partitions, every confirm awaited, and the group's queues bound (declared by `bus.check`).
async fn raw_publish(bus: &RabbitBus, envelopes: &[cqrs_core::Envelope]) -> f64 {
    bus.check().await.unwrap_or_else(|e| panic!("{e}"));
    // Declare the exchanges and the sink group's queues through one tiny publish each.
    for t in TYPES {
        if let Some(e) = envelopes.iter().find(|e| e.aggregate_type == t) {
            bus.publish(std::slice::from_ref(e))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }
    let connection = Connection::connect(&url(), ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let channel = connection
        .create_channel()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    channel
        .confirm_select(Default::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let prefix = bus.config().prefix().to_owned();
    let start = Instant::now();
    for chunk in envelopes.chunks(20_000) {
        let mut confirms = Vec::with_capacity(chunk.len());
        for e in chunk {
            let key = cqrs_core::wire::partition_of(&e.stream_id, 4).to_string();
            let properties = lapin::BasicProperties::default().with_delivery_mode(2);
            let confirm = channel
                .basic_publish(
                    format!("{prefix}{}", e.aggregate_type).as_str().into(),
                    key.as_str().into(),
                    Default::default(),
                    &e.payload,
                    properties,
                )
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            confirms.push(confirm);
        }
        for confirm in futures::future::join_all(confirms).await {
            confirm.unwrap_or_else(|e| panic!("{e}"));
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let _ = connection.close(200, "done".into()).await;
    seconds
}

/// The framework: a subscription of `group` feeding the processor (in-memory views).
async fn framework_consume(bus: &RabbitBus, group: &str, events: u64) -> f64 {
    let mut source = bus
        .subscribe(group, &TYPES, Duration::from_millis(200))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    consume_into_stats(source.as_mut(), events, 1_000).await
}

pub async fn run(events: u64, runs: u64, products: u64) {
    let envelopes = catalog_envelopes(events, products);
    if wanted("rabbitmq_to_projection") {
        for _ in 0..runs {
            // Both groups' queues get every message of one publish.
            let bus = bus(&["raw", "framework"]);
            for chunk in envelopes.chunks(5_000) {
                bus.publish(chunk).await.unwrap_or_else(|e| panic!("{e}"));
            }
            let raw = raw_consume(&bus, "raw", events).await;
            report("rabbitmq_raw_consume", events, raw);
            let framework = framework_consume(&bus, "framework", events).await;
            report("rabbitmq_to_projection", events, framework);
            println!(
                "{}",
                serde_json::json!({"ratio": "rabbitmq_to_projection / rabbitmq_raw_consume",
                    "value": (raw / framework * 100.0).round() / 100.0})
            );
            for group in ["raw", "framework"] {
                bus.delete_group(group, &TYPES)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }
    if wanted("relay_to_rabbitmq") {
        for _ in 0..runs {
            let sink = bus(&["sink"]);
            let raw = raw_publish(&sink, &envelopes).await;
            report("rabbitmq_raw_publish", events, raw);
            sink.delete_group("sink", &TYPES)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let store = Arc::new(MemoryEventStore::new());
            store.insert_raw(envelopes.clone());
            let bus = Arc::new(bus(&["sink"]));
            let relay = Relay::new(
                "bench-relay",
                store,
                bus.clone(),
                Arc::new(MemoryCheckpointStore::new()),
            )
            .batch_size(20_000);
            let start = Instant::now();
            let published = relay
                .publish_pending()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let relayed = start.elapsed().as_secs_f64();
            report("relay_to_rabbitmq", published, relayed);
            println!(
                "{}",
                serde_json::json!({"ratio": "relay_to_rabbitmq / rabbitmq_raw_publish",
                    "value": (raw / relayed * 100.0).round() / 100.0})
            );
            bus.delete_group("sink", &TYPES)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
