#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! The relay and a bus-fed processor through an outage of a Kafka-API broker of the test's own
//! (killed, restarted empty): every event arrives once, in order.

mod common;

use common::*;
use std::sync::Arc;
use std::time::Duration;

use cqrs_core::memory::{MemoryCheckpointStore, MemoryEventStore, MemoryViewStore};
use cqrs_core::{
    Breaker, BusFeed, CommandGateway, EventReader, EventStore, Relay, TrackingProcessor,
};
use cqrs_kafka::KafkaBus;

/// A Kafka-API broker of the test's own, to kill and restart. `CQRS_KAFKA_SERVER` is a command
/// with a `{port}` placeholder; the test script sets it to tansu.
fn start_broker(port: u16) -> tokio::process::Child {
    let template = std::env::var("CQRS_KAFKA_SERVER").unwrap_or_else(|_| {
        panic!("CQRS_KAFKA_SERVER is not set: this test starts and kills a broker of its own (run ./scripts/test.sh)")
    });
    let command = template.replace("{port}", &port.to_string());
    let mut parts = command.split_whitespace();
    let program = parts.next().expect("a command");
    tokio::process::Command::new(program)
        .args(parts)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the broker")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_rides_out_a_broker_outage_and_every_event_arrives_once_in_order() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let port = 19100 + (std::process::id() % 500) as u16;
    let mut broker = start_broker(port);
    let brokers = format!("127.0.0.1:{port}");
    until("the broker", Duration::from_secs(30), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    let bus = Arc::new(KafkaBus::new(config(&brokers)).expect("bus"));
    let store = Arc::new(MemoryEventStore::new());
    let gateway = CommandGateway::builder(store.clone() as Arc<dyn EventStore>).build();
    let relay = Relay::new(
        "relay",
        store.clone(),
        bus.clone(),
        Arc::new(MemoryCheckpointStore::new()),
    )
    .backoff(cqrs_core::Backoff::new(
        Duration::from_millis(100),
        Duration::from_secs(1),
    ))
    .spawn();
    let views_store = Arc::new(MemoryViewStore::new());
    let feed = Arc::new(BusFeed::new(bus.clone(), "outage", ["clock"]));
    let processor = TrackingProcessor::new(Seen, views_store.clone())
        .idle_wait(Duration::from_millis(300))
        .backend_backoff(cqrs_core::Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(1),
        ))
        .spawn(feed);
    let total = |store: Arc<MemoryViewStore>| async move {
        views(&store)
            .await
            .iter()
            .map(|(_, v)| v.versions.len())
            .sum::<usize>()
    };
    let mut n = 0;
    for _ in 0..5 {
        for s in 0..4 {
            n += 1;
            gateway
                .send(Tick(format!("c-{s}"), n))
                .await
                .expect("command");
        }
    }
    until("the first events", Duration::from_secs(60), || {
        total(views_store.clone()).then_eq(20)
    })
    .await;

    // The broker dies; commands go on and succeed; the relay's circuit opens.
    broker.kill().await.expect("kill");
    let mut breaker = relay.watch_breaker();
    let transitions = {
        let mut watch = relay.watch_breaker();
        tokio::spawn(async move {
            let mut seen = vec![*watch.borrow_and_update()];
            while watch.changed().await.is_ok() {
                let now = *watch.borrow_and_update();
                if seen.last() != Some(&now) {
                    seen.push(now);
                }
                if now == Breaker::Closed {
                    break;
                }
            }
            seen
        })
    };
    for _ in 0..5 {
        for s in 0..4 {
            n += 1;
            gateway
                .send(Tick(format!("c-{s}"), n))
                .await
                .expect("commands succeed while the broker is down");
        }
    }
    tokio::time::timeout(
        Duration::from_secs(60),
        breaker.wait_for(|b| *b == Breaker::Open),
    )
    .await
    .expect("opens")
    .expect("breaker");
    assert_eq!(
        store.head().await.expect("head"),
        40,
        "the events wait in the store"
    );

    // The broker comes back (empty: tansu keeps topics in memory); the relay recovers.
    let _broker = start_broker(port);
    tokio::time::timeout(
        Duration::from_secs(60),
        breaker.wait_for(|b| *b == Breaker::Closed),
    )
    .await
    .expect("closes")
    .expect("breaker");
    until("every event", Duration::from_secs(90), || {
        total(views_store.clone()).then_eq(40)
    })
    .await;
    processor.stop().await.expect("stop");
    relay.stop().await.expect("relay");
    for (id, view) in views(&views_store).await {
        assert_eq!(
            view.versions,
            (1..=10).collect::<Vec<_>>(),
            "{id}: once each, in order"
        );
    }
    let transitions = transitions.await.expect("transitions");
    assert!(
        transitions.starts_with(&[Breaker::Closed, Breaker::Open, Breaker::HalfOpen]),
        "{transitions:?}"
    );
    println!(
        "[fault] Kafka broker killed (relay): 20 commands during the outage, 20 succeeded; \
         breaker {transitions:?}; 40 events delivered, 0 lost, 0 duplicated, in order per stream"
    );
}

trait ThenEq {
    fn then_eq(self, n: usize)
        -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>;
}

impl<F: std::future::Future<Output = usize> + Send + 'static> ThenEq for F {
    fn then_eq(
        self,
        n: usize,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> {
        Box::pin(async move { self.await == n })
    }
}

/// A publish under way when the broker freezes (SIGSTOP) fails after the message timeout, and
/// what reached the topic is a prefix of the batch, in order: its queue is purged, and no
/// record of it expires while later ones are delivered once the broker is back (an idempotent
/// producer whose messages 2 and 3 expired would deliver 4 and 5; a consumer that applied 4
/// skips 2 and 3 when the batch comes again). Publishing the batch again then leaves the
/// stream whole: each version once in the member's view, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_cut_off_by_a_frozen_broker_leaves_a_prefix_and_the_retry_no_gap() {
    let port = 19600 + (std::process::id() % 300) as u16;
    let broker = start_broker(port);
    let pid = broker.id().expect("the broker's pid");
    let brokers = format!("127.0.0.1:{port}");
    until("the broker", Duration::from_secs(30), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    let bus = Arc::new(
        KafkaBus::new(
            config(&brokers)
                .partitions(1)
                .message_timeout(Duration::from_secs(2)),
        )
        .expect("bus"),
    );
    const N: u64 = 50_000;
    let batch = events(1, N);
    cqrs_core::EventBus::publish(bus.as_ref(), &batch[..10])
        .await
        .expect("a first publish");
    // Freeze the broker a moment after the big publish starts.
    let publishing = {
        let bus = bus.clone();
        let batch = batch.clone();
        tokio::spawn(async move { cqrs_core::EventBus::publish(bus.as_ref(), &batch).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let signal = |sig: &str| {
        std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("kill")
    };
    assert!(signal("-STOP").success());
    let cut_off = publishing.await.expect("the publish task");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(signal("-CONT").success());
    // The relay publishes the batch again until it goes.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while let Err(e) = cqrs_core::EventBus::publish(bus.as_ref(), &batch).await {
        assert!(std::time::Instant::now() < deadline, "never published: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A member reads the topic from the start: every run of versions is in order and starts
    // at 1 (a republished batch), never jumping forward.
    let mut member = cqrs_core::EventBus::subscribe(
        bus.as_ref(),
        "prefix",
        &["clock"],
        Duration::from_millis(300),
    )
    .await
    .expect("subscribe");
    let mut read: Vec<u64> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !read.contains(&N) {
        assert!(std::time::Instant::now() < deadline, "read {}", read.len());
        read.extend(
            member
                .next_batch(1000)
                .await
                .expect("read")
                .events
                .iter()
                .map(|e| e.version),
        );
    }
    let restarts = read.iter().filter(|v| **v == 1).count();
    println!(
        "[fault] Kafka broker frozen mid-publish: the publish {}; {} records read, the batch began {} times; no gap",
        if cut_off.is_err() { "failed after its timeout" } else { "went through" },
        read.len(),
        restarts
    );
    for pair in read.windows(2) {
        assert!(
            pair[1] == pair[0] + 1 || pair[1] == 1,
            "{} after {}: a gap in the topic",
            pair[1],
            pair[0]
        );
    }
    drop(broker);
}
