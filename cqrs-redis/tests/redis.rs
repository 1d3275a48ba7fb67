#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! The Redis Streams bus on the real server: the bus conformance suite, the lease fence,
//! retention, entries that are not envelopes, and a wrong password.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{bus, bus_with, config, redis_url};
use cqrs_core::processor::EventSource;
use cqrs_core::{Envelope, Error, EventBus};
use cqrs_redis::{RedisBus, RedisConfig};
use cqrs_testing::bus_conformance::{self, Ticked, TYPE, TYPE_2};
use cqrs_testing::envelope_of;

async fn raw() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

async fn len(stream: &str) -> u64 {
    redis::cmd("XLEN")
        .arg(stream)
        .query_async(&mut raw().await)
        .await
        .unwrap()
}

/// Reads batches of at most `max` from `member`, acknowledging each, into `got` (stream id
/// and version) until it holds `until`; fails past `deadline`.
async fn read_until(
    member: &mut dyn EventSource,
    max: usize,
    until: usize,
    got: &mut Vec<(String, u64)>,
    deadline: Instant,
) {
    while got.len() < until {
        assert!(
            Instant::now() < deadline,
            "got {} of {until}: {got:?}",
            got.len()
        );
        let batch = member.next_batch(max).await.unwrap();
        member.ack(&batch).await.unwrap();
        got.extend(
            batch
                .events
                .iter()
                .map(|e| (e.stream_id.clone(), e.version)),
        );
    }
}

fn round(streams: u64, v: u64) -> Vec<Envelope> {
    (0..streams)
        .map(|s| envelope_of(TYPE, &format!("s-{s}"), v, v * 1_000 + s, &Ticked { n: v }))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_bus_passes_the_bus_conformance_suite() {
    let buses = parking_lot::Mutex::new(Vec::new());
    bus_conformance::run(|| async {
        let bus = bus().await;
        buses.lock().push(bus.clone());
        bus
    })
    .await;
    for bus in buses.into_inner() {
        bus.delete_streams(&[TYPE, TYPE_2]).await.unwrap();
    }
}

/// A member whose lease moved while it held a batch (paused past its lease) cannot
/// acknowledge it: the next holder takes the entries over and applies them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_lease_moved_cannot_acknowledge() {
    let bus = bus_with(config(&redis_url()).partitions(1)).await;
    let mut first = bus
        .subscribe("fence", &[TYPE], Duration::from_millis(200))
        .await
        .unwrap();
    bus.publish(&round(3, 1)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let held = loop {
        let batch = first.next_batch(100).await.unwrap();
        if !batch.events.is_empty() {
            break batch;
        }
        assert!(Instant::now() < deadline, "the first member got nothing");
    };
    assert_eq!(held.events.len(), 3);
    // The lease moves under it: it expired and another member took the partition.
    let lease = format!("{}lease:fence:0", bus.config().prefix());
    let _: () = redis::cmd("SET")
        .arg(&lease)
        .arg("someone-else#0")
        .query_async(&mut raw().await)
        .await
        .unwrap();
    // Before it notices (its renewal is due later), it asks for more: nothing of that
    // partition is read for it, so the next holder's take-over finds everything it must.
    bus.publish(&round(3, 2)).await.unwrap();
    let later = first.next_batch(100).await.unwrap();
    assert!(later.events.is_empty(), "{:?}", later.events);
    let stream = bus.config().stream(TYPE, 0);
    let pending = || async {
        let reply: redis::Value = redis::cmd("XPENDING")
            .arg(&stream)
            .arg("fence")
            .query_async(&mut raw().await)
            .await
            .unwrap();
        let redis::Value::Array(summary) = reply else {
            panic!("{reply:?}")
        };
        summary[0].clone()
    };
    assert_eq!(
        pending().await,
        redis::Value::Int(3),
        "the fenced member read nothing new"
    );
    first.ack(&held).await.expect("a fenced ack is no error");
    assert_eq!(
        pending().await,
        redis::Value::Int(3),
        "nothing was acknowledged"
    );
    drop(first);

    // The lease is free again: the next member takes the three over, then the new ones.
    let _: () = redis::cmd("DEL")
        .arg(&lease)
        .query_async(&mut raw().await)
        .await
        .unwrap();
    let mut second = bus
        .subscribe("fence", &[TYPE], Duration::from_millis(200))
        .await
        .unwrap();
    let mut got = Vec::new();
    read_until(second.as_mut(), 100, 6, &mut got, deadline).await;
    let mut s0: Vec<u64> = got
        .iter()
        .filter(|(s, _)| s == "s-0")
        .map(|(_, v)| *v)
        .collect();
    s0.dedup();
    assert_eq!(s0, vec![1, 2], "taken over first, in order: {got:?}");
    bus.delete_streams(&[TYPE]).await.unwrap();
}

/// A read is a watched transaction that the server drops when the lease is written between
/// the watch and the `EXEC` (the member's own renewals do that). With the lease rewritten in
/// bursts all the while (its own token, so the member still holds it), every entry still
/// arrives once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_dropped_by_a_lease_written_meanwhile_lose_nothing() {
    let bus = bus_with(config(&redis_url()).partitions(1)).await;
    let mut member = bus
        .subscribe("watched", &[TYPE], Duration::from_millis(100))
        .await
        .unwrap();
    bus.publish(&round(2, 1)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got: Vec<(String, u64)> = Vec::new();
    read_until(member.as_mut(), 2, 1, &mut got, deadline).await;
    let lease = format!("{}lease:watched:0", bus.config().prefix());
    let mut connection = raw().await;
    let token: String = redis::cmd("GET")
        .arg(&lease)
        .query_async(&mut connection)
        .await
        .unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hammer = tokio::spawn({
        let (stop, lease) = (stop.clone(), lease.clone());
        async move {
            let mut writes = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut pipe = redis::pipe();
                for _ in 0..50 {
                    pipe.cmd("SET")
                        .arg(&lease)
                        .arg(&token)
                        .arg("PX")
                        .arg(2_000)
                        .ignore();
                }
                pipe.query_async::<()>(&mut connection).await.unwrap();
                writes += 50;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            writes
        }
    });
    for v in 2..=40 {
        bus.publish(&round(2, v)).await.unwrap();
    }
    read_until(member.as_mut(), 2, 80, &mut got, deadline).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = hammer.await.unwrap();
    assert!(writes >= 200, "the lease was written {writes} times only");
    for s in ["s-0", "s-1"] {
        let versions: Vec<u64> = got
            .iter()
            .filter(|(id, _)| id == s)
            .map(|(_, v)| *v)
            .collect();
        assert_eq!(versions, (1..=40).collect::<Vec<_>>(), "{s}");
    }
    bus.delete_streams(&[TYPE]).await.unwrap();
}

/// Trimming keeps what any group has not acknowledged, and removes what every group has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimming_keeps_what_a_group_has_not_acknowledged() {
    let bus = bus_with(config(&redis_url()).partitions(1)).await;
    let mut fast = bus
        .subscribe("fast", &[TYPE], Duration::from_millis(100))
        .await
        .unwrap();
    let mut slow = bus
        .subscribe("slow", &[TYPE], Duration::from_millis(100))
        .await
        .unwrap();
    let events: Vec<Envelope> = (1..=10)
        .map(|v| envelope_of(TYPE, "s-0", v, v, &Ticked { n: v }))
        .collect();
    bus.publish(&events).await.unwrap();
    let stream = bus.config().stream(TYPE, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = 0;
    while seen < 10 {
        assert!(Instant::now() < deadline);
        let batch = fast.next_batch(100).await.unwrap();
        fast.ack(&batch).await.unwrap();
        seen += batch.events.len();
    }
    let mut slow_seen = Vec::new();
    while slow_seen.len() < 4 {
        assert!(Instant::now() < deadline);
        let batch = slow.next_batch(4 - slow_seen.len()).await.unwrap();
        slow.ack(&batch).await.unwrap();
        slow_seen.extend(batch.events.iter().map(|e| e.version));
    }
    // The slow group has 4 acknowledged; one more is handed out, unacknowledged.
    let held = loop {
        let batch = slow.next_batch(1).await.unwrap();
        if !batch.events.is_empty() {
            break batch;
        }
    };
    assert_eq!(held.events[0].version, 5);
    let removed = bus.trim(&[TYPE]).await.unwrap();
    assert_eq!((removed, len(&stream).await), (4, 6), "entries 5..=10 kept");
    slow.ack(&held).await.unwrap();
    let mut rest = Vec::new();
    while rest.len() < 5 {
        assert!(Instant::now() < deadline);
        let batch = slow.next_batch(100).await.unwrap();
        slow.ack(&batch).await.unwrap();
        rest.extend(batch.events.iter().map(|e| e.version));
    }
    assert_eq!(
        rest,
        vec![6, 7, 8, 9, 10],
        "nothing the slow group needed was lost"
    );
    let removed = bus.trim(&[TYPE]).await.unwrap();
    assert_eq!(
        (removed, len(&stream).await),
        (5, 1),
        "only the last delivered entry stays"
    );
    bus.delete_streams(&[TYPE]).await.unwrap();
}

/// An entry written by a tool that knows nothing of envelopes is a dead letter with its
/// reason, on the group's dead-letter stream too; the rest flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_that_is_no_envelope_is_a_dead_letter_and_the_rest_flows() {
    use cqrs_core::memory::MemoryViewStore;
    use cqrs_core::processor::ErrorPolicy;
    use cqrs_core::{BusFeed, DeadLetterStore, ReadModel, TrackingProcessor};
    let bus = Arc::new(bus_with(config(&redis_url()).partitions(1)).await);
    let stream = bus.config().stream(TYPE, 0);
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("payload")
        .arg("not an envelope")
        .query_async(&mut raw().await)
        .await
        .unwrap();
    let good: Vec<Envelope> = (1..=3)
        .map(|v| envelope_of(TYPE, "s-0", v, v, &Ticked { n: v }))
        .collect();
    bus.publish(&good).await.unwrap();
    let store = Arc::new(MemoryViewStore::new());
    let handle = TrackingProcessor::new(common::Seen, store.clone())
        .error_policy(ErrorPolicy::dead_letter())
        .idle_wait(Duration::from_millis(200))
        .spawn(Arc::new(BusFeed::new(bus.clone(), "raw", [TYPE])));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let dead = store.dead_letters("seen").await.unwrap();
        let view = ReadModel::<common::Seen>::new(store.clone())
            .get("s-0")
            .await
            .unwrap();
        if dead.len() == 1 && view.as_ref().map(|v| v.versions.len()) == Some(3) {
            break;
        }
        assert!(Instant::now() < deadline, "dead {dead:?}, view {view:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    handle.stop().await.unwrap();
    let dead = store.dead_letters("seen").await.unwrap();
    assert!(
        dead[0].reason.contains("cqrs.stream_id"),
        "{}",
        dead[0].reason
    );
    assert_eq!(&dead[0].envelope.payload[..], b"not an envelope");
    assert_eq!(len(&bus.config().dead_letters("raw")).await, 1);
    bus.delete_streams(&[TYPE]).await.unwrap();
    bus.delete_group("raw", &[TYPE]).await.unwrap();
}

#[tokio::test]
async fn a_wrong_password_is_a_typed_error_that_never_shows_the_password() {
    let url = redis_url().replacen("redis://", "redis://nobody:hunter2-wrong@", 1);
    let bus = RedisBus::new(RedisConfig::new(&url, "auth.").unwrap()).unwrap();
    let err = bus.check().await.expect_err("a wrong password is refused");
    let shown = format!("{err} {err:?} {bus:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(
        matches!(err, Error::Config(_)),
        "a refused login is a configuration error: {err:?}"
    );
    let refused = bus
        .publish(&round(1, 1))
        .await
        .expect_err("publishing is refused too");
    assert!(!format!("{refused:?}").contains("hunter2"));
}

/// A user whose ACL denies the fenced read's `XREADGROUP` (refused when queued in the read's
/// transaction, so the server aborts it) gets a configuration error from the read, which a
/// processor does not retry, rather than a backend error retried for ever. The user is made
/// for the test and deleted after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_the_acl_denies_the_read_gets_a_configuration_error() {
    let user = format!(
        "cqrs-test-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let mut admin = raw().await;
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("on")
        .arg(">not-a-secret")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .arg("-xreadgroup")
        .query_async(&mut admin)
        .await
        .unwrap();
    let base = redis_url();
    let host = base
        .rsplit_once('@')
        .map_or(&base["redis://".len()..], |(_, h)| h);
    let url = format!("redis://{user}:not-a-secret@{host}");
    let bus = bus_with(config(&url).partitions(1)).await;
    bus.publish(&round(1, 1)).await.unwrap();
    let mut member = bus
        .subscribe("denied", &[TYPE], Duration::from_millis(100))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let err = loop {
        match member.next_batch(10).await {
            Err(e) => break e,
            Ok(batch) => assert!(batch.events.is_empty(), "read past the ACL: {batch:?}"),
        }
        assert!(Instant::now() < deadline, "the denied read never failed");
    };
    drop(member);
    let cleaned = bus.delete_streams(&[TYPE]).await;
    let _: i64 = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&user)
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(
        matches!(err, Error::Config(_)),
        "a command the ACL denies is a configuration error: {err:?}"
    );
    cleaned.unwrap();
}

/// A crash loop: members take an entry over and die before acknowledging it, again and
/// again. Past the delivery limit it is handed alone, so the entries beside it are
/// acknowledged without it; after three more it is a dead letter, not applied again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_dead_letters_the_entry_it_restarts_at_and_spares_the_rest() {
    use cqrs_core::memory::MemoryViewStore;
    use cqrs_core::processor::ErrorPolicy;
    use cqrs_core::{BusFeed, DeadLetterStore, ReadModel, TrackingProcessor};
    let bus = Arc::new(bus_with(config(&redis_url()).partitions(1).delivery_limit(1)).await);
    let events: Vec<Envelope> = (1..=3)
        .map(|v| envelope_of(TYPE, "s-0", v, v, &Ticked { n: v }))
        .collect();
    bus.publish(&events).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut sizes = Vec::new();
    for _ in 0..4 {
        let mut doomed = bus
            .subscribe("loop", &[TYPE], Duration::from_millis(100))
            .await
            .unwrap();
        let batch = loop {
            let batch = doomed.next_batch(100).await.unwrap();
            if !batch.events.is_empty() {
                break batch;
            }
            assert!(Instant::now() < deadline, "a member got nothing");
        };
        sizes.push(batch.events.len());
        drop(doomed); // dies without an ack
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        sizes,
        vec![3, 1, 1, 1],
        "the whole batch, then the suspect alone"
    );
    let store = Arc::new(MemoryViewStore::new());
    let handle = TrackingProcessor::new(common::Seen, store.clone())
        .error_policy(ErrorPolicy::dead_letter())
        .idle_wait(Duration::from_millis(100))
        .spawn(Arc::new(BusFeed::new(bus.clone(), "loop", [TYPE])));
    loop {
        let dead = store.dead_letters("seen").await.unwrap();
        let view = ReadModel::<common::Seen>::new(store.clone())
            .get("s-0")
            .await
            .unwrap();
        if dead.len() == 1 && view.as_ref().map(|v| v.versions.clone()) == Some(vec![2, 3]) {
            assert!(
                dead[0].reason.contains("delivered 5 times"),
                "{}",
                dead[0].reason
            );
            assert_eq!(dead[0].envelope.version, 1);
            break;
        }
        assert!(Instant::now() < deadline, "dead {dead:?}, view {view:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    handle.stop().await.unwrap();
    assert_eq!(len(&bus.config().dead_letters("loop")).await, 1);
    println!("[fault] Redis crash loop: batches of {sizes:?}, then 1 dead letter (version 1), versions 2 and 3 applied once");
    bus.delete_streams(&[TYPE]).await.unwrap();
    bus.delete_group("loop", &[TYPE]).await.unwrap();
}
