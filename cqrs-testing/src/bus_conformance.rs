//! The bus conformance suite. Every event bus runs it against its real server, with a fresh
//! bus (its own topic or queue names) per check:
//!
//! ```no_run
//! # async fn example() {
//! use cqrs_core::memory::MemoryEventBus;
//! cqrs_testing::bus_conformance::run(|| async { MemoryEventBus::new(4) }).await;
//! # }
//! ```
//!
//! The checks publish before their groups' members have joined. A bus whose groups receive
//! only what is published once they exist (RabbitMQ) is configured by its test to declare the
//! suite's groups, [`GROUPS`], before the first publish. Each check panics with a message that
//! names the broken rule.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::{envelope_of, raw_envelope};
use cqrs_core::bus::{BusFeed, EventBus};
use cqrs_core::envelope::Envelope;
use cqrs_core::memory::MemoryViewStore;
use cqrs_core::processor::{ErrorPolicy, Feed, ProcessorHandle, TrackingProcessor};
use cqrs_core::projection::Projection;
use cqrs_core::view::{DeadLetterStore, Query};
use cqrs_core::BoxError;
use cqrs_core::ReadModel;

/// The consumer groups the checks use.
pub const GROUPS: [&str; 7] = [
    "share", "first", "second", "handover", "poison", "resume", "routed",
];

/// The aggregate type every check publishes.
pub const TYPE: &str = "busconformance";
/// The second aggregate type, which the routing check publishes beside [`TYPE`].
pub const TYPE_2: &str = "busconformance2";
pub(super) const IDLE: Duration = Duration::from_millis(200);
pub(super) const PATIENCE: Duration = Duration::from_secs(90);

/// The event of the suite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ticked {
    /// The version it was published at.
    pub n: u64,
}
cqrs_core::event!(Ticked, "busconformance.Ticked");

/// One view per stream: the versions applied, in the order they were applied.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SeenView {
    /// Applied versions.
    pub versions: Vec<u64>,
}

/// Records every version per stream, counts what this member applied, and fails the events
/// it is told to fail.
#[derive(Debug, Default, Clone)]
struct Seen {
    applied: Arc<AtomicUsize>,
    fail: Arc<Mutex<HashSet<(String, u64)>>>,
}

impl Projection for Seen {
    const NAME: &'static str = "seen";
    type Event = Ticked;
    type View = SeenView;
    fn apply(&self, view: &mut Option<SeenView>, _: &Ticked, e: &Envelope) -> Result<(), BoxError> {
        if self.fail.lock().contains(&(e.stream_id.clone(), e.version)) {
            return Err(format!("refused {}/{} on purpose", e.stream_id, e.version).into());
        }
        self.applied.fetch_add(1, Ordering::Relaxed);
        view.get_or_insert_with(SeenView::default)
            .versions
            .push(e.version);
        Ok(())
    }
}

/// Runs every check, each on a new bus from `make`.
pub async fn run<B, F, Fut>(make: F)
where
    B: EventBus + 'static,
    F: Fn() -> Fut,
    Fut: Future<Output = B>,
{
    run_checks(make, true).await;
}

/// Runs every check, each on a new bus from `make`, for a bus that hands a routing key to
/// one member of a group at a time, in order, but not always to the same member (SQS FIFO
/// message groups; its [`EventBus::pins_keys`] is `false`). The routing check then asserts
/// that every key's view holds each event once and that each key's events were first applied
/// in publish order per topic, instead of each key staying with one member.
pub async fn run_unpinned<B, F, Fut>(make: F)
where
    B: EventBus + 'static,
    F: Fn() -> Fut,
    Fut: Future<Output = B>,
{
    run_checks(make, false).await;
}

async fn run_checks<B, F, Fut>(make: F, pinned: bool)
where
    B: EventBus + 'static,
    F: Fn() -> Fut,
    Fut: Future<Output = B>,
{
    let bus = std::any::type_name::<B>();
    let shared = members_share_the_work_in_per_stream_order(Arc::new(make().await)).await;
    println!("[fault] {bus}: {shared}");
    every_group_receives_every_event(Arc::new(make().await)).await;
    let handed = unacknowledged_events_go_to_another_member(Arc::new(make().await)).await;
    println!("[fault] {bus}: {handed}");
    poison_is_dead_lettered_and_the_rest_flows(Arc::new(make().await)).await;
    a_restarted_member_resumes_after_its_acknowledgements(Arc::new(make().await)).await;
    let routed = if pinned {
        super::bus_routing::one_routing_key_reaches_one_member_in_order(Arc::new(make().await))
            .await
    } else {
        super::bus_routing::one_routing_key_is_applied_once_in_order(Arc::new(make().await)).await
    };
    println!("[fault] {bus}: {routed}");
}

/// Version `v` of streams `s-0` .. `s-{streams-1}`.
fn round(streams: u64, v: u64) -> Vec<Envelope> {
    (0..streams)
        .map(|s| envelope_of(TYPE, &format!("s-{s}"), v, v * 1_000 + s, &Ticked { n: v }))
        .collect()
}

pub(super) async fn publish(bus: &dyn EventBus, events: &[Envelope]) {
    if let Err(e) = bus.publish(events).await {
        panic!("publishing {} events failed: {e}", events.len());
    }
}

fn spawn(
    bus: &Arc<dyn EventBus>,
    group: &str,
    seen: Seen,
    store: &Arc<MemoryViewStore>,
) -> ProcessorHandle {
    let feed: Arc<dyn Feed> = Arc::new(BusFeed::new(bus.clone(), group, [TYPE]));
    TrackingProcessor::new(seen, store.clone())
        .batch_size(10)
        .error_policy(ErrorPolicy::dead_letter())
        .idle_wait(IDLE)
        .spawn(feed)
}

async fn views(store: &Arc<MemoryViewStore>) -> Vec<(String, SeenView)> {
    ReadModel::<Seen>::new(store.clone())
        .find(&Query::all())
        .await
        .expect("reading the views")
}

/// Waits until `streams` views each hold `versions` versions.
async fn until_complete(store: &Arc<MemoryViewStore>, streams: usize, versions: usize, what: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let live = views(store).await;
        let full = live
            .iter()
            .filter(|(_, v)| v.versions.len() >= versions)
            .count();
        if full >= streams {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {full} of {streams} streams have {versions} versions: {live:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every stream's view holds each version from 1 to `last` once, in order.
async fn assert_exactly_once(store: &Arc<MemoryViewStore>, streams: usize, last: u64, what: &str) {
    let live = views(store).await;
    assert_eq!(live.len(), streams, "{what}: one view per stream");
    for (id, view) in live {
        assert_eq!(
            view.versions,
            (1..=last).collect::<Vec<_>>(),
            "{what}: {id} has each version once, in order (nothing lost, nothing applied twice)"
        );
    }
}

/// A member works alone until a second joins its group; then both consume at once while events
/// are published: the joiner gets some of the work (the first does not keep everything), and
/// every stream's events are applied in order, each once. Returns the figures.
pub async fn members_share_the_work_in_per_stream_order(bus: Arc<dyn EventBus>) -> String {
    const STREAMS: u64 = 12;
    let store = Arc::new(MemoryViewStore::new());
    let (a, b) = (Seen::default(), Seen::default());
    let (ca, cb) = (a.applied.clone(), b.applied.clone());
    let first = spawn(&bus, "share", a, &store);
    let deadline = Instant::now() + PATIENCE;
    let mut v = 0;
    // Publish in rounds: first until the first member works (joining a group takes a while)...
    while ca.load(Ordering::Relaxed) == 0 {
        assert!(
            Instant::now() < deadline,
            "the first member never applied anything"
        );
        v += 1;
        publish(bus.as_ref(), &round(STREAMS, v)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ... then, with a second member, until it has worked too.
    let second = spawn(&bus, "share", b, &store);
    let joined = v;
    let mut worked = None;
    while v < joined + 10 || cb.load(Ordering::Relaxed) == 0 {
        assert!(
            Instant::now() < deadline,
            "the members of a group share the work: {} rounds after the second joined, the \
             first applied {} and the second {}",
            v - joined,
            ca.load(Ordering::Relaxed),
            cb.load(Ordering::Relaxed)
        );
        if worked.is_none() && cb.load(Ordering::Relaxed) > 0 {
            worked = Some(v - joined);
        }
        v += 1;
        publish(bus.as_ref(), &round(STREAMS, v)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    until_complete(&store, STREAMS as usize, v as usize, "two members").await;
    for handle in [first, second] {
        handle.stop().await.expect("a member stops cleanly");
    }
    assert_exactly_once(&store, STREAMS as usize, v, "two members").await;
    format!(
        "a second member joined after {joined} rounds of 12 events and worked from round {} \
         after it; applied {} and {} of {} events; every stream 1..={v} once, in order",
        worked.unwrap_or(v - joined),
        ca.load(Ordering::Relaxed),
        cb.load(Ordering::Relaxed),
        STREAMS * v
    )
}

/// Two groups each receive every event.
pub async fn every_group_receives_every_event(bus: Arc<dyn EventBus>) {
    const STREAMS: u64 = 6;
    let stores = [
        Arc::new(MemoryViewStore::new()),
        Arc::new(MemoryViewStore::new()),
    ];
    let handles = [
        spawn(&bus, "first", Seen::default(), &stores[0]),
        spawn(&bus, "second", Seen::default(), &stores[1]),
    ];
    for v in 1..=5 {
        publish(bus.as_ref(), &round(STREAMS, v)).await;
    }
    for store in &stores {
        until_complete(store, STREAMS as usize, 5, "each group").await;
    }
    for handle in handles {
        handle.stop().await.expect("stops cleanly");
    }
    for store in &stores {
        assert_exactly_once(store, STREAMS as usize, 5, "each group").await;
    }
}

/// A member receives events and dies before acknowledging them (dropped without an ack): the
/// other member of its group gets them, and the read model equals a replay. Returns the
/// figures.
pub async fn unacknowledged_events_go_to_another_member(bus: Arc<dyn EventBus>) -> String {
    const STREAMS: u64 = 8;
    let store = Arc::new(MemoryViewStore::new());
    let survivor = spawn(&bus, "handover", Seen::default(), &store);
    let mut doomed = bus
        .subscribe("handover", &[TYPE], IDLE)
        .await
        .expect("a second member subscribes");
    let deadline = Instant::now() + PATIENCE;
    let mut v = 0;
    let held = loop {
        assert!(
            Instant::now() < deadline,
            "the second member never received anything in {v} rounds"
        );
        v += 1;
        publish(bus.as_ref(), &round(STREAMS, v)).await;
        let batch = doomed.next_batch(1_000).await.expect("a batch");
        if !batch.events.is_empty() {
            break batch.events;
        }
    };
    drop(doomed);
    for _ in 0..3 {
        v += 1;
        publish(bus.as_ref(), &round(STREAMS, v)).await;
    }
    until_complete(&store, STREAMS as usize, v as usize, "after a member died").await;
    survivor.stop().await.expect("stops cleanly");
    assert_exactly_once(&store, STREAMS as usize, v, "after a member died").await;
    let live = views(&store).await;
    for e in &held {
        assert!(
            live.iter()
                .any(|(id, view)| *id == e.stream_id && view.versions.contains(&e.version)),
            "{}/{} was held unacknowledged by the dead member and reached the survivor",
            e.stream_id,
            e.version
        );
    }
    format!(
        "a member died holding {} unacknowledged events; the survivor applied all {} events, \
         each view 1..={v} once, in order (0 lost, 0 applied twice)",
        held.len(),
        STREAMS * v
    )
}

/// An unknown event, an undecodable payload and an event whose handler fails are dead letters
/// with their reasons; the events after them flow; the failed one is retried from the
/// projection's dead letters once its handler works.
pub async fn poison_is_dead_lettered_and_the_rest_flows(bus: Arc<dyn EventBus>) {
    let store = Arc::new(MemoryViewStore::new());
    let seen = Seen::default();
    seen.fail.lock().insert(("s-1".into(), 1));
    let handle = spawn(&bus, "poison", seen.clone(), &store);
    let mut events = vec![
        envelope_of(TYPE, "s-0", 1, 1, &Ticked { n: 1 }),
        envelope_of(TYPE, "s-0", 2, 2, &Ticked { n: 2 }),
        raw_envelope(TYPE, "x-0", 1, 3, "busconformance.Unknown", 1, "{}"),
        raw_envelope(TYPE, "y-0", 1, 4, "busconformance.Ticked", 1, "not json"),
        envelope_of(TYPE, "s-1", 1, 5, &Ticked { n: 1 }),
    ];
    events.extend((3..=5).map(|v| envelope_of(TYPE, "s-0", v, 3 + v, &Ticked { n: v })));
    publish(bus.as_ref(), &events).await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let dead = store.dead_letters("seen").await.expect("dead letters");
        let s0 = views(&store)
            .await
            .into_iter()
            .find(|(id, _)| id == "s-0")
            .map(|(_, v)| v.versions.len());
        if dead.len() == 3 && s0 == Some(5) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "poison: {} dead letters (want 3), s-0 has {s0:?} versions (want 5)",
            dead.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    handle.stop().await.expect("stops cleanly");
    let dead = store.dead_letters("seen").await.expect("dead letters");
    let reason = |stream: &str| {
        dead.iter()
            .find(|d| d.envelope.stream_id == stream)
            .map(|d| d.reason.clone())
            .unwrap_or_else(|| panic!("{stream} is a dead letter: {dead:?}"))
    };
    assert!(
        reason("x-0").contains("busconformance.Unknown"),
        "{}",
        reason("x-0")
    );
    assert!(!reason("y-0").is_empty());
    assert!(reason("s-1").contains("on purpose"), "{}", reason("s-1"));
    let y0 = dead
        .iter()
        .find(|d| d.envelope.stream_id == "y-0")
        .expect("y-0");
    assert_eq!(
        &y0.envelope.payload[..],
        b"not json",
        "the payload is kept as it came"
    );

    // Fixed handler: the failed event is retried from the dead letters; the others fail again.
    seen.fail.lock().clear();
    let report = TrackingProcessor::new(seen, store.clone())
        .retry_dead_letters(store.as_ref())
        .await
        .expect("retrying");
    assert_eq!(
        (report.resolved.len(), report.failed.len()),
        (1, 2),
        "{report:?}"
    );
    let left = store.dead_letters("seen").await.expect("dead letters");
    assert_eq!(left.len(), 2, "{left:?}");
    let s1 = views(&store).await.into_iter().find(|(id, _)| id == "s-1");
    assert_eq!(s1.map(|(_, v)| v.versions), Some(vec![1]));
}

/// A member acknowledges what it handled and stops; the next member of its group starts after
/// those acknowledgements.
pub async fn a_restarted_member_resumes_after_its_acknowledgements(bus: Arc<dyn EventBus>) {
    const STREAMS: u64 = 4;
    let mut first = bus
        .subscribe("resume", &[TYPE], IDLE)
        .await
        .expect("subscribe");
    for v in 1..=3 {
        publish(bus.as_ref(), &round(STREAMS, v)).await;
    }
    let deadline = Instant::now() + PATIENCE;
    let mut seen = 0;
    while seen < 12 {
        assert!(
            Instant::now() < deadline,
            "the first member got {seen} of 12"
        );
        let batch = first.next_batch(5).await.expect("batch");
        seen += batch.events.len();
        first.ack(&batch).await.expect("ack");
    }
    assert_eq!(seen, 12, "nothing delivered twice to one member");
    drop(first);
    for v in 4..=5 {
        publish(bus.as_ref(), &round(STREAMS, v)).await;
    }
    let mut second = bus
        .subscribe("resume", &[TYPE], IDLE)
        .await
        .expect("subscribe again");
    let mut got = Vec::new();
    while got.len() < 8 {
        assert!(
            Instant::now() < deadline,
            "the restarted member got {} of 8",
            got.len()
        );
        let batch = second.next_batch(100).await.expect("batch");
        second.ack(&batch).await.expect("ack");
        got.extend(batch.events);
    }
    let extra = second.next_batch(100).await.expect("batch");
    got.extend(extra.events);
    let mut versions: Vec<u64> = got.iter().map(|e| e.version).collect();
    versions.sort_unstable();
    assert_eq!(
        versions,
        vec![4, 4, 4, 4, 5, 5, 5, 5],
        "only what came after the acknowledgements, once"
    );
}
