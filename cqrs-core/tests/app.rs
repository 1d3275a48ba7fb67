#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! The app builder: a whole service in one builder, mis-wirings refused, health, shutdown.

mod common;

use std::time::Duration;

use common::{add, GrandTotal, GrandTotalView, Tally, TallyView};
use cqrs_core::app::{Backend, Status, Wiring};
use cqrs_core::memory::{MemoryCheckpointStore, MemoryEventBus, MemoryEventStore};
use cqrs_core::processor::ErrorPolicy;
use cqrs_core::{App, Error};

fn config_error(built: Result<App, Error>) -> String {
    match built {
        Err(Error::Config(message)) => message,
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

/// A store that outlives the process (as PostgreSQL's does), without a checkpoint store.
struct DurableStoreOnly;
impl Backend for DurableStoreOnly {
    fn install(self, wiring: &mut Wiring) {
        wiring.event_store(MemoryEventStore::new());
    }
}

#[tokio::test]
async fn a_mis_wired_app_is_a_typed_error_at_build() {
    let no_bus = App::builder()
        .projection(Tally::default(), |p| p.from_bus("g", ["counter"]))
        .build();
    assert!(
        config_error(no_bus).contains("has none"),
        "bus-fed projection"
    );
    let relay_no_bus = App::builder().relay("r", |r| r).build();
    assert!(config_error(relay_no_bus).contains("relay `r`"));
    let twice = App::builder()
        .projection(Tally::default(), |p| p)
        .projection(Tally::default(), |p| p)
        .build();
    assert!(config_error(twice).contains("two projections are named `tally`"));
    let two_relays = App::builder()
        .with(MemoryEventBus::new(1))
        .relay("r", |r| r)
        .relay("r", |r| r.only(["counter"]))
        .build();
    assert!(config_error(two_relays).contains("two relays"));
    let empty_only = App::builder()
        .with(MemoryEventBus::new(1))
        .relay("r", |r| r.only(Vec::<String>::new()))
        .build();
    assert!(config_error(empty_only).contains("names no aggregate type"));
    let segmented_bus = App::builder()
        .with(MemoryEventBus::new(1))
        .projection(Tally::default(), |p| {
            p.from_bus("g", ["counter"]).segments(2)
        })
        .build();
    assert!(config_error(segmented_bus).contains("segments on a bus feed"));
    let forgetful = App::builder()
        .with(DurableStoreOnly)
        .with(MemoryEventBus::new(1))
        .relay("r", |r| r)
        .build();
    assert!(config_error(forgetful).contains("checkpoint in memory"));
    // Durable checkpoints over a log in memory: after a restart they would skip the new log.
    struct Checkpoints;
    impl Backend for Checkpoints {
        fn install(self, wiring: &mut Wiring) {
            wiring.checkpoint_store(MemoryCheckpointStore::new());
        }
    }
    let skipping = App::builder()
        .with(Checkpoints)
        .with(MemoryEventBus::new(1))
        .relay("r", |r| r)
        .build();
    assert!(config_error(skipping).contains("log in memory"));
    // Embedded checkpoints handed over after durable ones are embedded again.
    let replaced = App::builder()
        .with(DurableStoreOnly)
        .with(Checkpoints)
        .with(std::sync::Arc::new(MemoryCheckpointStore::new()))
        .with(MemoryEventBus::new(1))
        .relay("r", |r| r)
        .build();
    assert!(config_error(replaced).contains("checkpoint in memory"));
    // Both durable is fine.
    App::builder()
        .with(DurableStoreOnly)
        .with(Checkpoints)
        .with(MemoryEventBus::new(1))
        .relay("r", |r| r)
        .build()
        .expect("wired")
        .shutdown()
        .await
        .expect("shutdown");
}

/// A store-fed projection in segments, wired by the builder: one instance holds them all,
/// catches up, and shuts down cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_runs_in_segments_from_the_builder() {
    let mut app = App::builder()
        .projection(Tally::default(), |p| {
            p.segments(3).segment_lease(Duration::from_millis(300))
        })
        .build()
        .expect("build");
    for i in 0..30u64 {
        app.gateway()
            .send(add(&format!("c-{}", i % 6), i + 1))
            .await
            .expect("send");
    }
    app.caught_up(Duration::from_secs(10))
        .await
        .expect("caught up");
    let tally = app.read_model::<Tally>().expect("tally");
    let all = tally.find(&cqrs_core::Query::all()).await.expect("find");
    assert_eq!(all.len(), 6);
    assert!(
        all.iter().all(|(_, v)| v.versions == [1, 2, 3, 4, 5]),
        "{all:?}"
    );
    let health = app.health().await;
    assert_eq!(
        health.processors[0].segments,
        Some(vec![0, 1, 2]),
        "{health:?}"
    );
    assert_eq!(health.processors[0].lag, Some(0));
    app.shutdown().await.expect("shutdown");
}

/// One builder: a relay to a bus, a projection on the bus and one on the store; commands
/// through the gateway; a wait for everything committed; typed read models; health; shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_builder_runs_a_whole_service() {
    let mut app = App::builder()
        .with(MemoryEventBus::new(3))
        .relay("relay", |r| r.only(["counter"]))
        .projection(Tally::default(), |p| {
            p.from_bus("tally", ["counter"]).batch_size(7)
        })
        .projection(GrandTotal, |p| p.batch_size(5))
        .build()
        .expect("build");
    for i in 0..30u64 {
        app.gateway()
            .send(add(&format!("c-{}", i % 6), i + 1))
            .await
            .expect("send");
    }
    app.caught_up(Duration::from_secs(10))
        .await
        .expect("caught up");
    let tally = app.read_model::<Tally>().expect("tally");
    let c0 = tally.get("c-0").await.expect("get").expect("c-0");
    assert_eq!(
        c0,
        TallyView {
            total: 1 + 7 + 13 + 19 + 25,
            versions: vec![1, 2, 3, 4, 5]
        }
    );
    let grand = app.read_model::<GrandTotal>().expect("grand");
    assert_eq!(
        grand.get("all").await.expect("get"),
        Some(GrandTotalView {
            total: (1..=30).sum(),
            events: 30
        })
    );
    let health = app.health().await;
    assert_eq!(health.status, Status::Ok, "{health:?}");
    assert_eq!(health.relays[0].position, 30);
    let store_fed = health
        .processors
        .iter()
        .find(|p| p.name == "grand-total")
        .expect("grand-total");
    assert_eq!((store_fed.feed.as_str(), store_fed.lag), ("store", Some(0)));
    assert_eq!(
        health.processors[0].lag, None,
        "a bus feed has no one order"
    );
    struct Unknown;
    impl cqrs_core::Projection for Unknown {
        const NAME: &'static str = "unknown";
        type Event = common::Added;
        type View = u64;
        fn view_id(&self, _: &common::Added, _: &cqrs_core::Envelope) -> String {
            String::new()
        }
        fn apply(
            &self,
            _: &mut Option<u64>,
            _: &common::Added,
            _: &cqrs_core::Envelope,
        ) -> Result<(), cqrs_core::BoxError> {
            Ok(())
        }
    }
    assert!(matches!(app.read_model::<Unknown>(), Err(Error::Config(_))));
    app.shutdown().await.expect("a clean shutdown");
}

/// A processor that stops turns the health to degraded with its reason, and the shutdown
/// returns the error it ended with.
#[tokio::test]
async fn a_stopped_processor_degrades_health_and_its_error_comes_back_from_shutdown() {
    let app = App::builder()
        .projection(Tally { fail_on: Some(3) }, |p| {
            p.error_policy(ErrorPolicy::stop())
                .idle_wait(Duration::from_millis(20))
        })
        .build()
        .expect("build");
    app.gateway().send(add("c", 3)).await.expect("send");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let health = loop {
        let health = app.health().await;
        if health.status == Status::Degraded {
            break health;
        }
        assert!(tokio::time::Instant::now() < deadline, "still {health:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let why = health.processors[0].stopped.clone().expect("a reason");
    assert!(why.contains("refusing amount 3"), "{why}");
    let ended = app.shutdown().await.expect_err("the processor's error");
    assert!(ended.to_string().contains("refusing amount 3"), "{ended}");
}

/// Views a backend offers beside its store (as PostgreSQL does).
struct OffersViews(std::sync::Arc<cqrs_core::memory::MemoryViewStore>);
impl Backend for OffersViews {
    fn install(self, wiring: &mut Wiring) {
        wiring.offer_view_store(self.0);
    }
}

/// Checkpoints a backend offers for a durable log (as MongoDB does).
struct OffersCheckpoints;
impl Backend for OffersCheckpoints {
    fn install(self, wiring: &mut Wiring) {
        wiring.offer_checkpoint_store(MemoryCheckpointStore::new());
    }
}

fn marked(name: &str) -> std::sync::Arc<cqrs_core::memory::MemoryViewStore> {
    let store = std::sync::Arc::new(cqrs_core::memory::MemoryViewStore::new());
    store.put_document(
        "mark",
        cqrs_core::view::StoredDoc {
            id: "which".into(),
            view: Some(serde_json::json!(name)),
            applied: Default::default(),
            position: 0,
            revision: 1,
            parked: Default::default(),
        },
    );
    store
}

async fn which_views(app: &App) -> serde_json::Value {
    let docs = app
        .views()
        .store
        .load("mark", &["which".to_owned()])
        .await
        .expect("load");
    docs[0].view.clone().expect("a mark")
}

#[tokio::test]
async fn the_order_of_the_backends_does_not_change_the_wiring() {
    // `.with(mongo).with(postgres)` put the views in PostgreSQL, `.with(postgres).with(mongo)`
    // in MongoDB: a backend for views wins over one that only offers them, in either order.
    let first = App::builder()
        .with(OffersViews(marked("offered")))
        .with(marked("chosen"))
        .build()
        .expect("build");
    let second = App::builder()
        .with(marked("chosen"))
        .with(OffersViews(marked("offered")))
        .build()
        .expect("build");
    assert_eq!(which_views(&first).await, "chosen");
    assert_eq!(which_views(&second).await, "chosen");
    // Offered alone, the offer is taken.
    let alone = App::builder()
        .with(OffersViews(marked("offered")))
        .build()
        .expect("build");
    assert_eq!(which_views(&alone).await, "offered");
    // Checkpoints offered for a durable log: taken whether the log comes before or after.
    for app in [
        App::builder()
            .with(OffersCheckpoints)
            .with(DurableStoreOnly),
        App::builder()
            .with(DurableStoreOnly)
            .with(OffersCheckpoints),
    ] {
        app.with(MemoryEventBus::new(2))
            .relay("r", |r| r)
            .build()
            .expect("a relay with the offered checkpoints")
            .shutdown()
            .await
            .expect("shutdown");
    }
    // ... and not over a log in memory, where they would skip the new log after a restart
    // (taken, the build would refuse a durable checkpoint of a log in memory).
    App::builder()
        .with(OffersCheckpoints)
        .with(MemoryEventBus::new(2))
        .relay("r", |r| r)
        .build()
        .expect("offered checkpoints left alone over a log in memory")
        .shutdown()
        .await
        .expect("shutdown");
}

/// Counts the commands it sees.
struct Counted(std::sync::Arc<std::sync::atomic::AtomicU64>);

#[async_trait::async_trait]
impl cqrs_core::Middleware for Counted {
    async fn before(
        &self,
        _: &mut cqrs_core::gateway::CommandContext<'_>,
    ) -> std::result::Result<(), String> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test]
async fn gateway_calls_compose() {
    // Two crates (say tracing, then authorization) each tune the gateway: before, the second
    // call replaced the first, dropping its middleware without a word.
    let (first, second) = (
        std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)),
        std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)),
    );
    let (a, b) = (first.clone(), second.clone());
    let app = App::builder()
        .gateway(move |g| g.middleware(Counted(a)))
        .gateway(move |g| g.middleware(Counted(b)))
        .build()
        .expect("build");
    app.gateway().send(add("c", 1)).await.expect("send");
    app.gateway().send(add("c", 2)).await.expect("send");
    assert_eq!(first.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(second.load(std::sync::atomic::Ordering::SeqCst), 2);
    app.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_projection_is_found_by_its_type() {
    // Before, `read_model::<GrandTotal>()` looked for `GrandTotal::NAME` only: a projection
    // run under another name (a new version beside the old, say) could not be read.
    let mut app = App::builder()
        .projection(GrandTotal, |p| p.named("grand_v2"))
        .build()
        .expect("build");
    app.gateway().send(add("c", 4)).await.expect("send");
    app.caught_up(Duration::from_secs(10))
        .await
        .expect("caught up");
    let grand = app.read_model::<GrandTotal>().expect("found by its type");
    assert_eq!(
        grand.get("all").await.expect("get"),
        Some(GrandTotalView {
            total: 4,
            events: 1
        })
    );
    assert!(app.read_model_named::<GrandTotal>("grand_v2").is_ok());
    let wrong = app.read_model_named::<GrandTotal>("grand_v3");
    assert!(
        matches!(wrong, Err(Error::Config(ref m)) if m.contains("grand_v3")),
        "{wrong:?}"
    );
    app.shutdown().await.expect("shutdown");

    // Under two names, the type alone does not say which: the error names both.
    let app = App::builder()
        .projection(GrandTotal, |p| p.named("grand_a"))
        .projection(GrandTotal, |p| p.named("grand_b"))
        .build()
        .expect("build");
    let ambiguous = app.read_model::<GrandTotal>();
    assert!(
        matches!(ambiguous, Err(Error::Config(ref m)) if m.contains("grand_a, grand_b")),
        "{ambiguous:?}"
    );
    assert!(app.read_model_named::<GrandTotal>("grand_b").is_ok());
    app.shutdown().await.expect("shutdown");
}

/// A new version of `GrandTotal` under the same name, counting events only.
struct GrandTotalV2;
impl cqrs_core::Projection for GrandTotalV2 {
    const NAME: &'static str = "grand-total";
    type Event = common::CounterEvent;
    type View = GrandTotalView;
    fn view_id(&self, _: &common::CounterEvent, _: &cqrs_core::Envelope) -> String {
        "all".to_owned()
    }
    fn apply(
        &self,
        view: &mut Option<GrandTotalView>,
        _: &common::CounterEvent,
        _: &cqrs_core::Envelope,
    ) -> Result<(), cqrs_core::BoxError> {
        view.get_or_insert_with(GrandTotalView::default).events += 1;
        Ok(())
    }
}

#[tokio::test]
async fn an_old_version_renamed_beside_a_new_one_is_read_as_itself() {
    // The old version runs renamed beside the new one, which has the old name: the old type
    // reads its own views, not the new one's.
    let app = App::builder()
        .projection(GrandTotal, |p| p.named("grand-total-old"))
        .projection(GrandTotalV2, |p| p)
        .build()
        .expect("build");
    let old = app.read_model::<GrandTotal>().expect("the old version");
    assert_eq!(old.name(), "grand-total-old");
    let new = app.read_model::<GrandTotalV2>().expect("the new version");
    assert_eq!(new.name(), "grand-total");
    app.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn offered_checkpoints_never_replace_given_ones() {
    // Embedded checkpoints given on purpose over a durable log: the offer does not take their
    // place, so the build refuses the relay as before rather than quietly using the offer.
    let refused = App::builder()
        .with(DurableStoreOnly)
        .with(OffersCheckpoints)
        .with(std::sync::Arc::new(MemoryCheckpointStore::new()))
        .with(MemoryEventBus::new(2))
        .relay("r", |r| r)
        .build();
    assert!(config_error(refused).contains("checkpoint in memory"));
}
