#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! The tracking processor: restarts, crashes between writes and checkpoint, duplicate
//! batches, concurrent processors, replays and their hand-over to a bus feed. Poison events,
//! error policies and dead letters are in `failures.rs`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{
    add, assert_each_event_once, replay, seed, views, GrandTotal, GrandTotalView, Tally, TallyView,
};
use cqrs_core::memory::{MemoryCheckpointStore, MemoryEventBus, MemoryEventStore, MemoryViewStore};
use cqrs_core::{
    BusFeed, CommandGateway, EventReader, EventStore, ReadModel, Relay, StoreFeed,
    TrackingProcessor, ViewQuery, ViewStore,
};
use cqrs_testing::CrashBeforeCheckpoint;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_stream_and_restarted_equals_a_replay() {
    let store = Arc::new(MemoryEventStore::new());
    let gateway = CommandGateway::builder(store.clone() as Arc<dyn EventStore>).build();
    seed(&gateway, 10, 30).await;
    let views_store = Arc::new(MemoryViewStore::new());
    let feed = Arc::new(StoreFeed::new(store.clone()));

    // Several lives, each killed at once (abort) somewhere in the middle while writers go on.
    let mut killed_mid_stream = 0;
    for life in 0..4u64 {
        let mut handle = TrackingProcessor::new(Tally::default(), views_store.clone())
            .batch_size(7)
            .spawn(feed.clone());
        let writer = {
            let gateway = gateway.clone();
            tokio::spawn(async move { seed(&gateway, 10, 5).await })
        };
        let target = handle.position() + 20 + life * 13;
        handle
            .wait_for(target.min(store.len() as u64), Duration::from_secs(20))
            .await
            .expect("progress");
        handle.abort();
        writer.await.expect("writer");
        let checkpoint = views_store
            .checkpoint("tally")
            .await
            .expect("checkpoint")
            .unwrap_or(0);
        if checkpoint < store.len() as u64 {
            killed_mid_stream += 1;
        }
    }
    assert!(
        killed_mid_stream >= 2,
        "only {killed_mid_stream} lives were killed mid-stream"
    );

    // The last life runs to the end.
    let mut handle = TrackingProcessor::new(Tally::default(), views_store.clone())
        .batch_size(7)
        .spawn(feed);
    let head = store.len() as u64;
    handle
        .wait_for(head, Duration::from_secs(20))
        .await
        .expect("caught up");
    handle.stop().await.expect("clean stop");

    let live = views(&views_store).await;
    assert_each_event_once(&live, &|_| 30 + 4 * 5);
    assert_eq!(
        live,
        replay(store).await,
        "the restarted read model equals a from-scratch replay"
    );
}

#[tokio::test]
async fn a_crash_between_view_writes_and_checkpoint_applies_nothing_twice() {
    let store = Arc::new(MemoryEventStore::new());
    let gateway = CommandGateway::builder(store.clone()).build();
    seed(&gateway, 5, 20).await;
    let inner = Arc::new(MemoryViewStore::new());
    let crashing = Arc::new(CrashBeforeCheckpoint::new(inner.clone(), 3));
    for _ in 0..3 {
        let err = TrackingProcessor::new(Tally::default(), crashing.clone())
            .batch_size(16)
            .catch_up(store.clone())
            .await
            .expect_err("the injected crash stops the processor");
        assert!(err.to_string().contains("injected crash"), "{err}");
    }
    // The views ran ahead of the checkpoint three times; the restart re-reads those batches.
    let checkpoint = inner.checkpoint("tally").await.expect("cp").unwrap_or(0);
    assert!(checkpoint < store.len() as u64);
    TrackingProcessor::new(Tally::default(), crashing.clone())
        .batch_size(16)
        .catch_up(store.clone())
        .await
        .expect("restart");
    let live = views(&inner).await;
    assert_each_event_once(&live, &|_| 20);
    assert_eq!(live, replay(store).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_fed_processor_restarts_from_committed_offsets() {
    let store = Arc::new(MemoryEventStore::new());
    let gateway = CommandGateway::builder(store.clone()).build();
    let bus = Arc::new(MemoryEventBus::new(3));
    let mut relay = Relay::new(
        "relay",
        store.clone(),
        bus.clone(),
        Arc::new(MemoryCheckpointStore::new()),
    )
    .batch_size(10)
    .spawn();
    let views_store = Arc::new(MemoryViewStore::new());
    let feed = Arc::new(BusFeed::new(bus.clone(), "tally-group", ["counter"]));
    seed(&gateway, 6, 10).await;
    for _ in 0..3 {
        let handle = TrackingProcessor::new(Tally::default(), views_store.clone())
            .batch_size(5)
            .spawn(feed.clone());
        seed(&gateway, 6, 3).await;
        let seen = handle.position();
        tokio::time::timeout(
            Duration::from_secs(10),
            handle.watch_position().wait_for(|p| *p > seen),
        )
        .await
        .expect("progress")
        .expect("running");
        handle.abort();
    }
    let head = store.len() as u64;
    relay
        .wait_for(head, Duration::from_secs(10))
        .await
        .expect("relay");
    let handle = TrackingProcessor::new(Tally::default(), views_store.clone())
        .batch_size(5)
        .spawn(feed);
    // A bus has no global checkpoint (earlier lives may have done the tail already): wait
    // until every view is complete.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let live = views(&views_store).await;
        if live.len() == 6 && live.iter().all(|(_, v)| v.versions.len() == 19) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "views did not converge: {live:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    handle.stop().await.expect("stop");
    relay.stop().await.expect("relay stop");
    let live = views(&views_store).await;
    assert_each_event_once(&live, &|_| 19);
    assert_eq!(live, replay(store).await);
}

#[tokio::test]
async fn reset_and_replay_rebuilds_the_same_views() {
    let store = Arc::new(MemoryEventStore::new());
    let gateway = CommandGateway::builder(store.clone()).build();
    seed(&gateway, 4, 10).await;
    let views_store = Arc::new(MemoryViewStore::new());
    let processor = TrackingProcessor::new(Tally::default(), views_store.clone());
    assert_eq!(processor.catch_up(store.clone()).await.expect("first"), 40);
    let before = views(&views_store).await;
    assert_eq!(
        processor
            .catch_up(store.clone())
            .await
            .expect("nothing new"),
        0
    );
    processor.reset().await.expect("reset");
    assert!(views(&views_store).await.is_empty());
    assert_eq!(views_store.checkpoint("tally").await.expect("cp"), None);
    assert_eq!(processor.catch_up(store.clone()).await.expect("replay"), 40);
    assert_eq!(views(&views_store).await, before);
}

#[tokio::test]
async fn a_duplicate_batch_changes_nothing() {
    use cqrs_core::processor::Batch;
    let store = Arc::new(MemoryEventStore::new());
    let gateway = CommandGateway::builder(store.clone()).build();
    seed(&gateway, 3, 4).await;
    let events = store.read_all(0, 100).await.expect("read");
    // From the global log (one position per view) and from a bus (a version per stream).
    for (mode, make) in [
        (
            "log",
            Batch::from_log as fn(Vec<cqrs_core::Envelope>) -> Batch,
        ),
        ("bus", Batch::from_bus),
    ] {
        let views_store = Arc::new(MemoryViewStore::new());
        // No cache: every batch reads the views back from the store.
        let processor = TrackingProcessor::new(Tally::default(), views_store.clone()).view_cache(0);
        assert_eq!(
            processor
                .process(&make(events.clone()))
                .await
                .expect("first"),
            12,
            "{mode}"
        );
        let once = views(&views_store).await;
        assert_eq!(
            processor
                .process(&make(events.clone()))
                .await
                .expect("again"),
            0,
            "{mode}: nothing is applied twice"
        );
        // Even a redelivered older prefix is recognised.
        assert_eq!(
            processor
                .process(&make(events[..5].to_vec()))
                .await
                .expect("prefix"),
            0,
            "{mode}"
        );
        assert_eq!(views(&views_store).await, once, "{mode}");
    }
}

#[tokio::test]
async fn the_processor_wakes_on_new_events_without_polling() {
    let store = Arc::new(MemoryEventStore::new());
    let gateway = CommandGateway::builder(store.clone()).build();
    let views_store = Arc::new(MemoryViewStore::new());
    // A long idle wait: only a wake-up, not a poll, can deliver within the deadline below.
    let mut handle = TrackingProcessor::new(Tally::default(), views_store.clone())
        .idle_wait(Duration::from_secs(30))
        .spawn(Arc::new(StoreFeed::new(store.clone())));
    tokio::time::sleep(Duration::from_millis(50)).await;
    gateway.send(add("w", 5)).await.expect("send");
    handle
        .wait_for(1, Duration::from_secs(5))
        .await
        .expect("woken by the append");
    handle.stop().await.expect("stop");
}

async fn grand_total(store: &Arc<MemoryViewStore>) -> Option<GrandTotalView> {
    ReadModel::<GrandTotal>::new(store.clone() as Arc<dyn ViewQuery>)
        .get("all")
        .await
        .expect("get")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processors_racing_on_the_same_views_lose_nothing() {
    let store = Arc::new(MemoryEventStore::new());
    let gateway = CommandGateway::builder(store.clone()).build();
    let views_store = Arc::new(MemoryViewStore::new());
    let feed = Arc::new(StoreFeed::new(store.clone()));
    let spawn = || {
        TrackingProcessor::new(GrandTotal, views_store.clone())
            .batch_size(3)
            .spawn(feed.clone())
    };
    let (mut a, mut b) = (spawn(), spawn());
    seed(&gateway, 8, 25).await;
    let head = store.len() as u64;
    a.wait_for(head, Duration::from_secs(10)).await.expect("a");
    b.wait_for(head, Duration::from_secs(10)).await.expect("b");
    a.stop().await.expect("a stop");
    b.stop().await.expect("b stop");
    let view = grand_total(&views_store).await.expect("view");
    assert_eq!(
        view.events, 200,
        "every event counted once despite two writers of one view"
    );
    assert_eq!(view.total, 8 * (1..=25).sum::<u64>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_members_on_different_partitions_share_one_view_safely() {
    let store = Arc::new(MemoryEventStore::new());
    let gateway = CommandGateway::builder(store.clone()).build();
    let bus = Arc::new(MemoryEventBus::new(4));
    let relay = Relay::new(
        "relay",
        store.clone(),
        bus.clone(),
        Arc::new(MemoryCheckpointStore::new()),
    )
    .spawn();
    let views_store = Arc::new(MemoryViewStore::new());
    let feed = Arc::new(BusFeed::new(bus.clone(), "totals", ["counter"]));
    let spawn = || {
        TrackingProcessor::new(GrandTotal, views_store.clone())
            .batch_size(4)
            .spawn(feed.clone())
    };
    let (a, b) = (spawn(), spawn());
    seed(&gateway, 12, 20).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while grand_total(&views_store).await.map_or(0, |v| v.events) < 240 {
        assert!(
            std::time::Instant::now() < deadline,
            "did not converge: {:?}",
            grand_total(&views_store).await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.stop().await.expect("a");
    b.stop().await.expect("b");
    relay.stop().await.expect("relay");
    let view = grand_total(&views_store).await.expect("view");
    assert_eq!(view.events, 240);
    assert_eq!(view.total, 12 * (1..=20).sum::<u64>());
}

/// A projection that lives on a bus is rebuilt from the store, then the bus feed takes the
/// views over again from its older committed offsets: nothing may be applied twice.
async fn replay_then_bus_takeover(track_streams: bool) -> Vec<(String, TallyView)> {
    let store = Arc::new(MemoryEventStore::new());
    let gateway = CommandGateway::builder(store.clone()).build();
    let bus = Arc::new(MemoryEventBus::new(3));
    let relay = Relay::new(
        "relay",
        store.clone(),
        bus.clone(),
        Arc::new(MemoryCheckpointStore::new()),
    );
    let views_store = Arc::new(MemoryViewStore::new());
    let feed = Arc::new(BusFeed::new(bus.clone(), "tally-group", ["counter"]));
    seed(&gateway, 4, 5).await;
    relay.publish_pending().await.expect("publish");
    // The live consumer gets part of the way, then stops with its offsets behind the head.
    let live = TrackingProcessor::new(Tally::default(), views_store.clone())
        .batch_size(3)
        .spawn(feed.clone());
    tokio::time::timeout(
        Duration::from_secs(10),
        live.watch_position().wait_for(|p| *p >= 1),
    )
    .await
    .expect("progress")
    .expect("running");
    live.stop().await.expect("stop");
    seed(&gateway, 4, 2).await;
    relay.publish_pending().await.expect("publish");

    // The replay from the store, the source of truth.
    let mut replay = TrackingProcessor::new(Tally::default(), views_store.clone());
    if track_streams {
        replay = replay.track_stream_versions();
    }
    replay.reset().await.expect("reset");
    replay.catch_up(store.clone()).await.expect("replay");

    // The bus feed takes over from its committed offsets (behind what the replay applied).
    seed(&gateway, 4, 1).await;
    relay.publish_pending().await.expect("publish");
    let handle = TrackingProcessor::new(Tally::default(), views_store.clone()).spawn(feed);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = views(&views_store).await;
        let applied: usize = now.iter().map(|(_, v)| v.versions.len()).sum();
        if applied >= store.len() || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Give a wrong implementation the time to apply its duplicates.
    tokio::time::sleep(Duration::from_millis(200)).await;
    handle.stop().await.expect("stop");
    views(&views_store).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_tracking_stream_versions_hands_over_to_a_bus_feed() {
    let views = replay_then_bus_takeover(true).await;
    assert_eq!(views.len(), 4);
    assert_each_event_once(&views, &|_| 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_by_position_alone_cannot_hand_over_to_a_bus_feed() {
    // Without stream versions the bus feed cannot tell what the replay applied: this is why
    // `track_stream_versions` exists.
    let views = replay_then_bus_takeover(false).await;
    assert!(
        views.iter().any(|(_, v)| v.versions.len() > 8),
        "the bus feed applied nothing twice: {views:?}"
    );
}

#[tokio::test]
async fn catch_up_reports_progress_up_to_the_head() {
    let store = Arc::new(MemoryEventStore::new());
    let gateway = CommandGateway::builder(store.clone()).build();
    seed(&gateway, 5, 10).await;
    let mut reports = Vec::new();
    let read = TrackingProcessor::new(Tally::default(), Arc::new(MemoryViewStore::new()))
        .batch_size(7)
        .catch_up_with_progress(store.clone(), |p| reports.push(p))
        .await
        .expect("catch up");
    assert_eq!(read, 50);
    // One report at the start, one per batch of 7.
    assert_eq!(reports.len(), 1 + 8);
    assert_eq!(reports[0].events, 0);
    assert!(reports.windows(2).all(|w| w[0].events < w[1].events));
    let last = reports.last().expect("reports");
    assert_eq!((last.events, last.position, last.target), (50, 50, 50));
    assert!((last.fraction() - 1.0).abs() < f64::EPSILON);
    assert!(reports[1].fraction() > 0.0 && reports[1].fraction() < 1.0);
}
