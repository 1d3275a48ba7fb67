#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! Read models on PostgreSQL: the processor's unit of work, crashes, live tailing, queries.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{add, fresh, Tally, TallyView};
use cqrs_core::envelope::ExpectedVersion;
use cqrs_core::processor::ErrorPolicy;
use cqrs_core::view::{StoredDoc, UnitOfWork};
use cqrs_core::{
    CommandGateway, DeadLetterStore, Error, EventReader, EventStore, Filter, Order, Query,
    ReadModel, StoreFeed, TrackingProcessor, ViewQuery, ViewStore,
};
use cqrs_testing::CrashBeforeCheckpoint;
use serde_json::json;

async fn seed(gateway: &CommandGateway, streams: u64, each: u64) {
    for round in 0..each {
        for s in 0..streams {
            gateway
                .send(add(&format!("c-{s}"), round + 1))
                .await
                .expect("send");
        }
    }
}

async fn all_views(store: Arc<dyn ViewQuery>) -> Vec<(String, TallyView)> {
    ReadModel::<Tally>::new(store)
        .find(&Query::all())
        .await
        .expect("find")
}

fn assert_once_each(views: &[(String, TallyView)], n: u64) {
    for (id, view) in views {
        assert_eq!(view.versions, (1..=n).collect::<Vec<_>>(), "view `{id}`");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_view_writes_and_checkpoint_then_restart_equals_a_replay() {
    let pg = fresh().await;
    let store = Arc::new(pg.event_store());
    let gateway = CommandGateway::builder(store.clone() as Arc<dyn EventStore>).build();
    seed(&gateway, 6, 15).await;
    let crashing = Arc::new(CrashBeforeCheckpoint::new(pg.view_store(), 2));
    for _ in 0..2 {
        let err = TrackingProcessor::new(Tally, crashing.clone())
            .batch_size(20)
            .catch_up(store.clone())
            .await
            .expect_err("crash");
        assert!(err.to_string().contains("injected crash"), "{err}");
    }
    let checkpoint = pg
        .view_store()
        .checkpoint("tally")
        .await
        .expect("cp")
        .unwrap_or(0);
    let head = store.head().await.expect("head");
    assert!(checkpoint < head, "the views ran ahead of the checkpoint");
    TrackingProcessor::new(Tally, crashing.clone())
        .batch_size(20)
        .catch_up(store.clone())
        .await
        .expect("restart");
    let live = all_views(Arc::new(pg.view_store())).await;
    assert_once_each(&live, 15);

    // A from-scratch replay into a second projection name gives the same views.
    let replay = TrackingProcessor::new(Tally, Arc::new(pg.view_store())).named("tally-replay");
    replay.catch_up(store.clone()).await.expect("replay");
    let replayed = ReadModel::<Tally>::named(Arc::new(pg.view_store()), "tally-replay")
        .find(&Query::all())
        .await
        .expect("find");
    assert_eq!(live, replayed);
    pg.drop_schema().await.expect("drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_stream_restarted_processors_converge_without_double_application() {
    let pg = fresh().await;
    let store = Arc::new(pg.event_store());
    let gateway = CommandGateway::builder(store.clone() as Arc<dyn EventStore>).build();
    seed(&gateway, 5, 20).await;
    let feed = Arc::new(StoreFeed::new(store.clone()));
    for _ in 0..3 {
        let mut handle = TrackingProcessor::new(Tally, Arc::new(pg.view_store()))
            .batch_size(7)
            .spawn(feed.clone());
        let writer = {
            let gateway = gateway.clone();
            tokio::spawn(async move { seed(&gateway, 5, 4).await })
        };
        handle
            .wait_for(handle.position() + 10, Duration::from_secs(20))
            .await
            .expect("progress");
        handle.abort();
        writer.await.expect("writer");
    }
    // Two processors at once on the same views, to the end.
    let head = store.head().await.expect("head");
    let mut a = TrackingProcessor::new(Tally, Arc::new(pg.view_store()))
        .batch_size(7)
        .spawn(feed.clone());
    let mut b = TrackingProcessor::new(Tally, Arc::new(pg.view_store()))
        .batch_size(7)
        .spawn(feed);
    a.wait_for(head, Duration::from_secs(30))
        .await
        .expect("a caught up");
    b.wait_for(head, Duration::from_secs(30))
        .await
        .expect("b caught up");
    a.stop().await.expect("a");
    b.stop().await.expect("b");
    assert_once_each(&all_views(Arc::new(pg.view_store())).await, 32);
    pg.drop_schema().await.expect("drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_tailing_wakes_on_notify_within_milliseconds() {
    let pg = fresh().await;
    let store = Arc::new(pg.event_store());
    let gateway = CommandGateway::builder(store.clone() as Arc<dyn EventStore>).build();
    // An idle wait of a minute: only a notification can wake it in time.
    let mut handle = TrackingProcessor::new(Tally, Arc::new(pg.view_store()))
        .idle_wait(Duration::from_secs(60))
        .spawn(Arc::new(StoreFeed::new(store.clone())));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut lags = Vec::new();
    for i in 0..20 {
        let committed = gateway.send(add("live", i + 1)).await.expect("send");
        let start = Instant::now();
        handle
            .wait_for(committed[0].position, Duration::from_secs(5))
            .await
            .expect("woken");
        lags.push(start.elapsed());
    }
    lags.sort();
    println!("catch-up lag: median {:?}, max {:?}", lags[10], lags[19]);
    assert!(lags[19] < Duration::from_secs(2), "lag {:?}", lags[19]);
    handle.stop().await.expect("stop");
    pg.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn a_corrupted_payload_row_stops_the_processor_with_its_position_or_is_dead_lettered() {
    let pg = fresh().await;
    let store = Arc::new(pg.event_store());
    let gateway = CommandGateway::builder(store.clone() as Arc<dyn EventStore>).build();
    seed(&gateway, 1, 3).await;
    let second = store.read_stream("c-0", 1).await.expect("read")[0].position;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {}.events SET payload = '{{\"amount\": \"lots\"}}' WHERE position = {second}",
        pg.schema()
    )))
    .execute(pg.pool())
    .await
    .expect("corrupt");
    let err = TrackingProcessor::new(Tally, Arc::new(pg.view_store()))
        .catch_up(store.clone())
        .await
        .expect_err("bad payload");
    match &err {
        Error::Decode { event, .. } => {
            assert_eq!(
                (
                    event.stream_id.as_str(),
                    event.position,
                    event.event_name.as_str()
                ),
                ("c-0", second, "pgtest.Added")
            );
        }
        other => panic!("expected a decode error, got {other}"),
    }
    let views = pg.view_store();
    let processor = TrackingProcessor::new(Tally, Arc::new(views.clone()))
        .error_policy(ErrorPolicy::dead_letter());
    processor
        .catch_up(store.clone())
        .await
        .expect("dead-lettered");
    let dead = views.dead_letters("tally").await.expect("list");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].envelope.position, second);
    assert!(
        dead[0].reason.contains("invalid type"),
        "{}",
        dead[0].reason
    );
    let view = ReadModel::<Tally>::new(Arc::new(views.clone()))
        .get("c-0")
        .await
        .expect("get")
        .expect("view");
    assert_eq!(view.total, 1 + 3, "the others flowed");
    // A retry fails again (the payload is still bad) and keeps it, with the reason.
    let report = processor.retry_dead_letters(&views).await.expect("retry");
    assert!(report.resolved.is_empty());
    assert!(report.failed[0].1.contains("invalid type"), "{report:?}");
    assert_eq!(views.dead_letters("tally").await.expect("list").len(), 1);
    // A unit of work that resolves it removes it in the same transaction.
    views
        .commit(cqrs_core::view::UnitOfWork {
            projection: "tally".into(),
            writes: vec![],
            dead_letters: vec![],
            checkpoint: None,
            resolved: vec![dead[0].envelope.metadata.event_id],
            claim: None,
        })
        .await
        .expect("resolve");
    assert!(views.dead_letters("tally").await.expect("list").is_empty());
    pg.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn views_are_queried_by_filter_sort_and_page_and_stale_writes_are_refused() {
    let pg = fresh().await;
    let views = pg.view_store();
    let doc = |id: &str, view: Option<serde_json::Value>, revision: u64| StoredDoc {
        id: id.into(),
        view,
        applied: [("s".to_owned(), 1u64)].into_iter().collect(),
        position: 1,
        revision,
        parked: Default::default(),
    };
    let work = |writes| UnitOfWork {
        projection: "p".into(),
        writes,
        dead_letters: vec![],
        checkpoint: Some(5),
        resolved: vec![],
        claim: None,
    };
    let people = [
        ("a", "Zed", 5),
        ("b", "Amy", 7),
        ("c", "Kim", 3),
        ("d", "Bob", 7),
    ];
    let writes = people
        .iter()
        .map(|(id, name, n)| {
            doc(
                id,
                Some(json!({"name": name, "n": n, "nested": {"n": n}})),
                0,
            )
        })
        .chain([doc("e", None, 0)])
        .collect();
    views.commit(work(writes)).await.expect("commit");
    let ids = |found: Vec<(String, serde_json::Value)>| {
        found.into_iter().map(|(id, _)| id).collect::<Vec<_>>()
    };
    assert_eq!(
        ids(views.find("p", &Query::all()).await.expect("all")),
        ["a", "b", "c", "d"]
    );
    assert_eq!(
        ids(views
            .find("p", &Query::all().sort("name", Order::Asc))
            .await
            .expect("sorted")),
        ["b", "d", "c", "a"]
    );
    assert_eq!(
        ids(views
            .find("p", &Query::all().sort("n", Order::Desc).skip(1).limit(2))
            .await
            .expect("page")),
        ["d", "a"]
    );
    let filter = Filter::And(vec![
        Filter::Gte("nested.n".into(), json!(5)),
        Filter::Lt("name".into(), json!("Z")),
    ]);
    assert_eq!(
        ids(views
            .find("p", &Query::all().filter(filter))
            .await
            .expect("filter")),
        ["b", "d"]
    );
    assert_eq!(
        views
            .count("p", &Filter::Eq("n".into(), json!(7)))
            .await
            .expect("count"),
        2
    );
    assert_eq!(views.get("p", "e").await.expect("tombstone"), None);
    assert!(views
        .find(
            "p",
            &Query::all().filter(Filter::Eq("a..b".into(), json!(1)))
        )
        .await
        .is_err());
    // Hostile field paths are bound as parameters, never spliced into SQL.
    let hostile = Filter::Eq("name'); DROP TABLE views; --".into(), json!("x"));
    assert!(views
        .find("p", &Query::all().filter(hostile))
        .await
        .expect("harmless")
        .is_empty());
    assert_eq!(views.checkpoint("p").await.expect("cp"), Some(5));

    // A stale revision refuses the whole unit of work.
    let err = views
        .commit(work(vec![
            doc("f", Some(json!({})), 0),
            doc("a", Some(json!({"name": "stale"})), 0),
        ]))
        .await
        .expect_err("stale");
    assert!(matches!(err, Error::ViewConflict { .. }), "{err}");
    assert_eq!(
        views.get("p", "f").await.expect("get"),
        None,
        "nothing of the refused unit was written"
    );
    views
        .commit(work(vec![doc("a", Some(json!({"name": "fresh"})), 1)]))
        .await
        .expect("fresh revision");
    let loaded = views.load("p", &["a".to_owned()]).await.expect("load");
    assert_eq!(
        (loaded[0].revision, loaded[0].view.clone()),
        (2, Some(json!({"name": "fresh"})))
    );
    views.reset("p").await.expect("reset");
    assert!(views
        .find("p", &Query::all())
        .await
        .expect("empty")
        .is_empty());
    assert_eq!(views.checkpoint("p").await.expect("cp"), None);
    let _ = ExpectedVersion::NEW;
    pg.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn the_postgres_view_store_passes_the_view_conformance_suite() {
    let schemas = std::sync::Mutex::new(Vec::new());
    cqrs_testing::view_conformance::run(|| async {
        let pg = fresh().await;
        let store = pg.view_store();
        schemas.lock().unwrap().push(pg);
        store
    })
    .await;
    let schemas = std::mem::take(&mut *schemas.lock().unwrap());
    for pg in schemas {
        pg.drop_schema().await.expect("drop");
    }
}
