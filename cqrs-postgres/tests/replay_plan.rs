//! A replay of a freshly loaded log, never analyzed (a bulk load, a restore; autovacuum is off
//! on the test machines): each page walks the primary key in order, whatever the statistics.
#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::time::Instant;

use common::fresh;
use cqrs_core::envelope::{ExpectedVersion, Metadata, NewEvent};
use cqrs_core::{EventAppender, EventReader};
use sqlx::Row;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_never_analyzed_log_is_read_page_by_page_in_index_order() {
    let pg = fresh().await;
    let store = pg.event_store().without_group_commit();
    let events = 100_000u64;
    for batch in 0..events / 1_000 {
        let new: Vec<NewEvent> = (0..1_000)
            .map(|i| NewEvent {
                event_name: "pgtest.Added".into(),
                event_version: 1,
                payload: format!("{{\"amount\": {i}}}").into_bytes().into(),
                metadata: Metadata::new(),
            })
            .collect();
        store
            .append("counter", &format!("c-{batch}"), ExpectedVersion::NEW, new)
            .await
            .expect("append");
    }
    let table = format!("{}.events", pg.schema());
    let row = sqlx::query(
        "SELECT c.reltuples::float8, s.last_analyze IS NULL AND s.last_autoanalyze IS NULL
           FROM pg_class c JOIN pg_stat_user_tables s ON s.relid = c.oid
          WHERE c.oid = $1::regclass",
    )
    .bind(&table)
    .fetch_one(pg.pool())
    .await
    .expect("statistics");
    let (reltuples, never_analyzed): (f64, bool) = (row.get(0), row.get(1));

    // The plan of a page in the middle of the log: the primary key, in order.
    let middle = store.read_all(0, 50_000).await.expect("read")[49_999].position;
    let plan = store
        .explain_read_all(middle, 1_000)
        .await
        .expect("explain");
    assert!(plan.contains("Index Scan using events_pkey"), "{plan}");
    assert!(!plan.contains("Bitmap"), "{plan}");
    // The same page written as one range condition, as the store read it before.
    let one_range = sqlx::query(sqlx::AssertSqlSafe(format!(
        "EXPLAIN SELECT * FROM {table} WHERE position > {middle}
           AND position < (pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 16)
         ORDER BY position LIMIT 1000"
    )))
    .fetch_all(pg.pool())
    .await
    .expect("explain");
    let one_range: Vec<String> = one_range.iter().map(|r| r.get(0)).collect();
    let old_plan = one_range.join(" / ");
    let old_shape = if old_plan.contains("Bitmap") {
        "a bitmap scan of every later row and a sort"
    } else {
        "an index scan too, here"
    };

    // And the replay itself: every event once, in order, in pages of 1 000.
    let started = Instant::now();
    let (mut after, mut read, mut pages) = (0u64, 0u64, 0u64);
    loop {
        let page = store.read_all(after, 1_000).await.expect("read");
        let Some(last) = page.last() else { break };
        assert!(page.windows(2).all(|w| w[0].position < w[1].position));
        after = last.position;
        read += page.len() as u64;
        pages += 1;
    }
    let took = started.elapsed();
    assert_eq!(read, events);
    assert_eq!(pages, events / 1_000);
    println!(
        "[fault] a never-analyzed log (reltuples {reltuples}, never analyzed: {never_analyzed}): \
         each page an `Index Scan using events_pkey`; {read} events in {pages} pages in \
         {:.2} s ({:.0} k/s); the one-range form is planned as {old_shape} ({})",
        took.as_secs_f64(),
        read as f64 / took.as_secs_f64() / 1e3,
        old_plan.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    pg.drop_schema().await.expect("drop");
}
