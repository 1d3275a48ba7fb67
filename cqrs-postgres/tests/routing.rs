#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! Routing keys on a real server, where the conformance suite does not reach: appends in one
//! group commit, and a binary from before the routing key, during a rolling upgrade.

mod common;

use std::sync::Arc;

use common::{block_the_writer, event, fresh, let_them_queue};
use cqrs_core::envelope::{ExpectedVersion, NewEvent};
use cqrs_core::{Envelope, Error, EventAppender, EventReader};
use cqrs_postgres::GroupCommit;

fn routed(n: u64, key: Option<&str>) -> NewEvent {
    let mut e = event(0, n);
    e.metadata.routing_key = key.map(str::to_owned);
    e
}

fn keys(events: &[Envelope]) -> Vec<&str> {
    events.iter().map(Envelope::routing_key).collect()
}

/// Appends sharing one transaction each get their stream's key: a new stream the key it
/// names, an event naming none its stream's. One that names a key its stream does not have
/// is refused with the typed error (the group falls back to one by one) and the rest of the
/// group is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_in_one_group_keep_their_streams_keys() {
    let pg = fresh().await;
    let store = pg.event_store().group_commit(GroupCommit::new(1));
    store
        .append(
            "c",
            "old",
            ExpectedVersion::NEW,
            vec![routed(1, Some("p-1"))],
        )
        .await
        .unwrap();
    let store = Arc::new(store);
    let run_group = |blocker: &'static str, appends: Vec<(&'static str, NewEvent)>| {
        let store = store.clone();
        async move {
            let (holder, blocked) = block_the_writer(&store, blocker).await;
            let mut tasks = Vec::new();
            for (stream, e) in appends {
                let store = store.clone();
                tasks.push(tokio::spawn(async move {
                    store
                        .append("c", stream, ExpectedVersion::Any, vec![e])
                        .await
                }));
            }
            let_them_queue().await;
            holder.commit().await.unwrap();
            let _ = blocked.await.unwrap();
            let mut results = Vec::new();
            for t in tasks {
                results.push(t.await.unwrap());
            }
            results
        }
    };
    let results = run_group(
        "blocker-1",
        vec![
            ("old", routed(2, None)),
            ("new", routed(1, Some("p-2"))),
            ("plain", routed(1, None)),
        ],
    )
    .await;
    assert_eq!(keys(results[0].as_ref().unwrap()), ["p-1"], "inherited");
    assert_eq!(keys(results[1].as_ref().unwrap()), ["p-2"], "named");
    assert_eq!(keys(results[2].as_ref().unwrap()), ["plain"], "by id");
    let grouped = store.group_commit_stats().unwrap();
    assert!(grouped.groups > 0, "nothing was grouped: {grouped:?}");

    let results = run_group(
        "blocker-2",
        vec![("old", routed(3, Some("p-9"))), ("new", routed(2, None))],
    )
    .await;
    assert!(
        matches!(&results[0], Err(Error::RoutingKeyChanged { expected, actual, .. })
            if expected == "p-1" && actual == "p-9"),
        "{:?}",
        results[0]
    );
    assert_eq!(keys(results[1].as_ref().unwrap()), ["p-2"]);
    assert!(store.group_commit_stats().unwrap().fallbacks > grouped.fallbacks);

    // What was stored says the same.
    assert_eq!(
        keys(&store.read_stream("old", 0).await.unwrap()),
        ["p-1"; 2]
    );
    assert_eq!(
        keys(&store.read_stream("new", 0).await.unwrap()),
        ["p-2"; 2]
    );
    pg.drop_schema().await.unwrap();
}

/// A binary from before migration 0007 calls the append functions without a key: its
/// appends to a routed stream inherit the stream's key, and read back with it.
#[tokio::test]
async fn an_older_binary_inherits_the_streams_key() {
    let pg = fresh().await;
    let store = pg.event_store();
    store
        .append(
            "c",
            "c-1",
            ExpectedVersion::NEW,
            vec![routed(1, Some("p-1"))],
        )
        .await
        .unwrap();
    let schema = pg.schema().to_owned();
    let sql = format!(
        "SELECT out_position, out_version, out_actual FROM {schema}.append_events(
            $1, $2, $3, $4, $5, $6, $7::text[]::json[], $8, $9, $10, $11, $12::text[]::json[])"
    );
    let rows: Vec<(Option<i64>, Option<i64>, Option<i64>)> =
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind("c-1")
            .bind("c")
            .bind(1i64)
            .bind(true)
            .bind(vec!["pgtest.Old"])
            .bind(vec![1i32])
            .bind(vec![r#"{"n": 2}"#])
            .bind(vec![uuid::Uuid::new_v4()])
            .bind(vec![uuid::Uuid::new_v4()])
            .bind(vec![None::<uuid::Uuid>])
            .bind(vec![chrono::Utc::now()])
            .bind(vec![Some(r#"{"user": "alice"}"#)])
            .fetch_all(pg.pool())
            .await
            .expect("the old call");
    assert_eq!(rows, [(rows[0].0, Some(2), None)]);
    let stream = store.read_stream("c-1", 0).await.unwrap();
    assert_eq!(keys(&stream), ["p-1", "p-1"]);
    assert_eq!(stream[1].metadata.user["user"], "alice");
    pg.drop_schema().await.unwrap();
}
