#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! The Kafka bus on a real broker: round trips, groups, restarts, poison, the relay through
//! a broker outage.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cqrs_core::memory::{MemoryCheckpointStore, MemoryEventStore, MemoryViewStore};
use cqrs_core::processor::ErrorPolicy;
use cqrs_core::testing::{envelope_of, raw_envelope};
use cqrs_core::{
    Aggregate, BoxError, Breaker, BusFeed, Command, CommandGateway, DeadLetterStore, Envelope,
    EventBus, EventReader, EventStore, Projection, Query, ReadModel, Relay, TrackingProcessor,
};
use cqrs_kafka::{KafkaBus, KafkaConfig};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message};
use serde::{Deserialize, Serialize};

fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

fn config(brokers: &str) -> KafkaConfig {
    let prefix = format!("t{}.", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    KafkaConfig::new(brokers, prefix.clone())
        .expect("config")
        // Groups are broker-wide: each test's own, like its topics.
        .group_prefix(prefix)
        .partitions(3)
        .session_timeout(Duration::from_secs(6))
        .message_timeout(Duration::from_secs(3))
}

async fn bus() -> KafkaBus {
    let bus = KafkaBus::new(config(&brokers())).expect("bus");
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

fn events(streams: u64, each: u64) -> Vec<Envelope> {
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

async fn views(store: &Arc<MemoryViewStore>) -> Vec<(String, SeenView)> {
    ReadModel::<Seen>::new(store.clone())
        .find(&Query::all())
        .await
        .expect("find")
}

async fn until<F, Fut>(what: &str, timeout: Duration, mut check: F)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kafka_bus_passes_the_bus_conformance_suite() {
    cqrs_core::testing::bus_conformance::run(bus).await;
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
            .any(|h| h.key == "cqrs.event"));
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
