//! A small domain for the framework's own tests: counters and a tally of what was applied.
#![allow(dead_code, missing_docs, clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;

use cqrs_core::memory::{MemoryEventStore, MemoryViewStore};
use cqrs_core::{
    Aggregate, BoxError, Command, CommandGateway, Envelope, Projection, Query, ReadModel,
    TrackingProcessor, ViewQuery,
};
use serde::{Deserialize, Serialize};

/// Sends `each` rounds of one command to each of `streams` counters.
pub async fn seed(gateway: &CommandGateway, streams: u64, each: u64) {
    for round in 0..each {
        for s in 0..streams {
            gateway
                .send(add(&format!("counter-{s}"), round + 1))
                .await
                .expect("send");
        }
    }
}

/// Every view of the tally.
pub async fn views(store: &Arc<MemoryViewStore>) -> Vec<(String, TallyView)> {
    ReadModel::<Tally>::new(store.clone() as Arc<dyn ViewQuery>)
        .find(&Query::all())
        .await
        .expect("find")
}

/// The tally as a from-scratch replay of the store builds it.
pub async fn replay(store: Arc<MemoryEventStore>) -> Vec<(String, TallyView)> {
    let fresh = Arc::new(MemoryViewStore::new());
    TrackingProcessor::new(Tally::default(), fresh.clone())
        .catch_up(store)
        .await
        .expect("replay");
    views(&fresh).await
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Added {
    pub amount: u64,
}
cqrs_core::event!(Added, "test.Added");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reset {}
cqrs_core::event!(Reset, "test.Reset");

cqrs_core::event_set! {
    #[derive(Debug, Clone, PartialEq)]
    pub enum CounterEvent {
        Added(Added),
        Reset(Reset),
    }
}

#[derive(Debug, Clone)]
pub enum CounterCommand {
    Add { id: String, amount: u64 },
    Reset { id: String },
}

impl Command for CounterCommand {
    type Aggregate = Counter;
    fn aggregate_id(&self) -> &str {
        match self {
            CounterCommand::Add { id, .. } | CounterCommand::Reset { id } => id,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CounterError {
    #[error("amount must be positive")]
    Zero,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Counter {
    pub total: u64,
    pub events: u64,
}

impl Aggregate for Counter {
    const TYPE: &'static str = "counter";
    type Command = CounterCommand;
    type Event = CounterEvent;
    type Error = CounterError;

    fn handle(&self, command: &CounterCommand) -> Result<Vec<CounterEvent>, CounterError> {
        match command {
            CounterCommand::Add { amount: 0, .. } => Err(CounterError::Zero),
            CounterCommand::Add { amount, .. } => Ok(vec![Added { amount: *amount }.into()]),
            CounterCommand::Reset { .. } => Ok(vec![Reset {}.into()]),
        }
    }

    fn apply(&mut self, event: &CounterEvent) {
        self.events += 1;
        match event {
            CounterEvent::Added(e) => self.total += e.amount,
            CounterEvent::Reset(_) => self.total = 0,
        }
    }
}

pub fn add(id: &str, amount: u64) -> CounterCommand {
    CounterCommand::Add {
        id: id.to_owned(),
        amount,
    }
}

/// One view per counter stream: its total, and every stream version applied, in order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TallyView {
    pub total: u64,
    pub versions: Vec<u64>,
}

/// Records every application, so a test can see an event applied twice or skipped.
#[derive(Debug, Default)]
pub struct Tally {
    /// Fail on events whose amount equals this.
    pub fail_on: Option<u64>,
}

impl Projection for Tally {
    const NAME: &'static str = "tally";
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
        let view = view.get_or_insert_with(TallyView::default);
        view.versions.push(envelope.version);
        match event {
            CounterEvent::Added(e) => {
                if self.fail_on == Some(e.amount) {
                    return Err(format!("refusing amount {}", e.amount).into());
                }
                view.total += e.amount;
            }
            CounterEvent::Reset(_) => view.total = 0,
        }
        Ok(())
    }
}

/// Asserts every tally view saw exactly versions 1..=n of its stream, once each, in order.
pub fn assert_each_event_once(
    views: &[(String, TallyView)],
    expected_per_stream: &dyn Fn(&str) -> u64,
) {
    for (id, view) in views {
        let n = expected_per_stream(id);
        let expected: Vec<u64> = (1..=n).collect();
        assert_eq!(
            view.versions, expected,
            "view `{id}` applied events out of order, twice or not at all"
        );
    }
}

/// One view for everything: every counter's events land on the same document, whatever
/// stream or partition they come from.
#[derive(Debug, Default)]
pub struct GrandTotal;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GrandTotalView {
    pub total: u64,
    pub events: u64,
}

impl Projection for GrandTotal {
    const NAME: &'static str = "grand-total";
    type Event = CounterEvent;
    type View = GrandTotalView;

    fn view_id(&self, _: &CounterEvent, _: &Envelope) -> String {
        "all".to_owned()
    }

    fn apply(
        &self,
        view: &mut Option<GrandTotalView>,
        event: &CounterEvent,
        _: &Envelope,
    ) -> Result<(), BoxError> {
        let view = view.get_or_insert_with(GrandTotalView::default);
        view.events += 1;
        if let CounterEvent::Added(e) = event {
            view.total += e.amount;
        }
        Ok(())
    }
}
