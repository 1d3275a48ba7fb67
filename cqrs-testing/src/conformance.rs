//! The event-store conformance suite. Every backend runs it against a fresh store per check:
//!
//! ```no_run
//! # async fn example() {
//! use cqrs_core::memory::MemoryEventStore;
//! cqrs_testing::conformance::run(|| async { MemoryEventStore::new() }).await;
//! # }
//! ```
//!
//! Each check panics with a message that names the broken rule.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use cqrs_core::envelope::{ExpectedVersion, Metadata, NewEvent};
use cqrs_core::error::Error;
use cqrs_core::store::EventStore;

pub(super) fn event(n: u64) -> NewEvent {
    let mut metadata = Metadata::new();
    metadata.user.insert("n".into(), n.to_string());
    NewEvent {
        event_name: "conformance.Happened".into(),
        event_version: 1,
        payload: Bytes::from(format!("{{\"n\":{n}}}")),
        metadata,
    }
}

/// An envelope with its payload parsed: stores may reformat JSON (PostgreSQL's jsonb does).
fn comparable(e: &cqrs_core::Envelope) -> (cqrs_core::Envelope, serde_json::Value) {
    let payload = serde_json::from_slice(&e.payload).expect("payload is JSON");
    let mut rest = e.clone();
    rest.payload = Bytes::new();
    (rest, payload)
}

/// Reads the whole global log once everything committed so far is readable (a backend may
/// hold back positions while older transactions, anywhere, still run).
pub(super) async fn read_settled<S: EventStore + ?Sized>(store: &S) -> Vec<cqrs_core::Envelope> {
    let head = store.head().await.expect("head");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let all = store.read_all(0, 100_000).await.expect("read_all");
        if all.last().map_or(head == 0, |e| e.position >= head) {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "the log did not reach its head {head}"
        );
        store
            .wait_for_events(
                all.last().map_or(0, |e| e.position),
                Duration::from_millis(50),
            )
            .await
            .expect("wait");
    }
}

/// Runs every check, each on a new store from `make`.
pub async fn run<S, F, Fut>(make: F)
where
    S: EventStore + 'static,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    append_and_read_stream(Arc::new(make().await)).await;
    conflicts_write_nothing(Arc::new(make().await)).await;
    global_log_order_and_paging(Arc::new(make().await)).await;
    one_writer_wins(Arc::new(make().await)).await;
    tailing_reader_sees_everything_once(Arc::new(make().await)).await;
    waiting_reader_wakes(Arc::new(make().await)).await;
    stored_types_are_listed(Arc::new(make().await)).await;
    streams_belong_to_one_aggregate_type(Arc::new(make().await)).await;
    command_ids_and_idempotency_keys_round_trip(Arc::new(make().await)).await;
    super::routing::streams_keep_their_routing_key(Arc::new(make().await)).await;
}

/// A stream belongs to the aggregate type that wrote its first event: an append of another
/// type is refused with [`Error::WrongAggregateType`] naming both, whatever the expected
/// version, and writes nothing; the owner goes on appending.
pub async fn streams_belong_to_one_aggregate_type<S: EventStore>(store: Arc<S>) {
    store
        .append("product", "p-1", ExpectedVersion::Exact(0), vec![event(1)])
        .await
        .expect("first append");
    for expected in [ExpectedVersion::Exact(1), ExpectedVersion::Any] {
        match store
            .append("comment", "p-1", expected, vec![event(2)])
            .await
        {
            Err(Error::WrongAggregateType {
                stream_id,
                expected,
                actual,
            }) => assert_eq!(
                (stream_id.as_str(), expected.as_str(), actual.as_str()),
                ("p-1", "comment", "product"),
                "the error names the stream, the type asked for and the owner"
            ),
            other => panic!("an append of another aggregate type must be refused: {other:?}"),
        }
    }
    let stream = store.read_stream("p-1", 0).await.expect("read");
    assert_eq!(stream.len(), 1, "the refused appends wrote nothing");
    store
        .append("product", "p-1", ExpectedVersion::Exact(1), vec![event(3)])
        .await
        .expect("the owner appends on");
}

/// The command id and the idempotency key an event was recorded with come back from both
/// read paths, apart from the user key/values.
pub async fn command_ids_and_idempotency_keys_round_trip<S: EventStore>(store: Arc<S>) {
    let mut keyed = event(1);
    let command = uuid::Uuid::new_v4();
    keyed.metadata.command_id = Some(command);
    keyed.metadata.idempotency_key = Some("request-7".into());
    keyed.metadata.causation_id = Some(uuid::Uuid::new_v4());
    let plain = event(2);
    store
        .append(
            "thing",
            "t-1",
            ExpectedVersion::Exact(0),
            vec![keyed.clone(), plain],
        )
        .await
        .expect("append");
    let stream = store.read_stream("t-1", 0).await.expect("read");
    let log = read_settled(store.as_ref()).await;
    for (what, events) in [("read_stream", &stream), ("read_all", &log)] {
        assert_eq!(events.len(), 2, "{what}");
        assert_eq!(
            events[0].metadata, keyed.metadata,
            "{what}: every id comes back"
        );
        assert_eq!(events[1].metadata.command_id, None, "{what}");
        assert_eq!(events[1].metadata.idempotency_key, None, "{what}");
        assert_eq!(events[1].metadata.user["n"], "2", "{what}");
    }
}

/// Versions start at 1 with no holes; everything written is read back as written.
pub async fn append_and_read_stream<S: EventStore>(store: Arc<S>) {
    let events: Vec<NewEvent> = (1..=3).map(event).collect();
    let committed = store
        .append("thing", "thing-1", ExpectedVersion::NEW, events.clone())
        .await
        .unwrap_or_else(|e| panic!("first append failed: {e}"));
    assert_eq!(
        committed.len(),
        3,
        "append returns every committed envelope"
    );
    let read = store.read_stream("thing-1", 0).await.expect("read_stream");
    assert_eq!(
        read.iter().map(comparable).collect::<Vec<_>>(),
        committed.iter().map(comparable).collect::<Vec<_>>(),
        "read_stream returns what append committed"
    );
    for (i, (env, new)) in read.iter().zip(&events).enumerate() {
        assert_eq!(
            env.version,
            i as u64 + 1,
            "versions start at 1 with no holes"
        );
        assert_eq!(env.stream_id, "thing-1");
        assert_eq!(env.aggregate_type, "thing");
        assert_eq!(env.event_name, new.event_name);
        assert_eq!(env.event_version, new.event_version);
        let stored: serde_json::Value =
            serde_json::from_slice(&env.payload).expect("payload is JSON");
        let written: serde_json::Value =
            serde_json::from_slice(&new.payload).expect("payload is JSON");
        assert_eq!(stored, written, "payload round trip");
        assert_eq!(
            env.metadata.event_id, new.metadata.event_id,
            "event id round trip"
        );
        assert_eq!(env.metadata.correlation_id, new.metadata.correlation_id);
        assert_eq!(
            env.metadata.user, new.metadata.user,
            "metadata key/values round trip"
        );
    }
    assert!(
        read.windows(2).all(|w| w[0].position < w[1].position),
        "positions increase"
    );
    let tail = store
        .read_stream("thing-1", 2)
        .await
        .expect("read_stream after 2");
    assert_eq!(tail.len(), 1);
    assert_eq!(
        tail[0].version, 3,
        "read_stream(after_version) skips what came before"
    );
    let none = store
        .read_stream("nothing-here", 0)
        .await
        .expect("read missing stream");
    assert!(none.is_empty(), "a missing stream reads as empty");
    let more = store
        .append(
            "thing",
            "thing-1",
            ExpectedVersion::Exact(3),
            vec![event(4)],
        )
        .await
        .expect("append at the right version");
    assert_eq!(more[0].version, 4);
}

/// A wrong expected version is a typed conflict with both versions, and writes nothing.
pub async fn conflicts_write_nothing<S: EventStore>(store: Arc<S>) {
    store
        .append(
            "thing",
            "c-1",
            ExpectedVersion::NEW,
            vec![event(1), event(2)],
        )
        .await
        .expect("first append");
    let err = store
        .append(
            "thing",
            "c-1",
            ExpectedVersion::NEW,
            vec![event(3), event(4)],
        )
        .await
        .expect_err("appending as new to an existing stream must conflict");
    match err {
        Error::Conflict {
            stream_id,
            expected,
            actual,
        } => {
            assert_eq!(stream_id, "c-1");
            assert_eq!(
                (expected, actual),
                (0, 2),
                "conflict carries expected and actual"
            );
        }
        other => panic!("expected a conflict, got {other}"),
    }
    let err = store
        .append("thing", "c-1", ExpectedVersion::Exact(5), vec![event(3)])
        .await
        .expect_err("a version ahead of the stream must conflict");
    assert!(
        matches!(
            err,
            Error::Conflict {
                expected: 5,
                actual: 2,
                ..
            }
        ),
        "got {err}"
    );
    assert_eq!(
        store.read_stream("c-1", 0).await.expect("read").len(),
        2,
        "a conflict writes nothing"
    );
    assert_eq!(
        read_settled(store.as_ref()).await.len(),
        2,
        "nothing leaks to the global log"
    );
    let any = store
        .append("thing", "c-1", ExpectedVersion::Any, vec![event(5)])
        .await
        .expect("ExpectedVersion::Any appends");
    assert_eq!(any[0].version, 3);
}

/// The global log is in position order; `after` and `limit` page through it.
pub async fn global_log_order_and_paging<S: EventStore>(store: Arc<S>) {
    for i in 0..10u64 {
        let stream = format!("g-{}", i % 3);
        store
            .append("thing", &stream, ExpectedVersion::Any, vec![event(i)])
            .await
            .expect("append");
    }
    let all = read_settled(store.as_ref()).await;
    assert_eq!(all.len(), 10);
    assert!(
        all.windows(2).all(|w| w[0].position < w[1].position),
        "global log in position order"
    );
    let ns: Vec<String> = all.iter().map(|e| e.metadata.user["n"].clone()).collect();
    let expected: Vec<String> = (0..10).map(|i: u64| i.to_string()).collect();
    assert_eq!(ns, expected, "global log in commit order");
    let page = store
        .read_all(all[3].position, 4)
        .await
        .expect("read_all page");
    assert_eq!(page, all[4..8].to_vec(), "read_all(after, limit) pages");
    let end = store
        .read_all(all[9].position, 10)
        .await
        .expect("read_all at end");
    assert!(end.is_empty(), "nothing after the last event");
}

/// Sixteen writers race to create one stream: exactly one wins, the others get a conflict.
pub async fn one_writer_wins<S: EventStore + 'static>(store: Arc<S>) {
    let mut tasks = Vec::new();
    for i in 0..16u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .append(
                    "thing",
                    "race",
                    ExpectedVersion::NEW,
                    vec![event(i), event(i + 100)],
                )
                .await
        }));
    }
    let mut won = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(committed) => {
                won += 1;
                assert_eq!(committed.len(), 2);
            }
            Err(Error::Conflict {
                expected, actual, ..
            }) => {
                assert_eq!(
                    (expected, actual),
                    (0, 2),
                    "losers see the winner's version"
                );
            }
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!(won, 1, "exactly one racing writer wins");
    let read = store.read_stream("race", 0).await.expect("read");
    assert_eq!(read.len(), 2, "only the winner's events are stored");
    assert_eq!(
        read[1].metadata.user["n"].parse::<u64>().expect("n"),
        read[0].metadata.user["n"].parse::<u64>().expect("n") + 100,
        "the winner's events stay together"
    );
}

/// Eight writers append concurrently while a reader tails the global log by position: it sees
/// every event exactly once, in increasing position order.
pub async fn tailing_reader_sees_everything_once<S: EventStore + 'static>(store: Arc<S>) {
    const WRITERS: u64 = 8;
    const EACH: u64 = 40;
    let reader_store = store.clone();
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut after = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while (seen.len() as u64) < WRITERS * EACH {
            assert!(
                Instant::now() < deadline,
                "reader saw only {} events",
                seen.len()
            );
            let batch = reader_store.read_all(after, 7).await.expect("read_all");
            if batch.is_empty() {
                reader_store
                    .wait_for_events(after, Duration::from_millis(50))
                    .await
                    .expect("wait");
                continue;
            }
            for env in batch {
                assert!(env.position > after, "positions only move forward");
                after = env.position;
                seen.push(env);
            }
        }
        seen
    });
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..EACH {
                store
                    .append(
                        "thing",
                        &format!("w-{w}"),
                        ExpectedVersion::Exact(i),
                        vec![event(w * 1000 + i)],
                    )
                    .await
                    .expect("append");
                if i % 5 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    let seen = reader.await.expect("reader");
    let ids: HashSet<_> = seen.iter().map(|e| e.metadata.event_id).collect();
    assert_eq!(ids.len(), seen.len(), "no event seen twice");
    assert_eq!(seen.len() as u64, WRITERS * EACH, "no event skipped");
    let all = read_settled(store.as_ref()).await;
    assert_eq!(
        all, seen,
        "the tailing reader saw exactly the final global log"
    );
}

/// `wait_for_events` returns soon after an append, well before its timeout.
pub async fn waiting_reader_wakes<S: EventStore + 'static>(store: Arc<S>) {
    let waiter_store = store.clone();
    let waiter = tokio::spawn(async move {
        let start = Instant::now();
        waiter_store
            .wait_for_events(0, Duration::from_secs(20))
            .await
            .expect("wait");
        start.elapsed()
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    store
        .append("thing", "wake", ExpectedVersion::NEW, vec![event(1)])
        .await
        .expect("append");
    let waited = waiter.await.expect("waiter");
    assert!(
        waited < Duration::from_secs(10),
        "waiter slept {waited:?} despite a new event"
    );
}

/// Every stored `(aggregate type, name, version)` is listed for the start-up check.
pub async fn stored_types_are_listed<S: EventStore>(store: Arc<S>) {
    let mut v2 = event(2);
    v2.event_version = 2;
    let mut other = event(3);
    other.event_name = "conformance.Other".into();
    store
        .append(
            "thing",
            "t-1",
            ExpectedVersion::NEW,
            vec![event(1), v2, other],
        )
        .await
        .expect("append");
    store
        .append("gadget", "g-1", ExpectedVersion::NEW, vec![event(4)])
        .await
        .expect("append");
    let mut types: Vec<(String, String, u32)> = store
        .stored_types()
        .await
        .expect("stored_types")
        .into_iter()
        .map(|t| (t.aggregate_type, t.name, t.version))
        .collect();
    types.sort();
    let t = |a: &str, n: &str, v| (a.to_owned(), n.to_owned(), v);
    assert_eq!(
        types,
        vec![
            t("gadget", "conformance.Happened", 1),
            t("thing", "conformance.Happened", 1),
            t("thing", "conformance.Happened", 2),
            t("thing", "conformance.Other", 1),
        ]
    );
}
