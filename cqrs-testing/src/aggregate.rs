use std::fmt::Debug;

use cqrs_core::aggregate::Aggregate;
use cqrs_core::event::EventSet;

use super::envelope_of;

/// Given/when/then for an aggregate: pure, no runtime, no store.
///
/// ```
/// # use cqrs_core::{Aggregate, Command};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)] pub struct Opened;
/// # cqrs_core::event!(Opened, "doc.fx.Opened");
/// # #[derive(Debug)] pub struct Open(String);
/// # impl Command for Open { type Aggregate = Door; fn aggregate_id(&self) -> &str { &self.0 } }
/// # #[derive(Debug, Default, Clone, Serialize, Deserialize)] pub struct Door { open: bool }
/// # #[derive(Debug, PartialEq, thiserror::Error)] #[error("already open")] pub struct AlreadyOpen;
/// # impl Aggregate for Door {
/// #     const TYPE: &'static str = "door"; type Command = Open; type Event = Opened; type Error = AlreadyOpen;
/// #     fn handle(&self, _: &Open) -> Result<Vec<Opened>, AlreadyOpen> { if self.open { Err(AlreadyOpen) } else { Ok(vec![Opened]) } }
/// #     fn apply(&mut self, _: &Opened) { self.open = true; }
/// # }
/// use cqrs_testing::AggregateFixture;
///
/// AggregateFixture::<Door>::given_nothing()
///     .when(Open("d1".into()))
///     .then_expect_events([Opened]);
/// AggregateFixture::<Door>::given([Opened])
///     .when(Open("d1".into()))
///     .then_expect_error(AlreadyOpen);
/// ```
#[derive(Debug)]
pub struct AggregateFixture<A: Aggregate> {
    state: A,
    version: u64,
}

impl<A: Aggregate> AggregateFixture<A> {
    /// A fresh aggregate, no history.
    pub fn given_nothing() -> Self {
        AggregateFixture {
            state: A::default(),
            version: 0,
        }
    }

    /// An aggregate that has seen these events.
    pub fn given<E: Into<A::Event>>(events: impl IntoIterator<Item = E>) -> Self {
        let mut fixture = Self::given_nothing();
        for event in events {
            fixture.state.apply(&event.into());
            fixture.version += 1;
        }
        fixture
    }

    /// Sends a command.
    pub fn when(self, command: A::Command) -> Then<A> {
        let outcome = self.state.handle(&command);
        Then {
            state: self.state,
            version: self.version,
            outcome,
        }
    }
}

/// The outcome of a command in an [`AggregateFixture`].
#[derive(Debug)]
pub struct Then<A: Aggregate> {
    state: A,
    version: u64,
    outcome: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> Then<A> {
    /// Asserts the command produced exactly these events, and that each survives a round trip
    /// through its stored form (name, version, JSON payload). Returns the state after them.
    ///
    /// # Panics
    /// When the outcome differs.
    #[track_caller]
    pub fn then_expect_events<E: Into<A::Event>>(self, expected: impl IntoIterator<Item = E>) -> A
    where
        A::Event: PartialEq,
    {
        let expected: Vec<A::Event> = expected.into_iter().map(Into::into).collect();
        let events = match self.outcome {
            Ok(events) => events,
            Err(e) => panic!("expected events {expected:?}, but the command was rejected: {e}"),
        };
        assert_eq!(events, expected, "the command produced other events");
        let mut state = self.state;
        for (i, event) in events.iter().enumerate() {
            let envelope = envelope_of(A::TYPE, "fixture", self.version + i as u64 + 1, 0, event);
            match A::Event::decode(&envelope) {
                Ok(Some(back)) => assert_eq!(&back, event, "event does not survive serialization"),
                Ok(None) => panic!(
                    "event `{}` is not in its own event set",
                    envelope.event_name
                ),
                Err(e) => panic!("event {event:?} does not decode from its stored form: {e}"),
            }
            state.apply(event);
        }
        state
    }

    /// Asserts the command was rejected with this error.
    ///
    /// # Panics
    /// When the outcome differs.
    #[track_caller]
    pub fn then_expect_error(self, expected: A::Error)
    where
        A::Error: PartialEq,
    {
        match self.outcome {
            Ok(events) => panic!("expected rejection {expected:?}, but got events {events:?}"),
            Err(e) => assert_eq!(e, expected, "rejected, with another error"),
        }
    }

    /// Asserts the command was rejected, and returns the error.
    ///
    /// # Panics
    /// When the command was accepted.
    #[track_caller]
    pub fn then_expect_rejection(self) -> A::Error {
        match self.outcome {
            Ok(events) => panic!("expected a rejection, but got events {events:?}"),
            Err(e) => e,
        }
    }

    /// The raw outcome.
    pub fn outcome(self) -> Result<Vec<A::Event>, A::Error>
    where
        A::Error: Debug,
    {
        self.outcome
    }
}
