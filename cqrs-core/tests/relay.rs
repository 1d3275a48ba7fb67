#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! The relay: what it costs while idle.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::{add, seed};
use cqrs_core::memory::{MemoryCheckpointStore, MemoryEventBus, MemoryEventStore};
use cqrs_core::registry::StoredType;
use cqrs_core::{
    CheckpointStore, CommandGateway, Envelope, EventReader, EventStore, Relay, Result,
};

/// A reader that counts the log reads it serves, and fails its waits for new events while
/// `down` is set (a store that went away while the relay was idle).
struct Counting {
    inner: Arc<MemoryEventStore>,
    reads: AtomicU64,
    down: std::sync::atomic::AtomicBool,
    failed_waits: AtomicU64,
}

impl Counting {
    fn new(inner: Arc<MemoryEventStore>) -> Self {
        Counting {
            inner,
            reads: AtomicU64::new(0),
            down: std::sync::atomic::AtomicBool::new(false),
            failed_waits: AtomicU64::new(0),
        }
    }
}

#[async_trait]
impl EventReader for Counting {
    async fn read_stream(&self, stream_id: &str, after_version: u64) -> Result<Vec<Envelope>> {
        self.inner.read_stream(stream_id, after_version).await
    }
    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<Envelope>> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.inner.read_all(after, limit).await
    }
    async fn head(&self) -> Result<u64> {
        self.inner.head().await
    }
    async fn wait_for_events(&self, after: u64, timeout: Duration) -> Result<()> {
        if self.down.load(Ordering::SeqCst) {
            self.failed_waits.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(5)).await;
            return Err(cqrs_core::Error::Backend {
                backend: "memory",
                message: "checking for new events: the pool timed out".into(),
                source: None,
            });
        }
        self.inner.wait_for_events(after, timeout).await
    }
    async fn stored_types(&self) -> Result<Vec<StoredType>> {
        self.inner.stored_types().await
    }
}

/// A relay restarted with nothing to publish waits after its checkpoint: it does not read the
/// log in a loop until the next event (before the fix it spun, thousands of reads a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_restarted_with_nothing_to_publish_stays_idle() {
    let store = Arc::new(MemoryEventStore::new());
    let gateway = CommandGateway::builder(store.clone() as Arc<dyn EventStore>).build();
    for i in 0..5 {
        gateway.send(add("c-1", i + 1)).await.expect("send");
    }
    let bus = Arc::new(MemoryEventBus::new(2));
    let checkpoints = Arc::new(MemoryCheckpointStore::new());
    // The first life publishes everything.
    let reader = Arc::new(Counting::new(store.clone()));
    let relay = Relay::new("r", reader.clone(), bus.clone(), checkpoints.clone());
    assert_eq!(relay.publish_pending().await.expect("publish"), 5);
    let head = store.head().await.expect("head");
    assert_eq!(checkpoints.load("r").await.expect("load"), Some(head));

    // The second life starts with nothing pending.
    let idle = Duration::from_millis(500);
    let mut handle = Relay::new("r", reader.clone(), bus.clone(), checkpoints.clone()).spawn();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = reader.reads.load(Ordering::Relaxed);
    tokio::time::sleep(idle * 2).await;
    let idle_reads = reader.reads.load(Ordering::Relaxed) - before;
    println!(
        "[fault] idle relay after a restart: {idle_reads} log reads in {:?}",
        idle * 2
    );
    assert_eq!(
        handle.position(),
        head,
        "the position starts at the checkpoint"
    );
    // It wakes once per idle wait (500 ms) at most, and reads once each time.
    assert!(
        idle_reads <= 4,
        "an idle relay read the log {idle_reads} times in 1 s"
    );

    // It still wakes for a new event at once.
    gateway.send(add("c-1", 9)).await.expect("send");
    let position = store.head().await.expect("head");
    handle
        .wait_for(position, Duration::from_secs(2))
        .await
        .expect("the new event published");
    handle.stop().await.expect("stop");
}

/// A transient failure of the store while the relay waits for new events is retried like any
/// other: the relay does not end, and publishes what is appended once the store is back.
/// (Before the fix it ended with the wait's error and never published again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_outlives_a_store_outage_while_it_waits() {
    let store = Arc::new(MemoryEventStore::new());
    let gateway = CommandGateway::builder(store.clone() as Arc<dyn EventStore>).build();
    gateway.send(add("c-1", 1)).await.expect("send");
    let reader = Arc::new(Counting::new(store.clone()));
    let bus = Arc::new(MemoryEventBus::new(1));
    let checkpoints = Arc::new(MemoryCheckpointStore::new());
    let mut handle = Relay::new("r", reader.clone(), bus.clone(), checkpoints.clone())
        .backoff(cqrs_core::Backoff::new(
            Duration::from_millis(10),
            Duration::from_millis(50),
        ))
        .spawn();
    let first = store.head().await.expect("head");
    handle
        .wait_for(first, Duration::from_secs(2))
        .await
        .expect("the first event published");

    reader.down.store(true, Ordering::SeqCst);
    gateway.send(add("c-1", 2)).await.expect("send");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while reader.failed_waits.load(Ordering::Relaxed) < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the relay stopped waiting"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !handle.is_finished(),
        "a transient failure of the wait ended the relay"
    );
    reader.down.store(false, Ordering::SeqCst);
    gateway.send(add("c-1", 3)).await.expect("send");
    let head = store.head().await.expect("head");
    handle
        .wait_for(head, Duration::from_secs(5))
        .await
        .expect("published after the outage");
    assert_eq!(bus.topic_len("counter"), 3, "every event published once");
    handle.stop().await.expect("stop");
}

#[tokio::test]
async fn a_relay_limited_to_some_aggregate_types_publishes_only_those() {
    let store = Arc::new(MemoryEventStore::new());
    let gateway = CommandGateway::builder(store.clone()).build();
    seed(&gateway, 2, 3).await;
    let other = cqrs_core::NewEvent {
        event_name: "other.Happened".into(),
        event_version: 1,
        payload: bytes::Bytes::from_static(b"{}"),
        metadata: cqrs_core::Metadata::new(),
    };
    cqrs_core::EventAppender::append(
        store.as_ref(),
        "other",
        "o-1",
        cqrs_core::ExpectedVersion::Any,
        vec![other.clone(), other],
    )
    .await
    .expect("append");
    seed(&gateway, 1, 1).await;
    let bus = Arc::new(MemoryEventBus::new(1));
    let checkpoints = Arc::new(MemoryCheckpointStore::new());
    let counters = Relay::new("counters", store.clone(), bus.clone(), checkpoints.clone())
        .only(["counter"])
        .batch_size(2);
    assert_eq!(counters.publish_pending().await.expect("publish"), 7);
    assert_eq!(bus.topic_len("counter"), 7);
    assert_eq!(bus.topic_len("other"), 0);
    // Its checkpoint moved past the events it left out.
    assert_eq!(
        cqrs_core::CheckpointStore::load(checkpoints.as_ref(), "counters")
            .await
            .expect("load"),
        Some(store.len() as u64)
    );
    assert_eq!(counters.publish_pending().await.expect("again"), 0);
    let others =
        Relay::new("others", store.clone(), bus.clone(), checkpoints.clone()).only(["other"]);
    assert_eq!(others.publish_pending().await.expect("publish"), 2);
    assert_eq!(bus.topic_len("other"), 2);

    // An empty list is a configuration error, not a relay that skips everything for good.
    let nothing = Relay::new("nothing", store.clone(), bus.clone(), checkpoints.clone())
        .only(Vec::<String>::new());
    assert!(matches!(
        nothing.publish_pending().await,
        Err(cqrs_core::Error::Config(_))
    ));
    assert!(matches!(
        nothing
            .run(tokio_util::sync::CancellationToken::new())
            .await,
        Err(cqrs_core::Error::Config(_))
    ));
    assert_eq!(
        cqrs_core::CheckpointStore::load(checkpoints.as_ref(), "nothing")
            .await
            .expect("load"),
        None,
        "its checkpoint did not move"
    );
}
