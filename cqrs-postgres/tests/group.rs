#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! Group commit on a real server: concurrent appends share transactions, and each append
//! still gets exactly its own outcome (written, conflict, refused), whatever the grouping.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{block_the_writer, fresh, let_them_queue};
use cqrs_core::envelope::{ExpectedVersion, Metadata, NewEvent};
use cqrs_core::{Error, EventAppender, EventReader};
use cqrs_postgres::GroupCommit;

fn event(stream: &str, n: u64) -> NewEvent {
    NewEvent {
        event_name: "pgtest.Grouped".into(),
        event_version: 1,
        payload: Bytes::from(format!("{{\"stream\":\"{stream}\",\"n\":{n}}}")),
        metadata: Metadata::new(),
    }
}

fn events(stream: &str, from: u64, count: u64) -> Vec<NewEvent> {
    (from..from + count).map(|n| event(stream, n)).collect()
}

/// 48 writers append to their own streams, 1 to 3 events at a time, through one store. Every
/// append is written once, with its stream's next versions, the log holds exactly those
/// events, and transactions held several appends (their events share a transaction id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_transactions_and_each_gets_its_own_answer() {
    const WRITERS: u64 = 48;
    const ROUNDS: u64 = 15;
    let pg = fresh().await;
    let store = pg.event_store().group_commit(GroupCommit::new(1));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let stream = format!("w-{w}");
            let mut version = 0;
            let mut written = Vec::new();
            for round in 0..ROUNDS {
                let count = 1 + (w + round) % 3;
                let committed = store
                    .append(
                        "grouped",
                        &stream,
                        ExpectedVersion::Exact(version),
                        events(&stream, version, count),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("{stream} round {round}: {e}"));
                assert_eq!(committed.len() as u64, count);
                for (i, e) in committed.iter().enumerate() {
                    assert_eq!(e.stream_id, stream);
                    assert_eq!(e.version, version + 1 + i as u64);
                    let n: serde_json::Value = serde_json::from_slice(&e.payload).unwrap();
                    assert_eq!(n["n"], version + i as u64, "the caller got another's event");
                }
                version += count;
                written.extend(committed.into_iter().map(|e| e.position));
            }
            (stream, version, written)
        }));
    }
    let mut positions = HashSet::new();
    let mut expected_total = 0;
    for t in tasks {
        let (stream, version, written) = t.await.unwrap();
        let stored = store.read_stream(&stream, 0).await.unwrap();
        assert_eq!(stored.len() as u64, version, "{stream}");
        for (i, e) in stored.iter().enumerate() {
            assert_eq!(e.version, i as u64 + 1);
        }
        expected_total += written.len();
        for p in written {
            assert!(positions.insert(p), "position {p} given twice");
        }
    }
    // Other tests' open transactions may hold the log back for a moment.
    let last = *positions.iter().max().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let log = loop {
        let log = store.read_all(0, 100_000).await.unwrap();
        if log.last().is_some_and(|e| e.position >= last) {
            break log;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the log never settled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(log.len(), expected_total);
    assert!(log.windows(2).all(|w| w[0].position < w[1].position));
    let mut per_transaction: BTreeMap<u64, HashSet<String>> = BTreeMap::new();
    for e in &log {
        per_transaction
            .entry(e.position >> 16)
            .or_default()
            .insert(e.stream_id.clone());
    }
    let shared = per_transaction.values().filter(|s| s.len() > 1).count();
    let stats = store.group_commit_stats().unwrap();
    println!(
        "[fault] group commit: {} appends by {WRITERS} writers in {} transactions, {} of them \
         shared ({} groups of {} appends), {} fallbacks",
        WRITERS * ROUNDS,
        per_transaction.len(),
        shared,
        stats.groups,
        stats.grouped_appends,
        stats.fallbacks
    );
    assert!(shared > 0, "no transaction held two appends");
    assert_eq!(stats.groups as usize, shared);
    assert_eq!(stats.fallbacks, 0);
    pg.drop_schema().await.unwrap();
}

/// Appends to one stream that arrive together are never grouped with each other: with no
/// version check they are all written, one after another; with the same expected version
/// exactly one is written and every other is a conflict naming the version it found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_to_one_stream_at_once_keep_their_order_and_their_checks() {
    let pg = fresh().await;
    let store = pg.event_store().group_commit(GroupCommit::new(1));
    let (holder, blocked) = block_the_writer(&store, "blocker").await;
    let mut any = Vec::new();
    let mut exact = Vec::new();
    for i in 0..16u64 {
        let s = store.clone();
        any.push(tokio::spawn(async move {
            s.append("grouped", "any", ExpectedVersion::Any, events("any", i, 2))
                .await
        }));
        let store = store.clone();
        exact.push(tokio::spawn(async move {
            store
                .append(
                    "grouped",
                    "exact",
                    ExpectedVersion::NEW,
                    events("exact", i, 1),
                )
                .await
        }));
    }
    let_them_queue().await;
    holder.commit().await.unwrap();
    assert!(matches!(
        blocked.await.unwrap(),
        Err(Error::Conflict { actual: 1, .. })
    ));
    for t in any {
        let written = t.await.unwrap().unwrap();
        assert_eq!(written.len(), 2);
        assert_eq!(written[1].version, written[0].version + 1);
    }
    let stored = store.read_stream("any", 0).await.unwrap();
    assert_eq!(stored.len(), 32);
    // Each append's two events sit next to each other: no interleaving within a stream.
    let n = |e: &cqrs_core::Envelope| {
        serde_json::from_slice::<serde_json::Value>(&e.payload).unwrap()["n"]
            .as_u64()
            .unwrap()
    };
    for pair in stored.chunks(2) {
        assert_eq!(n(&pair[1]), n(&pair[0]) + 1);
    }
    let mut written = 0;
    for t in exact {
        match t.await.unwrap() {
            Ok(events) => {
                written += 1;
                assert_eq!(events[0].version, 1);
            }
            Err(Error::Conflict {
                expected, actual, ..
            }) => {
                assert_eq!((expected, actual), (0, 1));
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(written, 1);
    assert_eq!(store.read_stream("exact", 0).await.unwrap().len(), 1);
    let stats = store.group_commit_stats().unwrap();
    assert!(stats.groups > 0, "nothing was grouped: {stats:?}");
    pg.drop_schema().await.unwrap();
}

/// A grouped append of three events whose first version a concurrent transaction writes (and
/// commits while the group waits for it) would be written in part: the server refuses the
/// whole group, the store appends one by one, and only that append fails, as a conflict. The
/// stream keeps the other transaction's single event, nothing of the refused append.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_written_in_part_by_a_concurrent_one_fails_alone() {
    let pg = fresh().await;
    let store = pg.event_store().group_commit(GroupCommit::new(1));
    let (blocker, blocked) = block_the_writer(&store, "blocker").await;
    // The concurrent transaction: version 1 of `contested`, not committed yet.
    let mut rival = store.begin().await.unwrap();
    rival
        .append(
            "grouped",
            "contested",
            ExpectedVersion::NEW,
            events("contested", 100, 1),
        )
        .await
        .unwrap();
    let mut queued = Vec::new();
    for stream in ["a", "contested", "b", "c"] {
        let store = store.clone();
        queued.push(tokio::spawn(async move {
            store
                .append(
                    "grouped",
                    stream,
                    ExpectedVersion::NEW,
                    events(stream, 0, 3),
                )
                .await
        }));
    }
    let_them_queue().await;
    // Free the writer: it takes the four queued appends as one group, which waits on the
    // rival's version 1 of `contested`.
    blocker.commit().await.unwrap();
    assert!(blocked.await.unwrap().is_err());
    let_them_queue().await;
    rival.commit().await.unwrap();
    let mut outcomes = Vec::new();
    for t in queued {
        outcomes.push(t.await.unwrap());
    }
    for (i, stream) in ["a", "contested", "b", "c"].iter().enumerate() {
        let stored = store.read_stream(stream, 0).await.unwrap();
        if *stream == "contested" {
            assert!(
                matches!(
                    outcomes[i],
                    Err(Error::Conflict {
                        expected: 0,
                        actual: 1,
                        ..
                    })
                ),
                "{:?}",
                outcomes[i]
            );
            assert_eq!(stored.len(), 1, "part of the refused append was written");
            let n: serde_json::Value = serde_json::from_slice(&stored[0].payload).unwrap();
            assert_eq!(n["n"], 100);
        } else {
            assert_eq!(outcomes[i].as_ref().unwrap().len(), 3, "{stream}");
            assert_eq!(stored.len(), 3);
        }
    }
    let stats = store.group_commit_stats().unwrap();
    assert_eq!(stats.fallbacks, 1, "{stats:?}");
    pg.drop_schema().await.unwrap();
}

/// Bad input in a group (a payload that is not UTF-8, an empty stream id, an event version
/// out of range) fails that append with a typed error; the rest of the group is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_in_a_group_fails_alone() {
    let pg = fresh().await;
    let store = pg.event_store().group_commit(GroupCommit::new(1));
    let (holder, blocked) = block_the_writer(&store, "blocker").await;
    let mut not_utf8 = event("bad", 0);
    not_utf8.payload = Bytes::from_static(&[0xff, 0xfe]);
    let mut too_new = event("huge", 0);
    too_new.event_version = u32::MAX;
    let appends: Vec<(&str, Vec<NewEvent>)> = vec![
        ("good-1", events("good-1", 0, 2)),
        ("bad", vec![event("bad", 1), not_utf8]),
        ("", events("", 0, 1)),
        ("huge", vec![too_new]),
        ("good-2", events("good-2", 0, 1)),
    ];
    let store = Arc::new(store);
    let mut tasks = Vec::new();
    for (stream, evs) in appends {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .append("grouped", stream, ExpectedVersion::NEW, evs)
                .await
        }));
    }
    let_them_queue().await;
    holder.commit().await.unwrap();
    assert!(blocked.await.unwrap().is_err());
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    assert_eq!(results[0].as_ref().unwrap().len(), 2);
    assert!(
        matches!(results[1], Err(Error::Malformed { .. })),
        "{:?}",
        results[1]
    );
    assert!(
        matches!(results[2], Err(Error::Config(_))),
        "{:?}",
        results[2]
    );
    assert!(
        matches!(results[3], Err(Error::Config(_))),
        "{:?}",
        results[3]
    );
    assert_eq!(results[4].as_ref().unwrap().len(), 1);
    assert!(store.read_stream("bad", 0).await.unwrap().is_empty());
    assert!(store.read_stream("huge", 0).await.unwrap().is_empty());
    assert_eq!(store.read_stream("good-1", 0).await.unwrap().len(), 2);
    assert!(store.group_commit_stats().unwrap().groups > 0);
    pg.drop_schema().await.unwrap();
}

/// Two stores (two processes, in effect) group appends to the same streams in opposite
/// orders. Groups take their streams' index entries in one order, so they wait for each other
/// but never deadlock. The appends expect no version, so a group that loses a race for a
/// stream's next version only retries: every append is written, and each stream's versions
/// have no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_grouping_the_same_streams_never_deadlock() {
    let pg = fresh().await;
    let left = pg.event_store().group_commit(GroupCommit::new(1));
    let right = pg.event_store().group_commit(GroupCommit::new(1));
    let streams: Vec<String> = (0..16).map(|i| format!("s-{i:02}")).collect();
    let mut tasks = Vec::new();
    for round in 0..30u64 {
        for (i, stream) in streams.iter().enumerate() {
            for (store, reversed) in [(&left, false), (&right, true)] {
                let store = store.clone();
                let stream = if reversed {
                    streams[streams.len() - 1 - i].clone()
                } else {
                    stream.clone()
                };
                tasks.push(tokio::spawn(async move {
                    store
                        .append(
                            "grouped",
                            &stream,
                            ExpectedVersion::Any,
                            events(&stream, round, 1),
                        )
                        .await
                }));
            }
        }
    }
    let (mut written, mut conflicts) = (0, 0);
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(60), t).await {
            Ok(Ok(Ok(_))) => written += 1,
            Ok(Ok(Err(Error::Conflict { .. }))) => conflicts += 1,
            Ok(Ok(Err(e))) => panic!("unexpected error: {e}"),
            Ok(Err(e)) => panic!("task failed: {e}"),
            Err(_) => panic!("an append hung"),
        }
    }
    let mut stored = 0;
    for stream in &streams {
        let events = left.read_stream(stream, 0).await.unwrap();
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.version, i as u64 + 1, "{stream}");
        }
        stored += events.len();
    }
    assert_eq!(stored, written);
    assert_eq!((written, conflicts), (960, 0));
    // A deadlock would have shown as a group the server refused.
    for store in [&left, &right] {
        let stats = store.group_commit_stats().unwrap();
        assert!(stats.groups > 0, "nothing was grouped: {stats:?}");
        assert_eq!(stats.fallbacks, 0, "{stats:?}");
    }
    println!("[fault] two grouping stores: {written} of 960 written, no deadlock");
    pg.drop_schema().await.unwrap();
}
