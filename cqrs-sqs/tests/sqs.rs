#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! The SQS bus on a real SQS API server: the bus conformance suite, the size limit,
//! visibility kept while a batch is applied, messages that are not envelopes, dead letters
//! after too many receives, and a server that is down.

mod common;

use std::time::{Duration, Instant};

use common::{bus, bus_with, client, client_at, config, messages_in, url_of};
use cqrs_core::view::DeadLetter;
use cqrs_core::{Envelope, Error, EventBus};
use cqrs_sqs::{SqsBus, REASON};
use cqrs_testing::bus_conformance::{self, Ticked, GROUPS, TYPE};
use cqrs_testing::envelope_of;

const IDLE: Duration = Duration::from_millis(200);

fn round(streams: u64, v: u64) -> Vec<Envelope> {
    (0..streams)
        .map(|s| envelope_of(TYPE, &format!("s-{s}"), v, v * 1_000 + s, &Ticked { n: v }))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqs_bus_passes_the_bus_conformance_suite() {
    let buses = parking_lot::Mutex::new(Vec::new());
    // SQS hands a message group to one member at a time, not always the same one.
    bus_conformance::run_unpinned(|| async {
        let bus = bus_with(config().groups(GROUPS).unwrap()).await;
        buses.lock().push(bus.clone());
        bus
    })
    .await;
    for bus in buses.into_inner() {
        bus.delete_queues().await.unwrap();
    }
}

/// An event over the size limit is refused before anything of its batch is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_over_the_limit_is_refused_and_nothing_of_its_batch_is_sent() {
    let bus = bus_with(config().groups(["big"]).unwrap()).await;
    let first = envelope_of(TYPE, "s-0", 1, 1, &Ticked { n: 1 });
    bus.publish(std::slice::from_ref(&first))
        .await
        .expect("a small event goes");
    let url = url_of(bus.client(), &bus.config().queue(TYPE, "big")).await;
    assert_eq!(messages_in(bus.client(), &url).await, 1);
    let second = envelope_of(TYPE, "s-0", 2, 2, &Ticked { n: 2 });
    let mut big = envelope_of(TYPE, "s-1", 1, 3, &Ticked { n: 1 });
    big.payload = format!("\"{}\"", "x".repeat(262_144)).into_bytes().into();
    match bus.publish(&[second, big]).await {
        Err(Error::TooLarge { event, size, limit }) => {
            assert_eq!(event.stream_id, "s-1");
            assert!(size > limit, "{size} > {limit}");
            assert_eq!(limit, cqrs_sqs::SQS_MAX_MESSAGE);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        messages_in(bus.client(), &url).await,
        1,
        "nothing of the refused batch was sent"
    );
    bus.delete_queues().await.unwrap();
}

/// A member that takes longer than the visibility timeout over a batch keeps it: the other
/// member of its group receives none of it meanwhile, and nothing after the ack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_applied_past_its_visibility_timeout_stays_with_its_member() {
    let bus = bus_with(config().groups(["slow"]).unwrap()).await;
    let mut first = bus.subscribe("slow", &[TYPE], IDLE).await.unwrap();
    bus.publish(&round(4, 1)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut held = Vec::new();
    while held.len() < 4 {
        assert!(
            Instant::now() < deadline,
            "the first member got {}",
            held.len()
        );
        held.extend(first.next_batch(100).await.unwrap().events);
    }
    let mut second = bus.subscribe("slow", &[TYPE], IDLE).await.unwrap();
    // Three visibility timeouts (2 s each) while the first "applies" its batch.
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        let got = second.next_batch(100).await.unwrap();
        assert!(
            got.events.is_empty(),
            "redelivered while held: {:?}",
            got.events
        );
    }
    first
        .ack(&cqrs_core::processor::Batch::from_bus(held))
        .await
        .unwrap();
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let got = second.next_batch(100).await.unwrap();
        assert!(
            got.events.is_empty(),
            "delivered after the ack: {:?}",
            got.events
        );
    }
    let url = url_of(bus.client(), &bus.config().queue(TYPE, "slow")).await;
    assert_eq!(messages_in(bus.client(), &url).await, 0, "all deleted");
    drop((first, second));
    bus.delete_queues().await.unwrap();
}

/// A member killed while it held a message group's first two messages (received, neither
/// deleted nor given back): once their visibility times out, the group comes back from its
/// oldest message, in order, as AWS does. (moto 5.2.5 handed out version 2, then 3, then 1:
/// a view applying 2 skips 1 as old. The test server's receive now frees timed-out messages
/// first; this guards it, and any server the tests are pointed at.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_vanishes_gives_its_group_back_from_the_oldest_message() {
    let bus = bus_with(config().groups(["gone"]).unwrap()).await;
    let events: Vec<Envelope> = (1..=3)
        .map(|v| envelope_of(TYPE, "s-0", v, v, &Ticked { n: v }))
        .collect();
    bus.publish(&events).await.unwrap();
    let url = url_of(bus.client(), &bus.config().queue(TYPE, "gone")).await;
    let held = bus
        .client()
        .receive_message()
        .queue_url(&url)
        .max_number_of_messages(2)
        .visibility_timeout(2)
        .send()
        .await
        .unwrap();
    assert_eq!(held.messages().len(), 2, "the dead member held two");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut member = bus.subscribe("gone", &[TYPE], IDLE).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut versions = Vec::new();
    while versions.len() < 3 {
        assert!(Instant::now() < deadline, "received {versions:?}");
        let batch = member.next_batch(10).await.unwrap();
        versions.extend(batch.events.iter().map(|e| e.version));
        member.ack(&batch).await.unwrap();
    }
    println!("[fault] SQS: a group whose holder vanished came back as versions {versions:?}");
    assert_eq!(
        versions,
        [1, 2, 3],
        "the group resumes at its oldest message"
    );
    drop(member);
    bus.delete_queues().await.unwrap();
}

/// A message without the envelope's headers is handed out as rejected, with the reason, under
/// the same event id on every receive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_is_not_an_envelope_is_rejected_with_its_reason() {
    let bus = bus().await;
    let mut member = bus.subscribe("raw", &[TYPE], IDLE).await.unwrap();
    let url = url_of(bus.client(), &bus.config().queue(TYPE, "raw")).await;
    bus.client()
        .send_message()
        .queue_url(&url)
        .message_body("hello")
        .message_group_id("g")
        .message_deduplication_id("d1")
        .send()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let rejected = loop {
        let batch = member.next_batch(10).await.unwrap();
        if let Some(r) = batch.rejected.first() {
            assert!(batch.events.is_empty());
            break r.clone();
        }
        assert!(Instant::now() < deadline, "nothing rejected");
    };
    assert!(
        rejected.reason.contains("cqrs.headers"),
        "{}",
        rejected.reason
    );
    assert_eq!(&rejected.envelope.payload[..], b"hello");
    // Not acknowledged: it comes back, to the next member, under the same id.
    drop(member);
    let mut again = bus.subscribe("raw", &[TYPE], IDLE).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let second = loop {
        if let Some(r) = again.next_batch(10).await.unwrap().rejected.first() {
            break r.clone();
        }
        assert!(Instant::now() < deadline, "not received again");
    };
    assert_eq!(
        second.envelope.metadata.event_id,
        rejected.envelope.metadata.event_id
    );
    drop(again);
    bus.delete_queues().await.unwrap();
}

/// A message received too often without an acknowledgement (its members crash on it) goes
/// alone in its batch, then is handed out rejected; its dead letter lands in the group's
/// dead-letter queue with the reason, and it leaves the queue. The queue has SQS's own
/// redrive policy as a backstop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_received_too_often_is_a_dead_letter() {
    let bus = bus_with(config().groups(["crash"]).unwrap().delivery_limit(1)).await;
    bus.publish(&[
        envelope_of(TYPE, "s-0", 1, 1, &Ticked { n: 1 }),
        envelope_of(TYPE, "s-0", 2, 2, &Ticked { n: 2 }),
    ])
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut sizes = Vec::new();
    let (mut member, letter) = loop {
        assert!(
            Instant::now() < deadline,
            "never rejected: batches {sizes:?}"
        );
        let mut member = bus.subscribe("crash", &[TYPE], IDLE).await.unwrap();
        let batch = loop {
            let batch = member.next_batch(10).await.unwrap();
            if !(batch.events.is_empty() && batch.rejected.is_empty()) {
                break batch;
            }
            assert!(
                Instant::now() < deadline,
                "nothing received: batches {sizes:?}"
            );
        };
        sizes.push(batch.events.len() + batch.rejected.len());
        if let Some(r) = batch.rejected.first() {
            let letter = DeadLetter {
                projection: "crash".into(),
                envelope: r.envelope.clone(),
                reason: r.reason.clone(),
                at: chrono::Utc::now(),
                view: None,
            };
            break (member, letter);
        }
        // The member "crashes" on its batch: it leaves without an ack.
        drop(member);
    };
    assert!(
        letter.reason.contains("received 5 times"),
        "{}",
        letter.reason
    );
    assert_eq!(
        (letter.envelope.stream_id.as_str(), letter.envelope.version),
        ("s-0", 1)
    );
    assert_eq!(
        sizes,
        [2, 1, 1, 1, 1],
        "whole, then alone three times, then rejected"
    );
    member.dead_letter(&[letter]).await.unwrap();
    member
        .ack(&cqrs_core::processor::Batch::default())
        .await
        .unwrap();
    // Version 2 comes next, now that version 1 left its message group.
    let deadline = Instant::now() + Duration::from_secs(30);
    let next = loop {
        let batch = member.next_batch(10).await.unwrap();
        if let Some(e) = batch.events.first() {
            break e.version;
        }
        assert!(Instant::now() < deadline, "version 2 never came");
    };
    assert_eq!(next, 2);
    member
        .ack(&cqrs_core::processor::Batch::default())
        .await
        .unwrap();

    let dlq = url_of(bus.client(), &bus.config().dead_letter_queue(TYPE, "crash")).await;
    let got = bus
        .client()
        .receive_message()
        .queue_url(&dlq)
        .message_attribute_names("All")
        .wait_time_seconds(2)
        .send()
        .await
        .unwrap();
    let dead = got.messages().first().expect("a dead letter in the queue");
    let reason = dead
        .message_attributes()
        .and_then(|a| a.get(REASON))
        .and_then(|v| v.string_value());
    assert!(
        reason.is_some_and(|r| r.contains("received 5 times")),
        "{reason:?}"
    );
    let url = url_of(bus.client(), &bus.config().queue(TYPE, "crash")).await;
    let policy = bus
        .client()
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy)
        .send()
        .await
        .unwrap();
    let policy = format!("{:?}", policy.attributes());
    assert!(
        policy.contains("crash--dlq.fifo") && policy.contains("15"),
        "{policy}"
    );
    drop(member);
    bus.delete_queues().await.unwrap();
}

/// A server that does not answer is a transient backend error (the relay's breaker opens and
/// callers retry), never a hang or a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_down_is_a_transient_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let bus = SqsBus::new(
        client_at(&format!("http://127.0.0.1:{port}")).await,
        config().groups(["down"]).unwrap(),
    );
    let started = Instant::now();
    let err = bus
        .publish(&round(1, 1))
        .await
        .expect_err("nothing listens there");
    assert!(err.is_transient(), "{err}");
    assert!(
        matches!(err, Error::Backend { backend: "sqs", .. }),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    let err = bus
        .subscribe("down", &[TYPE], IDLE)
        .await
        .err()
        .expect("no queue made");
    assert!(err.is_transient(), "{err}");
    let _ = client().await;
}
