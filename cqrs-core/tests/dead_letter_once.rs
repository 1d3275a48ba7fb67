#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! An event dead-lettered from its view is applied to it once, whichever comes first: the
//! batch redelivered (a crash or a rebalance before the ack) or a retry of its dead letter.
//! And a handler that fails now and then on an earlier event of a batch is dead-lettered by
//! policy, not a reason to stop the processor.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use common::{add, CounterEvent, TallyView};
use cqrs_core::memory::{MemoryEventStore, MemoryViewStore};
use cqrs_core::processor::{Batch, ErrorPolicy};
use cqrs_core::{
    BoxError, CommandGateway, DeadLetterStore, Envelope, EventReader, Projection, ReadModel,
    TrackingProcessor, ViewQuery,
};

/// A tally whose handler fails on the calls whose numbers (from 1) are listed.
#[derive(Debug, Default)]
struct Flaky {
    calls: AtomicU32,
    failing: Mutex<BTreeSet<u32>>,
}

impl Flaky {
    fn failing_on(calls: impl IntoIterator<Item = u32>) -> Self {
        Flaky {
            calls: AtomicU32::new(0),
            failing: Mutex::new(calls.into_iter().collect()),
        }
    }
}

impl Projection for Flaky {
    const NAME: &'static str = "flaky";
    type Event = CounterEvent;
    type View = TallyView;

    fn view_id(&self, _: &CounterEvent, envelope: &Envelope) -> String {
        envelope.stream_id.clone()
    }

    fn apply(
        &self,
        view: &mut Option<TallyView>,
        event: &CounterEvent,
        envelope: &Envelope,
    ) -> Result<(), BoxError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if self.failing.lock().unwrap().contains(&call) {
            return Err(format!("call {call} fails").into());
        }
        let view = view.get_or_insert_with(TallyView::default);
        view.versions.push(envelope.version);
        if let CounterEvent::Added(e) = event {
            view.total += e.amount;
        }
        Ok(())
    }
}

async fn three_events() -> (Arc<MemoryEventStore>, Vec<Envelope>) {
    let store = Arc::new(MemoryEventStore::new());
    let gateway = CommandGateway::builder(store.clone()).build();
    for amount in [1, 2, 3] {
        gateway.send(add("x", amount)).await.expect("send");
    }
    let events = store.read_all(0, 100).await.expect("read");
    (store, events)
}

async fn versions(views: &Arc<MemoryViewStore>) -> Vec<u64> {
    let model = ReadModel::<Flaky>::new(views.clone() as Arc<dyn ViewQuery>);
    model.get("x").await.expect("x").expect("x exists").versions
}

/// The handler fails once, on version 3 (the third call): it is dead-lettered. The batch is
/// delivered again (the ack was lost) and the handler would now succeed; then an operator
/// retries the dead letters. Version 3 is applied once, by the retry. (Before the fix the
/// redelivery applied it and the retry applied it again: [1, 2, 3, 3].)
#[tokio::test]
async fn a_redelivered_batch_and_a_dead_letter_retry_apply_an_event_once() {
    for bus in [false, true] {
        let (_store, events) = three_events().await;
        let batch = || {
            if bus {
                Batch::from_bus(events.clone())
            } else {
                Batch::from_log(events.clone())
            }
        };
        let views = Arc::new(MemoryViewStore::new());
        let processor = TrackingProcessor::new(Flaky::failing_on([3]), views.clone())
            .error_policy(ErrorPolicy::dead_letter());
        processor.process(&batch()).await.expect("first delivery");
        assert_eq!(versions(&views).await, [1, 2], "bus: {bus}");
        assert_eq!(views.dead_letters("flaky").await.expect("dead").len(), 1);

        processor.process(&batch()).await.expect("redelivery");
        let report = processor
            .retry_dead_letters(views.as_ref())
            .await
            .expect("retry");
        assert_eq!(report.resolved.len(), 1, "bus: {bus}");
        assert_eq!(versions(&views).await, [1, 2, 3], "bus: {bus}");
        assert!(views.dead_letters("flaky").await.expect("dead").is_empty());

        // And a late redelivery after the retry changes nothing.
        processor.process(&batch()).await.expect("late redelivery");
        assert_eq!(versions(&views).await, [1, 2, 3], "bus: {bus}");
    }
}

/// A retry first, the redelivery after: still once.
#[tokio::test]
async fn a_dead_letter_retried_before_the_redelivery_is_applied_once() {
    let (_store, events) = three_events().await;
    let views = Arc::new(MemoryViewStore::new());
    let processor = TrackingProcessor::new(Flaky::failing_on([2]), views.clone())
        .error_policy(ErrorPolicy::dead_letter());
    processor
        .process(&Batch::from_bus(events.clone()))
        .await
        .expect("first delivery");
    assert_eq!(versions(&views).await, [1, 3]);
    let report = processor
        .retry_dead_letters(views.as_ref())
        .await
        .expect("retry");
    assert_eq!(report.resolved.len(), 1);
    assert_eq!(versions(&views).await, [1, 3, 2]);
    processor
        .process(&Batch::from_bus(events))
        .await
        .expect("redelivery");
    assert_eq!(versions(&views).await, [1, 3, 2], "nothing applied twice");
}

/// Version 2 fails (call 2); restoring the view applies version 1 again, and that fails too
/// (call 3): a handler that fails now and then. Under the dead-letter policy both are
/// dead-lettered and the batch commits; before the fix the failed replay stopped the
/// processor ("handler is not deterministic"). A retry then applies both, once each.
#[tokio::test]
async fn a_handler_failing_now_and_then_on_an_earlier_event_is_dead_lettered_not_fatal() {
    let (_store, events) = three_events().await;
    let views = Arc::new(MemoryViewStore::new());
    let processor = TrackingProcessor::new(Flaky::failing_on([2, 3]), views.clone())
        .error_policy(ErrorPolicy::dead_letter());
    processor
        .process(&Batch::from_log(events.clone()))
        .await
        .expect("the batch commits under the dead-letter policy");
    assert_eq!(versions(&views).await, [3]);
    let dead = views.dead_letters("flaky").await.expect("dead");
    let mut dead_versions: Vec<u64> = dead.iter().map(|d| d.envelope.version).collect();
    dead_versions.sort_unstable();
    assert_eq!(dead_versions, [1, 2]);

    processor
        .process(&Batch::from_log(events))
        .await
        .expect("redelivery");
    let report = processor
        .retry_dead_letters(views.as_ref())
        .await
        .expect("retry");
    assert_eq!(report.resolved.len(), 2);
    assert_eq!(versions(&views).await, [3, 1, 2]);
    let model = ReadModel::<Flaky>::new(views.clone() as Arc<dyn ViewQuery>);
    assert_eq!(model.get("x").await.expect("x").expect("x").total, 6);
}

/// The same tally, after a fix that moved events to other views: an event parked in its old
/// view is not applied to the new one behind the operator's back (nor resolved unapplied).
struct Moved;

impl Projection for Moved {
    const NAME: &'static str = "flaky";
    type Event = CounterEvent;
    type View = TallyView;

    fn view_id(&self, _: &CounterEvent, envelope: &Envelope) -> String {
        format!("{}-moved", envelope.stream_id)
    }

    fn apply(
        &self,
        view: &mut Option<TallyView>,
        _: &CounterEvent,
        envelope: &Envelope,
    ) -> Result<(), BoxError> {
        view.get_or_insert_with(TallyView::default)
            .versions
            .push(envelope.version);
        Ok(())
    }
}

#[tokio::test]
async fn a_dead_letter_whose_view_moved_stays_listed_with_the_reason() {
    let (_store, events) = three_events().await;
    let views = Arc::new(MemoryViewStore::new());
    TrackingProcessor::new(Flaky::failing_on([2]), views.clone())
        .error_policy(ErrorPolicy::dead_letter())
        .process(&Batch::from_log(events))
        .await
        .expect("first delivery");
    let report = TrackingProcessor::new(Moved, views.clone())
        .retry_dead_letters(views.as_ref())
        .await
        .expect("retry");
    assert!(report.resolved.is_empty(), "{report:?}");
    assert!(report.failed[0].1.contains("parked"), "{report:?}");
    assert_eq!(views.dead_letters("flaky").await.expect("dead").len(), 1);
    assert_eq!(versions(&views).await, [1, 3]);
}
