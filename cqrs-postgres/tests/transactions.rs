#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! Appends in a caller's transaction on a real server (committed together or not at all), and
//! an older binary's appends after the newer migrations.

mod common;

use std::time::{Duration, Instant};

use common::{event, fresh};
use cqrs_core::envelope::ExpectedVersion;
use cqrs_core::{CheckpointStore, Error, EventAppender, EventReader};

/// The log once `position` is readable (other tests' transactions may hold it back briefly).
async fn settled(store: &cqrs_postgres::PgEventStore, position: u64) -> Vec<cqrs_core::Envelope> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all = store.read_all(0, 1000).await.expect("read");
        if all.iter().any(|e| e.position >= position) {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "position {position} never became readable"
        );
        store
            .wait_for_events(0, Duration::from_millis(50))
            .await
            .expect("wait");
    }
}

#[tokio::test]
async fn appends_in_one_transaction_commit_together_or_not_at_all() {
    let pg = fresh().await;
    let store = pg.event_store();
    let mut tx = store.begin().await.expect("begin");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {}.checkpoints VALUES ('own', 1)",
        pg.schema()
    )))
    .execute(tx.connection())
    .await
    .expect("the caller's own write first");
    let a = tx
        .append(
            "counter",
            "a",
            ExpectedVersion::NEW,
            vec![event(1, 1), event(1, 2)],
        )
        .await
        .expect("a");
    let b = tx
        .append("counter", "b", ExpectedVersion::NEW, vec![event(1, 3)])
        .await
        .expect("b");
    assert!(
        a[0].position < a[1].position && a[1].position < b[0].position,
        "positions follow the appends"
    );
    assert!(
        store.read_all(0, 10).await.expect("read").is_empty(),
        "invisible before commit"
    );
    tx.commit().await.expect("commit");
    let all = settled(&store, b[0].position).await;
    assert_eq!(all.len(), 3);
    assert_eq!(
        pg.checkpoint_store().load("own").await.expect("own"),
        Some(1)
    );

    let mut tx = store.begin().await.expect("begin");
    tx.append("counter", "c", ExpectedVersion::NEW, vec![event(1, 4)])
        .await
        .expect("c");
    tx.rollback().await.expect("rollback");
    assert_eq!(
        store.read_all(0, 10).await.expect("read").len(),
        3,
        "a rollback writes nothing"
    );
    assert!(store.read_stream("c", 0).await.expect("c").is_empty());
    pg.drop_schema().await.expect("drop");
}

/// A binary from before migration 0003 calls `append_events` with `jsonb[]` payloads; during
/// a rolling upgrade it must still append, and its events read back like any other.
#[tokio::test]
async fn an_older_binary_still_appends_after_the_migrations() {
    let pg = fresh().await;
    let schema = pg.schema().to_owned();
    let sql = format!(
        "SELECT out_position, out_version, out_actual FROM {schema}.append_events(
            $1, $2, $3, $4, $5, $6, $7::text[]::jsonb[], $8, $9, $10, $11, $12::text[]::jsonb[])"
    );
    let rows: Vec<(Option<i64>, Option<i64>, Option<i64>)> =
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind("old-1")
            .bind("old")
            .bind(0i64)
            .bind(true)
            .bind(vec!["pgtest.Old"])
            .bind(vec![1i32])
            .bind(vec![r#"{"n": 1}"#])
            .bind(vec![uuid::Uuid::new_v4()])
            .bind(vec![uuid::Uuid::new_v4()])
            .bind(vec![None::<uuid::Uuid>])
            .bind(vec![chrono::Utc::now()])
            .bind(vec![Some(r#"{"user": "alice"}"#)])
            .fetch_all(pg.pool())
            .await
            .expect("the old call");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].1, Some(1));
    assert_eq!(rows[0].2, None);
    let store = pg.event_store();
    let events = store.read_stream("old-1", 0).await.expect("read");
    assert_eq!(events.len(), 1);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&events[0].payload).unwrap()["n"],
        1
    );
    assert_eq!(
        events[0].metadata.user.get("user").map(String::as_str),
        Some("alice")
    );
    // And the version check still holds for it.
    let conflict = store
        .append("old", "old-1", ExpectedVersion::NEW, vec![event(0, 0)])
        .await;
    assert!(matches!(conflict, Err(Error::Conflict { actual: 1, .. })));
    pg.drop_schema().await.expect("drop");
}
