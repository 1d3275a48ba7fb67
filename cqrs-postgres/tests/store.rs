#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! The PostgreSQL event store on a real server: conformance, the gap test, concurrent
//! writers, snapshots. Bad input is in `bad_input.rs`, appends in a caller's transaction in
//! `transactions.rs`.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{add, event, fresh, Counter};
use cqrs_core::envelope::{ExpectedVersion, NewEvent};
use cqrs_core::store::Snapshot;
use cqrs_core::{
    Backoff, CheckpointStore, CommandError, CommandGateway, Error, EventAppender, EventReader,
    EventStore, SnapshotStore,
};
use cqrs_postgres::Postgres;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_store_passes_the_conformance_suite() {
    let schemas = Arc::new(parking_lot::Mutex::new(Vec::new()));
    cqrs_testing::conformance::run(|| {
        let schemas = schemas.clone();
        async move {
            let pg = fresh().await;
            let store = pg.event_store();
            schemas.lock().push(pg);
            store
        }
    })
    .await;
    let all: Vec<Postgres> = schemas.lock().drain(..).collect();
    for pg in all {
        pg.drop_schema().await.expect("drop");
    }
}

/// Sixteen writers append in transactions that pause at random (some long enough for later
/// transactions to commit first) and roll back one time in five, while a reader tails the
/// global log by position. The reader must see every committed event once, in position order,
/// and never a rolled-back one, and must not stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tailing_reader_never_skips_an_event_committed_late() {
    const WRITERS: u64 = 16;
    const ROUNDS: u64 = 25;
    let pg = fresh().await;
    let store = Arc::new(pg.event_store());
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let reader = {
        let store = store.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut after = 0;
            let mut idle_after_done = 0;
            loop {
                let batch = store.read_all(after, 50).await.expect("read_all");
                if batch.is_empty() {
                    if done.load(std::sync::atomic::Ordering::SeqCst) {
                        idle_after_done += 1;
                        if idle_after_done > 3 {
                            break;
                        }
                    }
                    store
                        .wait_for_events(after, Duration::from_millis(100))
                        .await
                        .expect("wait");
                    continue;
                }
                idle_after_done = 0;
                for e in batch {
                    assert!(e.position > after, "positions only move forward");
                    after = e.position;
                    seen.push(e);
                }
            }
            seen
        })
    };

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let mut committed = Vec::new();
            let mut version = 0;
            for n in 0..ROUNDS {
                let mut tx = store.begin().await.expect("begin");
                let events: Vec<NewEvent> = (0..1 + n % 3).map(|k| event(w, n * 10 + k)).collect();
                let appended = tx
                    .append(
                        "gap",
                        &format!("w-{w}"),
                        ExpectedVersion::Exact(version),
                        events,
                    )
                    .await
                    .expect("append");
                // Pause inside the transaction: others take later positions and commit first.
                tokio::time::sleep(Duration::from_millis(fastrand::u64(0..15))).await;
                if fastrand::u8(0..5) == 0 {
                    tx.rollback().await.expect("rollback");
                } else {
                    tx.commit().await.expect("commit");
                    version += appended.len() as u64;
                    committed.extend(appended.into_iter().map(|e| e.metadata.event_id));
                }
            }
            committed
        }));
    }
    let mut committed = HashSet::new();
    for writer in writers {
        committed.extend(writer.await.expect("writer"));
    }
    let finished_writing = Instant::now();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = reader.await.expect("reader");
    assert!(
        finished_writing.elapsed() < Duration::from_secs(10),
        "the reader stalled"
    );

    let seen_ids: Vec<_> = seen.iter().map(|e| e.metadata.event_id).collect();
    let unique: HashSet<_> = seen_ids.iter().copied().collect();
    assert_eq!(unique.len(), seen_ids.len(), "an event was seen twice");
    let skipped = committed.difference(&unique).count();
    let phantom = unique.difference(&committed).count();
    println!(
        "[fault] global log under {WRITERS} concurrent appenders with rollbacks: {} committed, \
         {} seen by the tailing reader, {skipped} skipped, {} duplicated, {phantom} rolled back \
         but seen",
        committed.len(),
        seen.len(),
        seen_ids.len() - unique.len()
    );
    assert_eq!(skipped, 0, "committed events were skipped");
    assert_eq!(phantom, 0, "rolled-back events were seen");
    assert!(seen.windows(2).all(|w| w[0].position < w[1].position));
    pg.drop_schema().await.expect("drop");
}

/// Reads of the log abandoned at every stage (waiting for a connection, mid-`COPY`, decoding)
/// leave no connection in the middle of a `COPY` in the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_abandoned_midway_leave_the_pool_serving() {
    let pg = fresh().await;
    let store = pg.event_store();
    for batch in 0..20u64 {
        let events = (0..500).map(|n| event(batch, n)).collect();
        store
            .append("gap", &format!("s-{batch}"), ExpectedVersion::NEW, events)
            .await
            .expect("append");
    }
    let mut cut_short = 0;
    for i in 0..40u64 {
        let read =
            tokio::time::timeout(Duration::from_micros(250 * i), store.read_all(0, 100_000)).await;
        if read.is_err() {
            cut_short += 1;
        }
    }
    assert!(
        cut_short > 0,
        "no read was abandoned: the test proves nothing"
    );
    for _ in 0..24 {
        let all = store.read_all(0, 100_000).await.expect("read_all");
        assert_eq!(all.len(), 10_000);
        assert!(all.windows(2).all(|w| w[0].position < w[1].position));
        assert_eq!(
            store.read_stream("s-3", 0).await.expect("stream").len(),
            500
        );
    }
    pg.drop_schema().await.expect("drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_writers_on_one_aggregate_lose_no_update() {
    let pg = fresh().await;
    let store: Arc<dyn EventStore> = Arc::new(pg.event_store());
    // 32 commands at once on one aggregate, all committed, with this conflict backoff (else
    // the default):
    // returns the retries they took and how long they took.
    let hot = |stream: &'static str, backoff: Option<Backoff>| {
        let store = store.clone();
        async move {
            let mut gateway = CommandGateway::builder(store).max_retries(1_000);
            if let Some(backoff) = backoff {
                gateway = gateway.conflict_backoff(backoff);
            }
            let gateway = gateway.build();
            let started = std::time::Instant::now();
            let mut tasks = Vec::new();
            for i in 0..32u64 {
                let gateway = gateway.clone();
                tasks.push(tokio::spawn(async move {
                    (i + 1, gateway.send(add(stream, i + 1)).await)
                }));
            }
            let (mut sum, mut ok) = (0, 0);
            for task in tasks {
                let (amount, outcome) = task.await.expect("task");
                match outcome {
                    Ok(_) => {
                        sum += amount;
                        ok += 1;
                    }
                    Err(other) => panic!("unexpected: {other}"),
                }
            }
            let elapsed = started.elapsed();
            let (counter, version) = gateway.load::<Counter>(stream).await.expect("load");
            assert_eq!(counter.total, sum, "no lost update");
            assert_eq!(
                (version, ok),
                (32, 32),
                "with enough retries every command commits"
            );
            (gateway.conflict_retries(), elapsed, counter.total)
        }
    };
    let at_once = Backoff::new(Duration::ZERO, Duration::ZERO);
    let (lockstep, lockstep_time, _) = hot("hot-at-once", Some(at_once)).await;
    let (spread, spread_time, first_total) = hot("hot", None).await;
    println!(
        "[fault] 32 writers on one aggregate (PostgreSQL): {lockstep} conflict retries in \
         {lockstep_time:?} retrying at once, {spread} in {spread_time:?} with the default \
         jittered backoff"
    );
    assert!(
        spread < lockstep,
        "the jittered backoff should retry less than lockstep ({spread} vs {lockstep})"
    );
    let first_ok = 32;

    // Without retries, conflicts come back typed, and the state is exactly what committed.
    let strict = CommandGateway::builder(store.clone())
        .max_retries(0)
        .cache(0)
        .build();
    let mut tasks = Vec::new();
    for i in 0..32u64 {
        let gateway = strict.clone();
        tasks.push(tokio::spawn(async move {
            (i + 1, gateway.send(add("hot2", i + 1)).await)
        }));
    }
    let (mut sum, mut ok, mut conflicts) = (0, 0, 0);
    for task in tasks {
        match task.await.expect("task") {
            (amount, Ok(_)) => {
                sum += amount;
                ok += 1;
            }
            (
                _,
                Err(CommandError::Conflict {
                    source: Error::Conflict { .. },
                    ..
                }),
            ) => conflicts += 1,
            (_, Err(other)) => panic!("unexpected: {other}"),
        }
    }
    let (counter, version) = strict.load::<Counter>("hot2").await.expect("load");
    assert_eq!((counter.total, version), (sum, ok));
    assert_eq!(ok + conflicts, 32);
    println!(
        "[fault] 32 writers on one aggregate (PostgreSQL): with retries {first_ok}/32 committed, \
         0 lost updates (total {first_total}); without retries {ok} committed + {conflicts} \
         typed conflicts = 32, 0 lost updates"
    );
    pg.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn snapshots_and_checkpoints_round_trip() {
    let pg = fresh().await;
    let snapshots = pg.snapshot_store();
    let snap = |version: u64, total: u64| Snapshot {
        aggregate_type: "counter".into(),
        stream_id: "s".into(),
        version,
        state: Bytes::from(format!("{{\"total\":{total}}}")),
    };
    assert!(snapshots
        .load("counter", "s")
        .await
        .expect("load")
        .is_none());
    snapshots.save(snap(10, 100)).await.expect("save");
    snapshots
        .save(snap(5, 50))
        .await
        .expect("an older snapshot is ignored");
    let loaded = snapshots
        .load("counter", "s")
        .await
        .expect("load")
        .expect("exists");
    assert_eq!(loaded.version, 10);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&loaded.state).expect("json")["total"],
        100
    );

    let checkpoints = pg.checkpoint_store();
    assert_eq!(checkpoints.load("relay").await.expect("load"), None);
    checkpoints.save("relay", 42).await.expect("save");
    assert_eq!(checkpoints.load("relay").await.expect("load"), Some(42));

    // The gateway snapshots through it.
    let gateway = CommandGateway::builder(Arc::new(pg.event_store()))
        .snapshots(Arc::new(pg.snapshot_store()), 3)
        .cache(0)
        .build();
    for i in 1..=7 {
        gateway.send(add("snap", i)).await.expect("send");
    }
    assert_eq!(
        snapshots
            .load("counter", "snap")
            .await
            .expect("load")
            .expect("snapshot")
            .version,
        6
    );
    assert_eq!(
        gateway.load::<Counter>("snap").await.expect("load").0.total,
        28
    );
    pg.drop_schema().await.expect("drop");
}
