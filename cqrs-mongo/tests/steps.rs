#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! A MongoDB store without transactions, crashed between the steps of a unit of work.

mod common;

use std::sync::Arc;

use cqrs_core::envelope::{ExpectedVersion, Metadata, NewEvent};
use cqrs_core::memory::MemoryEventStore;
use cqrs_core::processor::ErrorPolicy;
use cqrs_core::view::CommitStep;
use cqrs_core::{
    BoxError, DeadLetterStore, Envelope, EventAppender, Projection, ReadModel, TrackingProcessor,
};
use cqrs_mongo::{CommitMode, Mongo};
use cqrs_testing::CrashAfterStep;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Step {
    n: u64,
}
cqrs_core::event!(Step, "mongotest.Step");

/// Sums each stream's steps; refuses a 13 until fixed.
#[derive(Default)]
struct Sums {
    fixed: bool,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Sum {
    total: u64,
    applied: Vec<u64>,
}

impl Projection for Sums {
    const NAME: &'static str = "sums";
    type Event = Step;
    type View = Sum;
    fn view_id(&self, _: &Step, envelope: &Envelope) -> String {
        envelope.stream_id.clone()
    }
    fn apply(&self, view: &mut Option<Sum>, e: &Step, _: &Envelope) -> Result<(), BoxError> {
        if e.n == 13 && !self.fixed {
            return Err("13 is refused".into());
        }
        let sum = view.get_or_insert_with(Sum::default);
        sum.total += e.n;
        sum.applied.push(e.n);
        Ok(())
    }
}

/// A database of its own, committing without transactions.
async fn fresh() -> Mongo {
    common::fresh()
        .await
        .with_commit_mode(CommitMode::Idempotent)
}

fn step(n: u64) -> NewEvent {
    NewEvent {
        event_name: "mongotest.Step".into(),
        event_version: 1,
        payload: format!("{{\"n\":{n}}}").into_bytes().into(),
        metadata: Metadata::new(),
    }
}

/// A batch in which a view's event is dead-lettered and a later event of the same view and
/// stream is applied, crashed after each step of the unit of work in turn, then run again:
/// the dead letter is there every time, and the view holds every other event once. (With the
/// views written before the dead letters, a crash between the two lost the dead letter: the
/// redelivered batch found the view past the failed event and counted it as seen.)
#[tokio::test]
async fn a_crash_between_any_two_steps_loses_no_dead_letter() {
    let store = Arc::new(MemoryEventStore::new());
    store
        .append(
            "steps",
            "s-1",
            ExpectedVersion::Exact(0),
            vec![step(1), step(13), step(5)],
        )
        .await
        .expect("append");
    let mut figures = Vec::new();
    for crash_after in [
        CommitStep::DeadLetters,
        CommitStep::Views,
        CommitStep::Checkpoint,
    ] {
        let mongo = fresh().await;
        let processor = |views| {
            TrackingProcessor::new(Sums::default(), views)
                .error_policy(ErrorPolicy::dead_letter())
                .view_cache(0)
        };
        let crashing = Arc::new(CrashAfterStep::new(mongo.view_store(), crash_after, 1));
        let crashed = processor(crashing.clone())
            .catch_up(store.clone())
            .await
            .expect_err("the injected crash");
        assert!(crashed.to_string().contains("injected crash"), "{crashed}");
        assert_eq!(crashing.crashes_left(), 0);
        // The restarted processor reads the batch again from the checkpoint.
        processor(Arc::new(mongo.view_store()))
            .catch_up(store.clone())
            .await
            .expect("restart");
        let letters = mongo
            .view_store()
            .dead_letters("sums")
            .await
            .expect("dead letters");
        assert_eq!(
            letters
                .iter()
                .map(|d| d.envelope.version)
                .collect::<Vec<_>>(),
            [2],
            "crashed after {crash_after:?}: the 13 is a dead letter, once"
        );
        assert!(
            letters[0].reason.contains("13 is refused"),
            "{}",
            letters[0].reason
        );
        let view = ReadModel::<Sums>::new(Arc::new(mongo.view_store()))
            .get("s-1")
            .await
            .expect("get");
        assert_eq!(
            view,
            Some(Sum {
                total: 6,
                applied: vec![1, 5]
            }),
            "crashed after {crash_after:?}: every other event once"
        );
        figures.push(format!("{crash_after:?}: 1 dead letter, view 1 + 5"));
        mongo.drop_database().await.expect("drop");
    }
    println!(
        "[fault] MongoDB without transactions crashed after each step: {}",
        figures.join("; ")
    );
}

/// Crashed right after the dead letter was written (the views not yet): an operator retries
/// the dead letter with a fixed handler before the batch is delivered again. The retry must not
/// apply it to a view that has not seen the events before it: it waits, the redelivery applies
/// everything in order, and the next retry only removes the letter. (Before, the retry applied
/// version 2 first, and the redelivered batch then skipped version 1 as old.)
#[tokio::test]
async fn a_retry_before_the_redelivery_of_a_crashed_batch_loses_nothing() {
    let store = Arc::new(MemoryEventStore::new());
    store
        .append(
            "steps",
            "s-1",
            ExpectedVersion::Exact(0),
            vec![step(1), step(13), step(5)],
        )
        .await
        .expect("append");
    let mongo = fresh().await;
    let crashing = Arc::new(CrashAfterStep::new(
        mongo.view_store(),
        CommitStep::DeadLetters,
        1,
    ));
    TrackingProcessor::new(Sums::default(), crashing.clone())
        .error_policy(ErrorPolicy::dead_letter())
        .view_cache(0)
        .catch_up(store.clone())
        .await
        .expect_err("the injected crash");
    let views = Arc::new(mongo.view_store());
    let fixed = || TrackingProcessor::new(Sums { fixed: true }, views.clone()).view_cache(0);
    let early = fixed()
        .retry_dead_letters(views.as_ref())
        .await
        .expect("an early retry");
    assert!(early.resolved.is_empty(), "{early:?}");
    assert_eq!(early.failed.len(), 1, "it waits for its batch: {early:?}");
    fixed().catch_up(store.clone()).await.expect("redelivery");
    let late = fixed()
        .retry_dead_letters(views.as_ref())
        .await
        .expect("the retry after");
    assert_eq!(late.resolved.len(), 1, "{late:?}");
    assert!(views.dead_letters("sums").await.expect("dead").is_empty());
    let view = ReadModel::<Sums>::new(views.clone())
        .get("s-1")
        .await
        .expect("get");
    assert_eq!(
        view,
        Some(Sum {
            total: 19,
            applied: vec![1, 13, 5]
        }),
        "every event once, in order"
    );
    mongo.drop_database().await.expect("drop");
}
