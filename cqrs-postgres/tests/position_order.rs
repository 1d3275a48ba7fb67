#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! Per stream, position order equals version order, whatever the append path, the expected
//! version, the number of processes and the interleaving (docs/adr/0017). A stream whose
//! version n + 1 sits before version n in the log is read out of order by every processor and
//! relay, and a view that skips what is older than what it applied loses version n for good.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{database_url, event, fresh};
use cqrs_core::envelope::ExpectedVersion;
use cqrs_core::{Envelope, Error, EventAppender, EventReader};
use cqrs_postgres::{GroupCommit, PgEventStore, Postgres};

/// The whole log once it holds `count` events (other tests' transactions may hold it back).
async fn whole_log(store: &PgEventStore, count: usize) -> Vec<Envelope> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let page = store.read_all(after, 1000).await.expect("read");
            let Some(last) = page.last() else { break };
            after = last.position;
            all.extend(page);
        }
        if all.len() >= count {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {count} events became readable",
            all.len()
        );
        store
            .wait_for_events(after, Duration::from_millis(50))
            .await
            .expect("wait");
    }
}

/// Every stream's events, in log order, must be its versions 1, 2, 3, ... Returns the number
/// of places where a version follows a larger one (0 when the log is in order).
fn inversions(log: &[Envelope]) -> usize {
    let mut last: BTreeMap<&str, u64> = BTreeMap::new();
    let mut found = 0;
    for e in log {
        let previous = last.entry(e.stream_id.as_str()).or_insert(0);
        if e.version != *previous + 1 {
            found += 1;
        }
        *previous = e.version;
    }
    found
}

/// A transaction takes its id with its first append; a second process then commits version 1
/// of stream `b` from a transaction with a larger id. Appending version 2 of `b` in the first
/// transaction would give it a position below version 1's: it is refused as a conflict, and
/// the retry in a new transaction lands after version 1.
#[tokio::test]
async fn an_append_in_an_older_transaction_never_lands_before_the_streams_last_version() {
    let pg = fresh().await;
    let store = pg.event_store().without_group_commit();
    let other = Postgres::connect(&database_url(), pg.schema())
        .await
        .expect("a second pool")
        .event_store()
        .without_group_commit();

    let mut tx = store.begin().await.expect("begin");
    tx.append("counter", "a", ExpectedVersion::NEW, vec![event(1, 1)])
        .await
        .expect("the first append takes the transaction's id");
    let v1 = other
        .append("counter", "b", ExpectedVersion::NEW, vec![event(2, 1)])
        .await
        .expect("b version 1, from a later transaction");
    let refused = tx
        .append("counter", "b", ExpectedVersion::Exact(1), vec![event(1, 2)])
        .await;
    match refused {
        Err(Error::Conflict {
            stream_id, actual, ..
        }) => {
            assert_eq!(stream_id, "b");
            assert_eq!(actual, 1, "the conflict names the stream's version");
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    tx.rollback().await.expect("rollback");

    let mut retry = store.begin().await.expect("begin again");
    let v2 = retry
        .append("counter", "b", ExpectedVersion::Exact(1), vec![event(1, 2)])
        .await
        .expect("in a new transaction");
    retry.commit().await.expect("commit");
    assert!(
        v2[0].position > v1[0].position,
        "version 2 at {} must follow version 1 at {}",
        v2[0].position,
        v1[0].position
    );
    let log = whole_log(&store, 2).await;
    assert_eq!(inversions(&log), 0, "log: {log:?}");

    // Appends of the transaction's own streams, and of streams last written by older
    // transactions, are still accepted after its first write.
    let mut tx = store.begin().await.expect("begin");
    tx.append("counter", "c", ExpectedVersion::NEW, vec![event(1, 3)])
        .await
        .expect("c");
    tx.append("counter", "c", ExpectedVersion::Exact(1), vec![event(1, 4)])
        .await
        .expect("c again, in the same transaction");
    tx.append("counter", "b", ExpectedVersion::Exact(2), vec![event(1, 5)])
        .await
        .expect("b, last written before this transaction began");
    tx.commit().await.expect("commit");
    let log = whole_log(&store, 5).await;
    assert_eq!(inversions(&log), 0, "log: {log:?}");
}

/// Two processes (two stores on two pools), 16 writers each, append single events with no
/// expected version to 4 hot streams through their group commits. Whatever the interleaving,
/// the log holds each stream's versions in order. (Before migration 0009 the group took its
/// transaction id before it read the streams' versions: 3 to 9 inversions in runs like this.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_group_commits_of_two_processes_keep_each_streams_order() {
    const WRITERS: usize = 16;
    const APPENDS: usize = 80;
    const STREAMS: usize = 4;
    let pg = fresh().await;
    let mut stores = Vec::new();
    for _ in 0..2 {
        let process = Postgres::connect(&database_url(), pg.schema())
            .await
            .expect("a pool of its own");
        stores.push(process.event_store().group_commit(GroupCommit::new(2)));
    }
    let stores = Arc::new(stores);
    let mut tasks = Vec::new();
    for process in 0..2 {
        for w in 0..WRITERS {
            let stores = stores.clone();
            tasks.push(tokio::spawn(async move {
                let store = &stores[process];
                for n in 0..APPENDS {
                    let stream = format!("hot-{}", (w + n) % STREAMS);
                    store
                        .append(
                            "counter",
                            &stream,
                            ExpectedVersion::Any,
                            vec![event(w as u64, n as u64)],
                        )
                        .await
                        .expect("append");
                }
            }));
        }
    }
    for task in tasks {
        task.await.expect("writer");
    }
    let total = 2 * WRITERS * APPENDS;
    let log = whole_log(&stores[0], total).await;
    assert_eq!(log.len(), total);
    assert_eq!(inversions(&log), 0, "streams read out of version order");
    let grouped: u64 = stores
        .iter()
        .map(|s| s.group_commit_stats().map_or(0, |s| s.grouped_appends))
        .sum();
    assert!(grouped > 0, "the appends went through shared transactions");
}
