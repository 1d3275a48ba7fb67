#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! The framework's sessions are bounded (docs/adr/0018): a session left idle in a transaction
//! (a process paused or cut off between two statements) is ended by the server, so it holds
//! the log's readers back for the limit at most, not for as long as it lives.

mod common;

use std::time::{Duration, Instant};

use common::{database_url, event, fresh};
use cqrs_core::envelope::ExpectedVersion;
use cqrs_core::{EventAppender, EventReader};
use cqrs_postgres::{Postgres, SessionLimits};

#[tokio::test]
async fn the_default_limits_are_set_and_a_connection_string_keeps_its_own() {
    let pg = fresh().await;
    let shown: String = sqlx::query_scalar("SHOW idle_in_transaction_session_timeout")
        .fetch_one(pg.pool())
        .await
        .expect("show");
    assert_eq!(shown, "5s");
    let shown: String = sqlx::query_scalar("SHOW lock_timeout")
        .fetch_one(pg.pool())
        .await
        .expect("show");
    assert_eq!(shown, "10s");

    let sep = if database_url().contains('?') {
        '&'
    } else {
        '?'
    };
    let url = format!("{}{sep}options=-c%20lock_timeout%3D2500", database_url());
    let own = Postgres::connect(&url, pg.schema()).await.expect("connect");
    let shown: String = sqlx::query_scalar("SHOW lock_timeout")
        .fetch_one(own.pool())
        .await
        .expect("show");
    assert_eq!(shown, "2500ms", "the connection string's own limit wins");
    let shown: String = sqlx::query_scalar("SHOW statement_timeout")
        .fetch_one(own.pool())
        .await
        .expect("show");
    assert_eq!(shown, "1min", "the others are still set");
}

/// A transaction takes an id (its first append) and its process stops answering. Another
/// process's event, committed after it, is invisible to readers while the idle transaction
/// lives. With a limit of 1 s the server ends it, the reader sees the event within the limit
/// plus a little, and the stalled transaction's own append is rolled back, never half there.
/// (With no limit the reader waits for the whole pause: the control half of the test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_paused_in_a_transaction_holds_readers_back_for_the_limit_only() {
    let pg = fresh().await;
    let limit = Duration::from_secs(1);
    for (limits, bounded) in [
        (SessionLimits::default().idle_in_transaction(limit), true),
        (SessionLimits::none(), false),
    ] {
        let paused = Postgres::connect_with_limits(&database_url(), pg.schema(), limits)
            .await
            .expect("connect")
            .event_store()
            .without_group_commit();
        let other = pg.event_store().without_group_commit();
        let stream = format!("held-{bounded}");
        let mut tx = paused.begin().await.expect("begin");
        tx.append("counter", &stream, ExpectedVersion::NEW, vec![event(1, 1)])
            .await
            .expect("the paused process's append");
        let head = other.head().await.expect("head");
        let committed = other
            .append(
                "counter",
                &format!("later-{bounded}"),
                ExpectedVersion::NEW,
                vec![event(2, 1)],
            )
            .await
            .expect("another process's append");
        let position = committed[0].position;

        // The reader, from the head before: how long until the later event is readable?
        let started = Instant::now();
        let hold = Duration::from_secs(4);
        let seen = loop {
            let page = other.read_all(head, 100).await.expect("read");
            if page.iter().any(|e| e.position == position) {
                break Some(started.elapsed());
            }
            if started.elapsed() > hold {
                break None;
            }
            other
                .wait_for_events(head, Duration::from_millis(100))
                .await
                .expect("wait");
        };
        let commit = tx.commit().await;
        if bounded {
            let waited = seen.expect("the reader saw the event once the limit ended the session");
            println!("[fault] a session idle in its transaction held readers back {waited:?} (limit {limit:?})");
            assert!(
                waited < limit + Duration::from_secs(2),
                "held back {waited:?} with a limit of {limit:?}"
            );
            assert!(commit.is_err(), "the ended transaction cannot commit");
            let log = other.read_all(head, 100).await.expect("read");
            assert!(
                log.iter().all(|e| e.stream_id != stream),
                "the stalled transaction's append was rolled back"
            );
        } else {
            assert!(
                seen.is_none(),
                "without a limit the reader waits for the whole pause"
            );
            commit.expect("commit after the pause");
        }
    }
}

/// A holder frozen in the middle of its unit of work keeps its segment's claim row locked. A
/// claim round of another instance skips that row instead of waiting on it (before, each round
/// waited until the frozen session ended, and kept its pooled connection meanwhile), and takes
/// the segment once the row is free.
#[tokio::test]
async fn a_claim_skips_a_row_locked_by_a_frozen_holder() {
    use cqrs_core::segment::{Segment, SegmentClaims};
    let pg = fresh().await;
    let views = pg.view_store();
    let segment = Segment::new(0, 2).expect("segment");
    let short = Duration::from_millis(100);
    views
        .claim("p", segment, uuid::Uuid::new_v4(), short)
        .await
        .expect("claim")
        .expect("the first claim");
    tokio::time::sleep(short * 2).await;
    // The frozen holder: its fence took the row lock, then it stopped answering.
    let mut frozen = pg.pool().begin().await.expect("begin");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT 1 FROM {}.segment_claims WHERE projection = 'p' FOR UPDATE",
        pg.schema()
    )))
    .execute(&mut *frozen)
    .await
    .expect("lock");
    let started = Instant::now();
    let skipped = tokio::time::timeout(
        Duration::from_secs(3),
        views.claim("p", segment, uuid::Uuid::new_v4(), Duration::from_secs(5)),
    )
    .await
    .expect("the claim waited on the frozen holder's lock")
    .expect("claim");
    assert!(skipped.is_none(), "a locked row is not taken");
    println!(
        "[fault] a claim round beside a frozen holder's lock answered in {:?}",
        started.elapsed()
    );
    frozen.rollback().await.expect("rollback");
    let taken = views
        .claim("p", segment, uuid::Uuid::new_v4(), Duration::from_secs(5))
        .await
        .expect("claim");
    assert!(taken.is_some(), "taken once the row is free");
    // A segment never claimed is still created by a claim.
    let fresh_segment = Segment::new(1, 2).expect("segment");
    assert!(views
        .claim(
            "p",
            fresh_segment,
            uuid::Uuid::new_v4(),
            Duration::from_secs(5)
        )
        .await
        .expect("claim")
        .is_some());
}

/// While a transaction that took an id before an event committed is still running, the store
/// names it: its id, its session's pid and state, and how long it has run. The health report
/// carries it. Once it ends, nothing is held back.
#[tokio::test]
async fn the_store_names_the_transaction_holding_the_log_back() {
    use cqrs_core::store::HeldBack;
    let pg = fresh().await;
    let store = pg.event_store().without_group_commit();
    // Older transactions of other tests may hold the log back too: wait for them to end.
    let mut holder = pg.pool().begin().await.expect("begin");
    let (xid, pid): (i64, i32) =
        sqlx::query_as("SELECT pg_current_xact_id()::text::bigint, pg_backend_pid()")
            .fetch_one(&mut *holder)
            .await
            .expect("take an id");
    store
        .append("counter", "a", ExpectedVersion::NEW, vec![event(1, 1)])
        .await
        .expect("append after it");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let held: HeldBack = loop {
        let held = store
            .held_back()
            .await
            .expect("held back")
            .expect("held back by someone");
        if held.transaction == xid as u64 {
            break held;
        }
        assert!(
            Instant::now() < deadline,
            "never held back by the test's transaction: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("[fault] the log held back by {held:?}");
    assert_eq!(held.pid, Some(pid));
    assert_eq!(held.state.as_deref(), Some("idle in transaction"));
    assert!(held.seconds.is_some_and(|s| s >= 0.3), "{held:?}");
    let app = cqrs_core::App::builder()
        .with(pg.clone())
        .build()
        .expect("an app on the store");
    let health = app.health().await;
    assert!(health.log_held_back.is_some(), "{health:?}");
    assert!(health.is_ok(), "reported, not degraded: {health:?}");
    app.shutdown().await.expect("shutdown");
    holder.rollback().await.expect("rollback");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store.held_back().await.expect("held back") {
            None => break,
            Some(other) => {
                assert_ne!(other.transaction, xid as u64, "still named after it ended");
                assert!(Instant::now() < deadline, "held back by {other:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
