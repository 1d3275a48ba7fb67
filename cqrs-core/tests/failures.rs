#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! The tracking processor on what it cannot apply: unknown names and undecodable payloads
//! (typed errors, or dead letters by policy), failing handlers retried then dead-lettered, and
//! dead letters retried once the handler is fixed.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{add, Added, Tally};
use cqrs_core::memory::{MemoryEventStore, MemoryViewStore};
use cqrs_core::processor::{Backoff, ErrorPolicy};
use cqrs_core::{
    CommandGateway, DeadLetterStore, Error, EventReader, ReadModel, StoreFeed, TrackingProcessor,
    ViewQuery, ViewStore,
};
use cqrs_testing::{envelope_of, raw_envelope};

fn seeded_with_poison() -> Arc<MemoryEventStore> {
    let store = Arc::new(MemoryEventStore::new());
    store.insert_raw(vec![
        envelope_of("counter", "a", 0, 0, &Added { amount: 1 }),
        raw_envelope("counter", "a", 0, 0, "test.Mystery", 1, &b"{}"[..]),
        envelope_of("counter", "b", 0, 0, &Added { amount: 10 }),
        raw_envelope(
            "counter",
            "b",
            0,
            0,
            "test.Added",
            1,
            &b"{\"amount\": \"lots\"}"[..],
        ),
        envelope_of("counter", "a", 0, 0, &Added { amount: 2 }),
        envelope_of("counter", "b", 0, 0, &Added { amount: 20 }),
    ]);
    store
}

#[tokio::test]
async fn an_unknown_event_name_stops_with_a_typed_error_naming_it() {
    let store = seeded_with_poison();
    let views_store = Arc::new(MemoryViewStore::new());
    let err = TrackingProcessor::new(Tally::default(), views_store.clone())
        .error_policy(ErrorPolicy::stop())
        .catch_up(store.clone())
        .await
        .expect_err("unknown name stops the processor");
    let Error::UnknownEvent { event } = &err else {
        panic!("expected UnknownEvent, got {err}");
    };
    assert_eq!(
        (
            event.stream_id.as_str(),
            event.position,
            event.event_name.as_str()
        ),
        ("a", 2, "test.Mystery")
    );
    let message = err.to_string();
    assert!(
        message.contains("test.Mystery")
            && message.contains("`a`")
            && message.contains("position 2"),
        "{message}"
    );
    assert_eq!(
        views_store.checkpoint("tally").await.expect("cp"),
        None,
        "nothing committed past the poison"
    );
}

/// A spawned processor tells whoever watches it (a health endpoint) that it ended and why:
/// nothing while it runs, the error after a failure, `stopped` after a stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawned_processor_reports_why_it_ended() {
    let failing = TrackingProcessor::new(Tally::default(), Arc::new(MemoryViewStore::new()))
        .error_policy(ErrorPolicy::stop())
        .spawn(Arc::new(StoreFeed::new(seeded_with_poison())));
    let ended = failing.watch_ended();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !failing.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "the processor kept running"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let why = ended.why().expect("ended");
    assert!(why.contains("test.Mystery"), "{why}");

    let running = TrackingProcessor::new(Tally::default(), Arc::new(MemoryViewStore::new()))
        .spawn(Arc::new(StoreFeed::new(Arc::new(MemoryEventStore::new()))));
    let ended = running.watch_ended();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(ended.why(), None);
    running.stop().await.expect("stop");
    assert_eq!(ended.why().as_deref(), Some("stopped"));
}

#[tokio::test]
async fn an_undecodable_payload_stops_with_a_typed_error_naming_it() {
    let store = Arc::new(MemoryEventStore::new());
    store.insert_raw(vec![
        envelope_of("counter", "b", 0, 0, &Added { amount: 10 }),
        raw_envelope(
            "counter",
            "b",
            0,
            0,
            "test.Added",
            1,
            &b"{\"amount\": \"lots\"}"[..],
        ),
    ]);
    let err = TrackingProcessor::new(Tally::default(), Arc::new(MemoryViewStore::new()))
        .catch_up(store)
        .await
        .expect_err("bad payload stops the processor");
    let Error::Decode { event, reason } = &err else {
        panic!("expected Decode, got {err}");
    };
    assert_eq!(
        (
            event.stream_id.as_str(),
            event.position,
            event.event_name.as_str()
        ),
        ("b", 2, "test.Added")
    );
    assert!(reason.contains("invalid type"), "{reason}");
}

#[tokio::test]
async fn dead_letter_policy_keeps_poison_with_its_reason_and_the_rest_flows() {
    let store = seeded_with_poison();
    let views_store = Arc::new(MemoryViewStore::new());
    let processor = TrackingProcessor::new(Tally::default(), views_store.clone())
        .batch_size(2)
        .error_policy(ErrorPolicy::dead_letter());
    assert_eq!(
        processor.catch_up(store.clone()).await.expect("catch up"),
        6
    );
    let model = ReadModel::<Tally>::new(views_store.clone() as Arc<dyn ViewQuery>);
    assert_eq!(model.get("a").await.expect("a").expect("a exists").total, 3);
    assert_eq!(
        model.get("b").await.expect("b").expect("b exists").total,
        30
    );
    let dead = views_store
        .dead_letters("tally")
        .await
        .expect("dead letters");
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].envelope.event_name, "test.Mystery");
    assert!(dead[0].reason.contains("unknown"), "{}", dead[0].reason);
    assert_eq!(dead[1].envelope.position, 4);
    assert!(
        dead[1].reason.contains("cannot decode"),
        "{}",
        dead[1].reason
    );
    assert_eq!(views_store.checkpoint("tally").await.expect("cp"), Some(6));

    // A dead letter can be removed once dealt with.
    let id = dead[0].envelope.metadata.event_id;
    assert!(views_store
        .remove_dead_letter("tally", id)
        .await
        .expect("remove"));
    assert_eq!(
        views_store.dead_letters("tally").await.expect("list").len(),
        1
    );
}

#[tokio::test]
async fn a_failing_handler_is_retried_then_dead_lettered_without_partial_changes() {
    let store = Arc::new(MemoryEventStore::new());
    let gateway = CommandGateway::builder(store.clone()).build();
    for amount in [1, 2, 13, 4] {
        gateway.send(add("x", amount)).await.expect("send");
    }
    let views_store = Arc::new(MemoryViewStore::new());
    let policy = ErrorPolicy::retry(
        2,
        Backoff::new(Duration::from_millis(1), Duration::from_millis(5)),
    )
    .then_dead_letter();
    TrackingProcessor::new(Tally { fail_on: Some(13) }, views_store.clone())
        .error_policy(policy)
        .catch_up(store.clone())
        .await
        .expect("catch up");
    let view = ReadModel::<Tally>::new(views_store.clone() as Arc<dyn ViewQuery>)
        .get("x")
        .await
        .expect("get")
        .expect("view");
    // The failing call pushed its version before failing: that change was rolled back.
    assert_eq!(view.versions, vec![1, 2, 4]);
    assert_eq!(view.total, 7);
    let dead = views_store.dead_letters("tally").await.expect("dead");
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].reason.contains("refusing amount 13"),
        "{}",
        dead[0].reason
    );

    // Under the stop policy the same failure stops the processor before the checkpoint moves.
    let other = Arc::new(MemoryViewStore::new());
    let err = TrackingProcessor::new(Tally { fail_on: Some(13) }, other.clone())
        .batch_size(1)
        .catch_up(store)
        .await
        .expect_err("stop policy");
    assert!(
        matches!(err, Error::Handler { ref event, .. } if event.position == 3),
        "{err}"
    );
    assert_eq!(other.checkpoint("tally").await.expect("cp"), Some(2));
}

#[tokio::test]
async fn dead_letters_are_retried_once_the_handler_is_fixed_and_resolved_with_their_view() {
    let store = Arc::new(MemoryEventStore::new());
    let gateway = CommandGateway::builder(store.clone()).build();
    for amount in [1, 13, 4, 13] {
        gateway.send(add("x", amount)).await.expect("send");
    }
    gateway.send(add("y", 13)).await.expect("send");
    let views_store = Arc::new(MemoryViewStore::new());
    let failing = TrackingProcessor::new(Tally { fail_on: Some(13) }, views_store.clone())
        .error_policy(ErrorPolicy::dead_letter());
    failing.catch_up(store.clone()).await.expect("catch up");
    let dead = views_store.dead_letters("tally").await.expect("dead");
    assert_eq!(dead.len(), 3);

    // Retried with the same bug: they fail again and stay, with the reason.
    let report = failing
        .retry_dead_letters(views_store.as_ref())
        .await
        .expect("retry");
    assert!(report.resolved.is_empty());
    assert_eq!(report.failed.len(), 3);
    assert!(report.failed[0].1.contains("refusing amount 13"));
    assert_eq!(
        views_store.dead_letters("tally").await.expect("dead").len(),
        3
    );

    // The fix is deployed: one is retried on its own, then the rest.
    let fixed = TrackingProcessor::new(Tally::default(), views_store.clone());
    let first = dead[0].envelope.metadata.event_id;
    let report = fixed
        .retry_dead_letter(views_store.as_ref(), first)
        .await
        .expect("retry one");
    assert_eq!(report.resolved, vec![first]);
    let report = fixed
        .retry_dead_letters(views_store.as_ref())
        .await
        .expect("retry all");
    assert_eq!(report.resolved.len(), 2);
    assert!(report.failed.is_empty());
    assert!(views_store
        .dead_letters("tally")
        .await
        .expect("dead")
        .is_empty());
    let model = ReadModel::<Tally>::new(views_store.clone() as Arc<dyn ViewQuery>);
    let x = model.get("x").await.expect("x").expect("x exists");
    assert_eq!(x.total, 1 + 13 + 4 + 13);
    // Applied late, after the events that had flowed past them.
    assert_eq!(x.versions, vec![1, 3, 2, 4]);
    assert_eq!(model.get("y").await.expect("y").expect("y").total, 13);

    // Nothing is applied twice: a retry finds nothing, and a replay of the same batch skips
    // what the retries applied.
    assert_eq!(
        fixed
            .retry_dead_letters(views_store.as_ref())
            .await
            .expect("again"),
        cqrs_core::RetryReport::default()
    );
    fixed
        .process(&cqrs_core::processor::Batch::from_log(
            store.read_all(0, 100).await.expect("read"),
        ))
        .await
        .expect("redelivered");
    let x = model.get("x").await.expect("x").expect("x exists");
    assert_eq!(x.total, 31);
    println!(
        "[fault] a failing handler: 3 events dead-lettered with the reason while the other 2 \
         flowed; a retry before the fix kept all 3; after the fix 1 + 2 resolved, 0 applied \
         twice"
    );
}

#[tokio::test]
async fn a_dead_letter_retried_into_a_new_view_of_a_bus_feed_is_not_applied_again() {
    let store = Arc::new(MemoryEventStore::new());
    let gateway = CommandGateway::builder(store.clone()).build();
    gateway.send(add("x", 1)).await.expect("send");
    gateway.send(add("y", 13)).await.expect("send");
    gateway.send(add("y", 2)).await.expect("send");
    let delivered = store.read_all(0, 100).await.expect("read");
    let views_store = Arc::new(MemoryViewStore::new());
    // From a bus, whose batches carry no global order: views keep each stream's version.
    let failing = TrackingProcessor::new(Tally { fail_on: Some(13) }, views_store.clone())
        .error_policy(ErrorPolicy::dead_letter());
    failing
        .process(&cqrs_core::processor::Batch::from_bus(vec![
            delivered[0].clone(),
            delivered[1].clone(),
        ]))
        .await
        .expect("first batch");
    assert_eq!(
        views_store.dead_letters("tally").await.expect("dead").len(),
        1
    );
    // The retry creates `y`, which did not exist.
    let fixed = TrackingProcessor::new(Tally::default(), views_store.clone());
    let report = fixed
        .retry_dead_letters(views_store.as_ref())
        .await
        .expect("retry");
    assert_eq!(report.resolved.len(), 1);
    // The bus delivers the first batch again (its acknowledgement was lost), then the next.
    fixed
        .process(&cqrs_core::processor::Batch::from_bus(delivered.clone()))
        .await
        .expect("redelivered");
    let model = ReadModel::<Tally>::new(views_store.clone() as Arc<dyn ViewQuery>);
    let y = model.get("y").await.expect("y").expect("y exists");
    assert_eq!(y.total, 13 + 2, "the retried event was applied again");
    assert_eq!(y.versions, vec![1, 2]);
    assert_eq!(model.get("x").await.expect("x").expect("x").total, 1);
}
