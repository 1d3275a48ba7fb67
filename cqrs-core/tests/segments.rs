#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! A store-fed projection run in segments by several instances on one view store: they share
//! the segments, never conflict on a view, take over a dead instance's segments after its
//! lease, and an instance paused past its lease cannot commit.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::{assert_each_event_once, replay, seed, views, Tally};
use cqrs_core::memory::{MemoryEventStore, MemoryViewStore};
use cqrs_core::segment::{Claim, Claimed, Segment, SegmentClaims};
use cqrs_core::view::{StoredDoc, UnitOfWork};
use cqrs_core::{
    processor::ProcessorHandle, CommandGateway, Error, EventReader, Result, StoreFeed,
    TrackingProcessor, ViewStore,
};
use tokio::sync::watch;
use uuid::Uuid;

const LEASE: Duration = Duration::from_millis(400);
const SEGMENTS: u32 = 4;

/// The shared store as one instance sees it: counts the view conflicts and lost claims its
/// commits meet, and can be paused (every call waits, as in a process that stopped).
struct Instance {
    inner: Arc<MemoryViewStore>,
    conflicts: AtomicU64,
    lost: AtomicU64,
    paused: watch::Sender<bool>,
    /// Releases still to fail, as a transient backend error would.
    failing_releases: AtomicU64,
}

impl Instance {
    fn new(inner: &Arc<MemoryViewStore>) -> Arc<Self> {
        Arc::new(Instance {
            inner: inner.clone(),
            conflicts: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            paused: watch::Sender::new(false),
            failing_releases: AtomicU64::new(0),
        })
    }

    async fn wait_while_paused(&self) {
        let mut paused = self.paused.subscribe();
        let _ = paused.wait_for(|p| !*p).await;
    }
}

#[async_trait]
impl ViewStore for Instance {
    async fn load(&self, projection: &str, ids: &[String]) -> Result<Vec<StoredDoc>> {
        self.wait_while_paused().await;
        self.inner.load(projection, ids).await
    }
    async fn commit(&self, work: UnitOfWork) -> Result<()> {
        self.wait_while_paused().await;
        let outcome = self.inner.commit(work).await;
        match &outcome {
            Err(Error::ViewConflict { .. }) => self.conflicts.fetch_add(1, Ordering::SeqCst),
            Err(Error::ClaimLost { .. }) => self.lost.fetch_add(1, Ordering::SeqCst),
            _ => 0,
        };
        outcome
    }
    async fn checkpoint(&self, projection: &str) -> Result<Option<u64>> {
        self.inner.checkpoint(projection).await
    }
    async fn reset(&self, projection: &str) -> Result<()> {
        self.inner.reset(projection).await
    }
    fn claims(&self) -> Option<&dyn SegmentClaims> {
        Some(self)
    }
}

#[async_trait]
impl SegmentClaims for Instance {
    async fn heartbeat(&self, projection: &str, owner: Uuid, lease: Duration) -> Result<u32> {
        self.wait_while_paused().await;
        self.inner.heartbeat(projection, owner, lease).await
    }
    async fn claim(
        &self,
        projection: &str,
        segment: Segment,
        owner: Uuid,
        lease: Duration,
    ) -> Result<Option<Claimed>> {
        self.wait_while_paused().await;
        self.inner.claim(projection, segment, owner, lease).await
    }
    async fn renew(&self, projection: &str, claim: &Claim, lease: Duration) -> Result<bool> {
        self.wait_while_paused().await;
        self.inner.renew(projection, claim, lease).await
    }
    async fn release(&self, projection: &str, claim: &Claim) -> Result<()> {
        self.wait_while_paused().await;
        let failing = self
            .failing_releases
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if failing.is_ok() {
            return Err(Error::Backend {
                backend: "memory",
                message: "releasing a segment: connection reset".into(),
                source: None,
            });
        }
        self.inner.release(projection, claim).await
    }
}

fn start(store: &Arc<MemoryEventStore>, instance: &Arc<Instance>) -> ProcessorHandle {
    start_with(store, instance, SEGMENTS)
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every view has every event of its stream (20 s at most).
async fn caught_up(store: &Arc<MemoryEventStore>, views_store: &Arc<MemoryViewStore>) {
    let expected = replay(store.clone()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if views(views_store).await == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the views never equalled a replay"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_the_segments_without_conflicts_and_take_over_a_dead_one() {
    let store = Arc::new(MemoryEventStore::new());
    let gateway = CommandGateway::builder(store.clone()).build();
    let shared = Arc::new(MemoryViewStore::new());
    seed(&gateway, 40, 3).await;
    let (a, b) = (Instance::new(&shared), Instance::new(&shared));
    let first = start(&store, &a);
    until("the first instance holds every segment", || {
        first.held_segments().len() == 4
    })
    .await;
    let second = start(&store, &b);
    until("the two share the segments two and two", || {
        first.held_segments().len() == 2 && second.held_segments().len() == 2
    })
    .await;
    let mut all = first.held_segments();
    all.extend(second.held_segments());
    all.sort_unstable();
    assert_eq!(all, [0, 1, 2, 3], "each segment held once");

    seed(&gateway, 40, 4).await;
    caught_up(&store, &shared).await;
    assert_each_event_once(&views(&shared).await, &|_| 7);
    assert_eq!(
        a.conflicts.load(Ordering::SeqCst),
        0,
        "no view conflict on the first"
    );
    assert_eq!(
        b.conflicts.load(Ordering::SeqCst),
        0,
        "no view conflict on the second"
    );
    let head = store.head().await.unwrap();
    until("both positions reach the head", || {
        first.position() == head && second.position() == head
    })
    .await;

    // The first dies without a word: the second takes its segments once their lease ran out.
    first.abort();
    seed(&gateway, 40, 2).await;
    until("the survivor holds every segment", || {
        second.held_segments().len() == 4
    })
    .await;
    caught_up(&store, &shared).await;
    assert_each_event_once(&views(&shared).await, &|_| 9);
    assert_eq!(b.conflicts.load(Ordering::SeqCst), 0);
    second.stop().await.expect("a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_paused_past_its_lease_cannot_commit_and_rejoins() {
    let store = Arc::new(MemoryEventStore::new());
    let gateway = CommandGateway::builder(store.clone()).build();
    let shared = Arc::new(MemoryViewStore::new());
    seed(&gateway, 40, 2).await;
    let (a, b) = (Instance::new(&shared), Instance::new(&shared));
    let first = start(&store, &a);
    until("the first instance holds every segment", || {
        first.held_segments().len() == 4
    })
    .await;
    // Paused in the middle of its work: its loads, commits and renewals wait.
    a.paused.send_replace(true);
    seed(&gateway, 40, 3).await;
    let second = start(&store, &b);
    until("the second takes every segment after the lease", || {
        second.held_segments().len() == 4
    })
    .await;
    caught_up(&store, &shared).await;
    // The first wakes up with batches folded under claims it no longer holds.
    a.paused.send_replace(false);
    until("the paused instance's commits are refused", || {
        a.lost.load(Ordering::SeqCst) > 0
    })
    .await;
    until("the two share the segments again", || {
        first.held_segments().len() == 2 && second.held_segments().len() == 2
    })
    .await;
    seed(&gateway, 40, 1).await;
    caught_up(&store, &shared).await;
    assert_each_event_once(&views(&shared).await, &|_| 6);
    assert_eq!(b.conflicts.load(Ordering::SeqCst), 0);
    assert!(
        !first.is_finished(),
        "a lost claim does not end the processor"
    );
    first.stop().await.expect("a clean stop");
    second.stop().await.expect("a clean stop");
}

/// Giving a segment back fails once (a transient error): the instance keeps its other
/// segments and keeps running; the one it could not release is free after its lease, and the
/// newcomer takes it. (Before the fix the failed release ended the first instance for good and
/// the second took all four.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_release_lets_the_segment_go_after_its_lease_and_ends_nothing() {
    let store = Arc::new(MemoryEventStore::new());
    let gateway = CommandGateway::builder(store.clone()).build();
    let shared = Arc::new(MemoryViewStore::new());
    seed(&gateway, 40, 2).await;
    let (a, b) = (Instance::new(&shared), Instance::new(&shared));
    let first = start(&store, &a);
    until("the first instance holds every segment", || {
        first.held_segments().len() == 4
    })
    .await;
    a.failing_releases.store(1, Ordering::SeqCst);
    let second = start(&store, &b);
    until("the two share the segments two and two", || {
        first.held_segments().len() == 2 && second.held_segments().len() == 2
    })
    .await;
    assert_eq!(
        a.failing_releases.load(Ordering::SeqCst),
        0,
        "a release failed"
    );
    assert!(!first.is_finished(), "a failed release ended the processor");
    seed(&gateway, 40, 2).await;
    caught_up(&store, &shared).await;
    assert_each_event_once(&views(&shared).await, &|_| 4);
    // Still two and two: the first neither ended nor took everything back.
    assert_eq!(first.held_segments().len(), 2);
    assert_eq!(second.held_segments().len(), 2);
    first.stop().await.expect("a clean stop");
    second.stop().await.expect("a clean stop");
}

fn start_with(
    store: &Arc<MemoryEventStore>,
    instance: &Arc<Instance>,
    segments: u32,
) -> ProcessorHandle {
    TrackingProcessor::new(Tally::default(), instance.clone())
        .batch_size(7)
        .idle_wait(Duration::from_millis(20))
        .segments(segments, LEASE)
        .spawn(Arc::new(StoreFeed::new(store.clone())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spare_instance_waits_caught_up_and_takes_over_a_dead_one() {
    let store = Arc::new(MemoryEventStore::new());
    let gateway = CommandGateway::builder(store.clone()).build();
    let shared = Arc::new(MemoryViewStore::new());
    seed(&gateway, 20, 2).await;
    let instances: Vec<_> = (0..3).map(|_| Instance::new(&shared)).collect();
    let mut handles = Vec::new();
    for instance in &instances {
        handles.push(start_with(&store, instance, 2));
        // One after another: each sees the earlier members when it first claims.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    until("two hold one segment each, one is a spare", || {
        let mut held: Vec<usize> = handles.iter().map(|h| h.held_segments().len()).collect();
        held.sort_unstable();
        held == [0, 1, 1]
    })
    .await;
    caught_up(&store, &shared).await;
    let spare = handles
        .iter()
        .position(|h| h.held_segments().is_empty())
        .unwrap();
    until("the spare reports itself caught up", || {
        handles[spare].lag_seconds() == Some(0.0)
    })
    .await;
    let holder = (0..3).find(|i| *i != spare).unwrap();
    handles.remove(holder).abort();
    seed(&gateway, 20, 1).await;
    until("the survivors hold both segments", || {
        handles
            .iter()
            .map(|h| h.held_segments().len())
            .sum::<usize>()
            == 2
    })
    .await;
    caught_up(&store, &shared).await;
    assert_each_event_once(&views(&shared).await, &|_| 3);
    for h in handles {
        h.stop().await.expect("a clean stop");
    }
}

#[tokio::test]
async fn segments_refuse_a_bus_feed_and_a_lease_out_of_range() {
    let store = Arc::new(MemoryEventStore::new());
    let views = Arc::new(MemoryViewStore::new());
    let bus: Arc<dyn cqrs_core::EventBus> = Arc::new(cqrs_core::memory::MemoryEventBus::new(2));
    let on_bus = TrackingProcessor::new(Tally::default(), views.clone())
        .segments(2, LEASE)
        .spawn(Arc::new(cqrs_core::BusFeed::new(bus, "g", ["counter"])));
    match on_bus.stop().await {
        Err(Error::Config(why)) => assert!(why.contains("one order"), "{why}"),
        other => panic!("segments on a bus feed must be refused: {other:?}"),
    }
    let instant = TrackingProcessor::new(Tally::default(), views)
        .segments(2, Duration::ZERO)
        .spawn(Arc::new(StoreFeed::new(store)));
    match instant.stop().await {
        Err(Error::Config(why)) => assert!(why.contains("lease"), "{why}"),
        other => panic!("a zero lease must be refused: {other:?}"),
    }
}

/// A view store behind a pointer keeps its claims: a segmented processor on an
/// `Arc<MemoryViewStore>` or a `Box<dyn ViewStore>`, seen as a `dyn ViewStore`, finds them.
/// (The pointers' impls answered `None` before, whatever the store behind them kept.)
#[test]
fn a_view_store_behind_a_pointer_keeps_its_claims() {
    fn has_claims(store: &dyn ViewStore) -> bool {
        store.claims().is_some()
    }
    let arc = Arc::new(MemoryViewStore::new());
    assert!(has_claims(&arc), "Arc<MemoryViewStore>");
    let boxed: Box<dyn ViewStore> = Box::new(MemoryViewStore::new());
    assert!(has_claims(&boxed), "Box<dyn ViewStore>");
    let nested = Arc::new(boxed);
    assert!(has_claims(&nested), "Arc<Box<dyn ViewStore>>");
}
