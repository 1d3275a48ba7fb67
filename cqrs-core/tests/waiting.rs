#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! Waiting for a processor: what "applied" means on a feed with an order per partition.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::{Added, CounterEvent, Tally, TallyView};
use cqrs_core::memory::MemoryViewStore;
use cqrs_core::processor::{Batch, EventSource};
use cqrs_core::{Envelope, Error, Feed, ReadModel, Result, TrackingProcessor, ViewQuery};
use cqrs_testing::envelope_of;
use tokio::sync::Semaphore;

/// A bus-like feed that hands over scripted batches, each once its permit is given.
struct Scripted {
    batches: parking_lot::Mutex<Vec<Vec<Envelope>>>,
    gate: Arc<Semaphore>,
}

struct ScriptedSource {
    batches: Vec<Vec<Envelope>>,
    gate: Arc<Semaphore>,
}

#[async_trait]
impl Feed for Scripted {
    async fn open(&self, _: Option<u64>, _: Duration) -> Result<Box<dyn EventSource>> {
        let batches = std::mem::take(&mut *self.batches.lock());
        Ok(Box::new(ScriptedSource {
            batches,
            gate: self.gate.clone(),
        }))
    }
}

#[async_trait]
impl EventSource for ScriptedSource {
    async fn next_batch(&mut self, _max: usize) -> Result<Batch> {
        if self.batches.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            return Ok(Batch::from_bus(Vec::new()));
        }
        self.gate.acquire().await.expect("gate").forget();
        Ok(Batch::from_bus(self.batches.remove(0)))
    }
    async fn ack(&mut self, _: &Batch) -> Result<()> {
        Ok(())
    }
}

fn added(stream: &str, version: u64, position: u64) -> Envelope {
    let event: CounterEvent = Added { amount: 1 }.into();
    envelope_of("counter", stream, version, position, &event)
}

/// Two partitions: the one holding position 5 is delivered first, the other (positions 1 to
/// 4) later. The largest position committed is then 5 while four events are not applied: a
/// wait on a position would say "done" (as `wait_for` did on a bus feed). `wait_for_events`
/// waits for each event's stream version, and `wait_for` refuses a bus feed with a typed error.
#[tokio::test]
async fn a_bus_fed_processor_waits_for_the_events_not_the_largest_position() {
    let late: Vec<Envelope> = (1..=4).map(|v| added("a", v, v)).collect();
    let early = vec![added("b", 1, 5)];
    let all: Vec<Envelope> = late.iter().chain(&early).cloned().collect();
    let gate = Arc::new(Semaphore::new(1));
    let feed = Arc::new(Scripted {
        batches: parking_lot::Mutex::new(vec![early, late]),
        gate: gate.clone(),
    });
    let views = Arc::new(MemoryViewStore::new());
    let mut handle = TrackingProcessor::new(Tally::default(), views.clone()).spawn(feed);
    tokio::time::timeout(
        Duration::from_secs(5),
        handle.watch_position().wait_for(|p| *p >= 5),
    )
    .await
    .expect("the early partition")
    .expect("running");
    let read = ReadModel::<Tally>::new(views.clone() as Arc<dyn ViewQuery>);
    assert_eq!(
        read.get("a").await.expect("get"),
        None,
        "stream a is not applied yet"
    );

    let premature = handle
        .wait_for_events(&all, Duration::from_millis(300))
        .await;
    assert!(
        matches!(premature, Err(Error::Backend { .. })),
        "the wait must not end before every event is applied: {premature:?}"
    );
    let refused = handle.wait_for(5, Duration::from_millis(10)).await;
    assert!(matches!(refused, Err(Error::Config(_))), "{refused:?}");

    gate.add_permits(1);
    handle
        .wait_for_events(&all, Duration::from_secs(5))
        .await
        .expect("every event applied");
    assert_eq!(
        read.get("a").await.expect("get"),
        Some(TallyView {
            total: 4,
            versions: vec![1, 2, 3, 4]
        })
    );
    handle.stop().await.expect("stop");
}

/// A processor that stops while someone waits for its events ends the wait at once with
/// `Shutdown`, not at the timeout.
#[tokio::test]
async fn a_wait_ends_when_the_processor_stops() {
    let poison: CounterEvent = Added { amount: 3 }.into();
    let batches = vec![vec![envelope_of("counter", "a", 1, 1, &poison)]];
    let waited_for = batches[0].clone();
    let feed = Arc::new(Scripted {
        batches: parking_lot::Mutex::new(batches),
        gate: Arc::new(Semaphore::new(1)),
    });
    let mut handle =
        TrackingProcessor::new(Tally { fail_on: Some(3) }, Arc::new(MemoryViewStore::new()))
            .spawn(feed);
    let started = tokio::time::Instant::now();
    let waited = handle
        .wait_for_events(&waited_for, Duration::from_secs(30))
        .await;
    assert!(matches!(waited, Err(Error::Shutdown)), "{waited:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the wait outlived the processor by {:?}",
        started.elapsed()
    );
    let ended = handle.stop().await.expect_err("the processor's error");
    assert!(ended.to_string().contains("refusing amount 3"), "{ended}");
}
