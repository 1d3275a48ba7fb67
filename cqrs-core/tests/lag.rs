//! A processor's lag in seconds: the age of what it works on while it is behind, 0 once its
//! feed has nothing more.
#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use cqrs_core::memory::{MemoryEventStore, MemoryViewStore};
use cqrs_core::{Envelope, Fold, StoreFeed, TrackingProcessor};
use cqrs_testing::envelope_of;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ticked {
    pub n: u32,
}
cqrs_core::event!(Ticked, "lag.Ticked");

/// A slow projection: 40 ms an event.
struct Slow;
impl Fold for Slow {
    const NAME: &'static str = "slow";
    type Event = Ticked;
    type View = u32;
    fn fold(&self, view: &mut u32, e: &Ticked, _: &Envelope) {
        std::thread::sleep(Duration::from_millis(40));
        *view += e.n;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_behind_old_events_reports_their_age_then_zero() {
    let store = Arc::new(MemoryEventStore::new());
    // Ten events written a minute ago (as a backlog after an outage would be).
    let a_minute_ago = chrono::Utc::now() - chrono::Duration::seconds(60);
    store.insert_raw(
        (0..10)
            .map(|i| {
                let mut e = envelope_of("ticker", "t-1", i + 1, 0, &Ticked { n: 1 });
                e.metadata.timestamp = a_minute_ago;
                e
            })
            .collect(),
    );
    let handle = TrackingProcessor::new(Slow, Arc::new(MemoryViewStore::new()))
        .batch_size(2)
        .idle_wait(Duration::from_millis(20))
        .spawn(Arc::new(StoreFeed::new(store.clone())));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut seen_behind = None;
    while handle.position() < 10 {
        if let Some(lag) = handle.lag_seconds() {
            if lag > 0.0 {
                seen_behind = Some(lag);
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "never caught up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let behind = seen_behind.expect("a lag while behind");
    assert!(
        (59.0..120.0).contains(&behind),
        "the backlog's age: {behind}"
    );
    while handle.lag_seconds() != Some(0.0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lag never went back to 0"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("[fault] lag: {behind:.1} s while a minute-old backlog was applied, 0 once caught up");
    handle.stop().await.expect("stop");
}
