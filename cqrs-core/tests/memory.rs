#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! The in-memory backends: the event-store conformance suite, the bus's consumer groups, the
//! view store's queries.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::Added;
use cqrs_core::memory::{MemoryEventBus, MemoryEventStore, MemoryViewStore};
use cqrs_core::processor::EventSource;
use cqrs_core::view::{StoredDoc, UnitOfWork};
use cqrs_core::{EventBus, ViewQuery, ViewStore};
use cqrs_testing::envelope_of;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_store_passes_the_conformance_suite() {
    cqrs_testing::conformance::run(|| async { MemoryEventStore::new() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_bus_passes_the_bus_conformance_suite() {
    // Three partitions for two members: an assignment that is not the same in every topic
    // splits a routing key's events between them.
    cqrs_testing::bus_conformance::run(|| async { MemoryEventBus::new(3) }).await;
}

fn events(streams: u64, each: u64) -> Vec<cqrs_core::Envelope> {
    let mut out = Vec::new();
    let mut position = 0;
    for v in 1..=each {
        for s in 0..streams {
            position += 1;
            out.push(envelope_of(
                "counter",
                &format!("s-{s}"),
                v,
                position,
                &Added { amount: v },
            ));
        }
    }
    out
}

async fn drain(source: &mut Box<dyn EventSource>, max: usize) -> Vec<cqrs_core::Envelope> {
    let batch = source.next_batch(max).await.expect("batch");
    source.ack(&batch).await.expect("ack");
    batch.events
}

#[tokio::test]
async fn the_bus_keeps_per_stream_order_across_partitions() {
    let bus = MemoryEventBus::new(3);
    bus.publish(&events(8, 25)).await.expect("publish");
    let mut sub = bus
        .subscribe("g", &["counter"], Duration::from_millis(10))
        .await
        .expect("sub");
    let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
    loop {
        let batch = drain(&mut sub, 17).await;
        if batch.is_empty() {
            break;
        }
        for e in batch {
            seen.entry(e.stream_id).or_default().push(e.version);
        }
    }
    assert_eq!(seen.len(), 8);
    for (stream, versions) in seen {
        assert_eq!(versions, (1..=25).collect::<Vec<_>>(), "order of {stream}");
    }
}

#[tokio::test]
async fn group_members_share_partitions_and_take_over_from_committed_offsets() {
    let bus = MemoryEventBus::new(4);
    bus.publish(&events(12, 5)).await.expect("publish");
    let idle = Duration::from_millis(10);
    let mut a = bus.subscribe("g", &["counter"], idle).await.expect("a");
    let mut b = bus.subscribe("g", &["counter"], idle).await.expect("b");
    let from_a = drain(&mut a, 1000).await;
    let from_b = drain(&mut b, 1000).await;
    assert!(
        !from_a.is_empty() && !from_b.is_empty(),
        "both members got partitions"
    );
    assert_eq!(
        from_a.len() + from_b.len(),
        60,
        "together they got everything once"
    );
    let streams_a: std::collections::HashSet<_> = from_a.iter().map(|e| &e.stream_id).collect();
    assert!(
        from_b.iter().all(|e| !streams_a.contains(&e.stream_id)),
        "a stream lives on one member"
    );

    // More events; `b` takes a batch but dies before acknowledging it: `a` gets it again.
    bus.publish(&events(12, 6)[60..])
        .await
        .expect("publish more");
    let unacked = b.next_batch(1000).await.expect("b batch").events;
    assert!(!unacked.is_empty());
    drop(b);
    let mut after: Vec<_> = Vec::new();
    loop {
        let batch = drain(&mut a, 1000).await;
        if batch.is_empty() {
            break;
        }
        after.extend(batch);
    }
    assert_eq!(
        after.len(),
        12,
        "the survivor gets every new event, including the unacknowledged ones"
    );
    for e in &unacked {
        assert!(after
            .iter()
            .any(|x| x.metadata.event_id == e.metadata.event_id));
    }

    // A new member of another group starts from the beginning; one of the same group resumes.
    drop(a);
    let mut c = bus.subscribe("g", &["counter"], idle).await.expect("c");
    assert!(
        drain(&mut c, 1000).await.is_empty(),
        "the group resumes after its committed offsets"
    );
    let mut other = bus
        .subscribe("other", &["counter"], idle)
        .await
        .expect("other");
    assert_eq!(drain(&mut other, 1000).await.len(), 72);
}

#[tokio::test]
async fn a_stale_view_write_is_refused_whole() {
    let store = MemoryViewStore::new();
    let doc = |id: &str, revision| StoredDoc {
        id: id.into(),
        view: Some(json!({"n": revision})),
        applied: Default::default(),
        position: 1,
        revision,
        parked: Default::default(),
    };
    let work = |writes| UnitOfWork {
        projection: "p".into(),
        writes,
        dead_letters: vec![],
        checkpoint: Some(1),
        resolved: vec![],
        claim: None,
    };
    store
        .commit(work(vec![doc("a", 0)]))
        .await
        .expect("create a");
    // `b` is new and fine, `a` is stale (loaded at revision 0, stored at 1): nothing is written.
    let err = store
        .commit(work(vec![doc("b", 0), doc("a", 0)]))
        .await
        .expect_err("stale");
    assert!(
        matches!(err, cqrs_core::Error::ViewConflict { ref id, expected: 0, actual: 1, .. } if id == "a"),
        "{err}"
    );
    assert_eq!(
        store.get("p", "b").await.expect("get"),
        None,
        "a refused unit of work writes nothing"
    );
    store
        .commit(work(vec![doc("b", 0), doc("a", 1)]))
        .await
        .expect("fresh");
    assert_eq!(
        store
            .documents("p")
            .iter()
            .map(|d| d.revision)
            .collect::<Vec<_>>(),
        [2, 1]
    );
}

#[tokio::test]
async fn the_memory_view_store_passes_the_view_conformance_suite() {
    cqrs_testing::view_conformance::run(|| async { MemoryViewStore::new() }).await;
}

fn new_event(n: u64) -> cqrs_core::NewEvent {
    cqrs_core::NewEvent {
        event_name: "counter.Added".into(),
        event_version: 1,
        payload: bytes::Bytes::from(format!("{{\"amount\":{n}}}")),
        metadata: cqrs_core::Metadata::new(),
    }
}

#[tokio::test]
async fn the_log_reads_the_same_across_its_segments() {
    use cqrs_core::{EventAppender, EventReader, ExpectedVersion};
    // More than two segments of 65 536 events, appended in batches of 1 to 7 over 50 streams.
    let store = MemoryEventStore::new();
    let mut versions = [0u64; 50];
    let mut n = 0u64;
    while n < 140_000 {
        let stream = (n % 50) as usize;
        let size = n % 7 + 1;
        let batch = (0..size).map(|i| new_event(n + i)).collect();
        let committed = store
            .append(
                "counter",
                &format!("s-{stream}"),
                ExpectedVersion::Exact(versions[stream]),
                batch,
            )
            .await
            .expect("append");
        assert_eq!(committed[0].position, n + 1);
        versions[stream] += size;
        n += size;
    }
    assert_eq!(store.head().await.expect("head"), n);

    // Pages of every size read the whole log in order, whatever boundary they cross.
    for page in [1usize, 20, 9_999, 65_536, 200_000] {
        let mut after = 0u64;
        while after < n {
            let read = store.read_all(after, page).await.expect("read");
            assert!(!read.is_empty() && read.len() <= page);
            for (i, e) in read.iter().enumerate() {
                assert_eq!(e.position, after + 1 + i as u64, "page {page}");
            }
            after = read.last().expect("non-empty").position;
        }
        assert!(store.read_all(n, page).await.expect("read").is_empty());
    }
    let across = store.read_all(65_530, 20).await.expect("read");
    let positions: Vec<u64> = across.iter().map(|e| e.position).collect();
    assert_eq!(positions, (65_531..=65_550).collect::<Vec<_>>());

    // Each stream reads back its own events, versions 1..=n, from every segment.
    let mut total = 0;
    for (s, version) in versions.iter().enumerate() {
        let stream = store
            .read_stream(&format!("s-{s}"), 0)
            .await
            .expect("stream");
        assert_eq!(stream.len() as u64, *version);
        assert!(stream
            .iter()
            .enumerate()
            .all(|(i, e)| e.version == i as u64 + 1 && e.stream_id == format!("s-{s}")));
        assert!(stream.windows(2).all(|w| w[0].position < w[1].position));
        total += stream.len() as u64;
    }
    assert_eq!(total, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_reader_is_woken_by_an_append_racing_its_wait() {
    use cqrs_core::{EventAppender, EventReader, ExpectedVersion};
    // Appends skip the wake-up while nobody waits; a waiter that starts at the same moment as
    // an append must still return at once, never sleep out its timeout.
    let store = std::sync::Arc::new(MemoryEventStore::new());
    for round in 0..500u64 {
        let waiter_store = store.clone();
        let waiter = tokio::spawn(async move {
            let start = std::time::Instant::now();
            waiter_store
                .wait_for_events(round, Duration::from_secs(30))
                .await
                .expect("wait");
            start.elapsed()
        });
        if round % 2 == 0 {
            tokio::task::yield_now().await;
        }
        store
            .append(
                "counter",
                "racing",
                ExpectedVersion::Exact(round),
                vec![new_event(round)],
            )
            .await
            .expect("append");
        let waited = waiter.await.expect("waiter");
        assert!(
            waited < Duration::from_secs(5),
            "round {round}: the waiter slept {waited:?} after an append"
        );
    }
}
