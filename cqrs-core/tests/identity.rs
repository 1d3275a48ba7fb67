#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! Who a stream belongs to, and commands sent twice.

mod common;

use std::sync::Arc;

use common::{add, Counter, CounterCommand};
use cqrs_core::envelope::{ExpectedVersion, NewEvent};
use cqrs_core::memory::MemoryEventStore;
use cqrs_core::{
    Aggregate, Command, CommandError, CommandGateway, CommandMetadata, Error, EventAppender,
    EventReader,
};
use serde::{Deserialize, Serialize};

/// A second aggregate type, to collide with the counter's ids.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Gauge {
    level: u64,
}

struct Set(String, u64);
impl Command for Set {
    type Aggregate = Gauge;
    fn aggregate_id(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Aggregate for Gauge {
    const TYPE: &'static str = "gauge";
    type Command = Set;
    type Event = common::Added;
    type Error = Never;
    fn handle(&self, command: &Set) -> Result<Vec<common::Added>, Never> {
        Ok(vec![common::Added { amount: command.1 }])
    }
    fn apply(&mut self, event: &common::Added) {
        self.level = event.amount;
    }
}

/// An id that another aggregate type already uses is a typed error naming both types, on
/// the gateway and on a direct append, and stores nothing.
#[tokio::test]
async fn an_id_of_another_aggregate_type_is_a_typed_error() {
    let store = Arc::new(MemoryEventStore::new());
    let gateway = CommandGateway::builder(store.clone()).build();
    gateway.send(add("shared-id", 1)).await.expect("counter");
    let err = gateway
        .send(Set("shared-id".into(), 7))
        .await
        .expect_err("the id is a counter's");
    match err {
        CommandError::Failed(Error::WrongAggregateType {
            stream_id,
            expected,
            actual,
        }) => assert_eq!(
            (stream_id.as_str(), expected.as_str(), actual.as_str()),
            ("shared-id", "gauge", "counter")
        ),
        other => panic!("expected WrongAggregateType, got {other}"),
    }
    let direct = store
        .append(
            "gauge",
            "shared-id",
            ExpectedVersion::Any,
            vec![NewEvent {
                event_name: "test.Added".into(),
                event_version: 1,
                payload: br#"{"amount":1}"#.to_vec().into(),
                metadata: Default::default(),
            }],
        )
        .await
        .expect_err("a direct append is refused too");
    assert!(
        matches!(direct, Error::WrongAggregateType { .. }),
        "{direct}"
    );
    assert_eq!(
        store.read_stream("shared-id", 0).await.expect("read").len(),
        1
    );
    let (counter, version) = gateway.load::<Counter>("shared-id").await.expect("load");
    assert_eq!((counter.total, version), (1, 1), "the counter is untouched");
}

/// A command sent twice with one idempotency key (a client retrying after a timeout) is
/// recorded once; the second send answers with the first send's events. Also when both sends
/// race, and from another gateway (another process) with a cold cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_sent_twice_with_one_idempotency_key_is_recorded_once() {
    let store = Arc::new(MemoryEventStore::new());
    let gateway = CommandGateway::builder(store.clone()).build();
    let keyed = || CommandMetadata::default().idempotency_key("req-1");
    let first = gateway
        .send_with(add("k", 5), keyed())
        .await
        .expect("first");
    let again = gateway
        .send_with(add("k", 5), keyed())
        .await
        .expect("again");
    assert_eq!(again, first, "the second send returns the first result");
    let other = CommandGateway::builder(store.clone()).build();
    let elsewhere = other
        .send_with(add("k", 5), keyed())
        .await
        .expect("elsewhere");
    assert_eq!(elsewhere, first);
    // Another key is another command.
    gateway
        .send_with(
            add("k", 5),
            CommandMetadata::default().idempotency_key("req-2"),
        )
        .await
        .expect("second command");
    let (counter, version) = gateway.load::<Counter>("k").await.expect("load");
    assert_eq!((counter.total, version), (10, 2));

    // 16 sends of one keyed command at once, through one gateway (its state cache shared)
    // and through gateways of their own: one records, every one answers with its events.
    let shared = CommandGateway::builder(store.clone())
        .max_retries(100)
        .build();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let gateway = if i % 2 == 0 {
            shared.clone()
        } else {
            CommandGateway::builder(store.clone())
                .max_retries(100)
                .build()
        };
        tasks.push(tokio::spawn(async move {
            gateway
                .send_with(
                    CounterCommand::Add {
                        id: "race".into(),
                        amount: 3,
                    },
                    CommandMetadata::default().idempotency_key("race-1"),
                )
                .await
        }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.expect("task").expect("send"));
    }
    assert!(
        answers.iter().all(|a| a == &answers[0]),
        "one answer for all"
    );
    let stored = store.read_stream("race", 0).await.expect("read");
    assert_eq!(stored.len(), 1, "recorded once: {stored:?}");
    assert_eq!(
        stored[0].metadata.idempotency_key.as_deref(),
        Some("race-1")
    );
}

/// Metadata keys under `cqrs.` belong to the framework: a command carrying one is refused
/// with a typed error, and a reaction to an event does not inherit them.
#[tokio::test]
async fn reserved_metadata_keys_are_refused_and_not_inherited() {
    let store = Arc::new(MemoryEventStore::new());
    let gateway = CommandGateway::builder(store.clone()).build();
    let faked = gateway
        .send_with(
            add("r", 1),
            CommandMetadata::default().with("cqrs.idempotency_key", "forged"),
        )
        .await
        .expect_err("a reserved key");
    assert!(
        matches!(faked, CommandError::Failed(Error::Config(ref m)) if m.contains("reserved")),
        "{faked}"
    );
    assert!(store.read_stream("r", 0).await.expect("read").is_empty());
    let mut event = gateway
        .send_with(
            add("r", 1),
            CommandMetadata::default().with("tenant", "t-1"),
        )
        .await
        .expect("send")
        .remove(0);
    event
        .metadata
        .user
        .insert("cqrs.dlq.source".into(), "topic/0/1".into());
    let reaction = CommandMetadata::caused_by(&event);
    assert_eq!(reaction.user.len(), 1, "{:?}", reaction.user);
    assert_eq!(reaction.user["tenant"], "t-1");
    // A backend never stores a user key that could pass for the framework's own.
    let stored = event.metadata.stored_map();
    assert!(!stored.contains_key("cqrs.dlq.source"));
    assert!(stored.contains_key("cqrs.command_id"));
}
