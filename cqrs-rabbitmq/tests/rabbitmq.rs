#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! The RabbitMQ bus on the real broker: the bus conformance suite, messages that are not
//! envelopes, unroutable publishes, names and credentials.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{amqp_url, bus, config, Cleanup, Seen};
use cqrs_core::memory::MemoryViewStore;
use cqrs_core::processor::ErrorPolicy;
use cqrs_core::{BusFeed, DeadLetterStore, Envelope, Error, EventBus, TrackingProcessor};
use cqrs_rabbitmq::{RabbitBus, RabbitConfig};
use cqrs_testing::bus_conformance::{self, Ticked, GROUPS, TYPE, TYPE_2};
use cqrs_testing::envelope_of;
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rabbitmq_bus_passes_the_bus_conformance_suite() {
    let cleanup = Cleanup::default();
    bus_conformance::run(|| async {
        // The publisher declares the suite's groups, which then keep what comes before
        // their members join.
        let bus = common::bus_with(config(&amqp_url()).groups(GROUPS).expect("groups")).await;
        for group in GROUPS {
            cleanup.add(&bus, group, &[TYPE, TYPE_2]);
        }
        bus
    })
    .await;
    cleanup.run().await;
}

/// A raw publish to a group's partition queue by a client that knows nothing of envelopes.
async fn publish_raw(bus: &RabbitBus, exchange: &str, body: &[u8], headers: FieldTable) {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .basic_publish(
            exchange.into(),
            "0".into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_headers(headers),
        )
        .await
        .expect("publish")
        .await
        .expect("published");
    let _ = bus;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_is_no_envelope_is_a_dead_letter_on_the_queue_and_the_rest_flows() {
    let bus = Arc::new(bus().await);
    let cleanup = Cleanup::default();
    cleanup.add(&bus, "raw", &[TYPE]);
    bus.subscribe("raw", &[TYPE], Duration::from_millis(200))
        .await
        .expect("the group's queues");
    let exchange = format!("{}{TYPE}", bus.config().prefix());
    publish_raw(&bus, &exchange, b"not an envelope", FieldTable::default()).await;
    let good: Vec<Envelope> = (1..=3)
        .map(|v| envelope_of(TYPE, "s-0", v, v, &Ticked { n: v }))
        .collect();
    bus.publish(&good).await.expect("publish");

    let store = Arc::new(MemoryViewStore::new());
    let handle = TrackingProcessor::new(Seen, store.clone())
        .error_policy(ErrorPolicy::dead_letter())
        .idle_wait(Duration::from_millis(200))
        .spawn(Arc::new(BusFeed::new(bus.clone(), "raw", [TYPE])));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let dead = store.dead_letters("seen").await.expect("list");
        let view = cqrs_core::ReadModel::<Seen>::new(store.clone())
            .get("s-0")
            .await
            .expect("get");
        if dead.len() == 1 && view.as_ref().map(|v| v.versions.len()) == Some(3) {
            break;
        }
        assert!(Instant::now() < deadline, "dead {dead:?}, view {view:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    handle.stop().await.expect("stop");
    let dead = store.dead_letters("seen").await.expect("list");
    assert!(
        dead[0]
            .reason
            .contains("header `cqrs.stream_id` is missing"),
        "{}",
        dead[0].reason
    );
    assert_eq!(&dead[0].envelope.payload[..], b"not an envelope");
    assert!(dead[0].envelope.metadata.user["cqrs.dlq.source"].ends_with(&format!("raw:{TYPE}:0")));

    // The group's dead-letter queue has it, with its reason.
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    let queue = format!("{}raw:dead-letters", bus.config().prefix());
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume the dead letters");
    let message = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("a dead letter on the queue")
        .expect("a message")
        .expect("delivered");
    assert_eq!(message.data, b"not an envelope");
    let reason = message
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("cqrs.dlq.reason").cloned());
    match reason {
        Some(AMQPValue::LongString(r)) => {
            assert!(String::from_utf8_lossy(r.as_bytes()).contains("cqrs.stream_id"))
        }
        other => panic!("a reason header, got {other:?}"),
    }
    cleanup.run().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_no_queue_takes_is_an_error_and_named_groups_keep_what_came_before() {
    let bus = bus().await;
    let event = envelope_of(TYPE, "s-0", 1, 1, &Ticked { n: 1 });
    let err = bus.publish(std::slice::from_ref(&event)).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("reached no queue"), "{err}");

    // With the group named, the publisher declares its queues: the event waits for it.
    let config = config(&amqp_url()).groups(["later"]).expect("group");
    let bus = common::bus_with(config).await;
    let cleanup = Cleanup::default();
    cleanup.add(&bus, "later", &[TYPE]);
    bus.publish(std::slice::from_ref(&event))
        .await
        .expect("kept for the group");
    let mut member = bus
        .subscribe("later", &[TYPE], Duration::from_millis(200))
        .await
        .expect("subscribe");
    let deadline = Instant::now() + Duration::from_secs(30);
    let got = loop {
        let batch = member.next_batch(10).await.expect("batch");
        if !batch.events.is_empty() {
            member.ack(&batch).await.expect("ack");
            break batch.events;
        }
        assert!(
            Instant::now() < deadline,
            "the event published before the group subscribed"
        );
    };
    assert_eq!(got, vec![event]);
    drop(member);
    cleanup.run().await;
}

/// A member that dies with its batch unacknowledged, again and again (a message that crashes
/// the consumer): the broker counts a return for every message it had sent ahead, not only the
/// culprit. Only the message each crash restarts at becomes a dead letter; the others are
/// applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_dead_letters_the_message_it_restarts_at_and_spares_the_rest() {
    let config = config(&amqp_url()).delivery_limit(2).partitions(1);
    let bus = Arc::new(common::bus_with(config).await);
    let cleanup = Cleanup::default();
    cleanup.add(&bus, "loop", &[TYPE]);
    let idle = Duration::from_millis(100);
    bus.subscribe("loop", &[TYPE], idle)
        .await
        .expect("the group's queues");
    let events: Vec<Envelope> = (1..=4)
        .map(|v| envelope_of(TYPE, "s-0", v, v, &Ticked { n: v }))
        .collect();
    bus.publish(&events).await.expect("publish");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut handed = Vec::new();
    for _ in 0..2 + cqrs_rabbitmq::ISOLATED_ATTEMPTS {
        let mut member = bus
            .subscribe("loop", &[TYPE], idle)
            .await
            .expect("subscribe");
        let batch = loop {
            let batch = member.next_batch(100).await.expect("batch");
            if !batch.events.is_empty() || !batch.rejected.is_empty() {
                break batch;
            }
            assert!(Instant::now() < deadline, "the member got nothing");
        };
        handed.push(batch.events.len());
        drop(member); // a crash: no ack
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // From the delivery limit on, the message goes alone.
    assert_eq!(handed[2..], [1, 1, 1], "batch sizes per crash: {handed:?}");

    let store = Arc::new(MemoryViewStore::new());
    let handle = TrackingProcessor::new(Seen, store.clone())
        .error_policy(ErrorPolicy::dead_letter())
        .idle_wait(idle)
        .spawn(Arc::new(BusFeed::new(bus.clone(), "loop", [TYPE])));
    loop {
        let view = cqrs_core::ReadModel::<Seen>::new(store.clone())
            .get("s-0")
            .await
            .expect("get");
        let dead = store.dead_letters("seen").await.expect("list");
        if view.as_ref().map(|v| v.versions.len()) == Some(3) && dead.len() == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "view {view:?}, dead letters {dead:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    handle.stop().await.expect("stop");
    let dead = store.dead_letters("seen").await.expect("list");
    assert_eq!(dead[0].envelope.version, 1, "{dead:?}");
    assert!(
        dead[0].reason.contains("without an acknowledgement"),
        "{}",
        dead[0].reason
    );
    let view = cqrs_core::ReadModel::<Seen>::new(store.clone())
        .get("s-0")
        .await
        .expect("get");
    assert_eq!(view.map(|v| v.versions), Some(vec![2, 3, 4]));
    println!(
        "[fault] RabbitMQ crash loop: 5 crashes with the batch unacknowledged (batches of {handed:?}); \
         1 dead letter (the message each crash restarted at), the 3 others applied once"
    );
    cleanup.run().await;
}

#[tokio::test]
async fn configured_names_are_validated_and_credentials_never_shown() {
    assert!(matches!(
        RabbitConfig::new("http://x", "p."),
        Err(Error::Config(_))
    ));
    for prefix in ["amq.x", "has space", "colon:"] {
        assert!(
            matches!(RabbitConfig::new("amqp://h", prefix), Err(Error::Config(_))),
            "{prefix}"
        );
    }
    let config = RabbitConfig::new("amqp://admin:s3cret@127.0.0.1:1/%2f", "p.").expect("config");
    assert!(config.clone().groups(["bad group"]).is_err());
    let shown = format!("{config:?}");
    assert!(
        !shown.contains("s3cret") && shown.contains("127.0.0.1:1"),
        "{shown}"
    );
    let bus = RabbitBus::new(config.publish_timeout(Duration::from_secs(2)));
    let err = bus.check().await.unwrap_err();
    assert!(err.is_transient());
    let text = format!("{err} {err:?} {bus:?}");
    assert!(!text.contains("s3cret"), "{text}");
    assert!(text.contains("127.0.0.1:1"), "{text}");
    let bad_group = bus
        .subscribe("a b", &["t"], Duration::from_millis(10))
        .await;
    assert!(matches!(bad_group, Err(Error::Config(_))));
    let bad_type = bus
        .publish(&[envelope_of("a:b", "s", 1, 1, &Ticked { n: 1 })])
        .await;
    assert!(matches!(bad_type, Err(Error::Config(_))));
}
