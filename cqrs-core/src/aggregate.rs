//! Aggregates and commands: the pure decision side of the model.

use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::event::EventSet;

/// A consistency boundary: given its state and a command it decides which events happen,
/// and it folds events into its state. Both are pure, so domain tests need no I/O.
///
/// ```
/// use cqrs_core::{Aggregate, Command};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// pub struct Incremented { pub by: u32 }
/// cqrs_core::event!(Incremented, "doc.agg.Incremented");
///
/// pub struct Increment { pub id: String, pub by: u32 }
/// impl Command for Increment {
///     type Aggregate = Counter;
///     fn aggregate_id(&self) -> &str { &self.id }
/// }
///
/// #[derive(Debug, Default, Clone, Serialize, Deserialize)]
/// pub struct Counter { pub total: u64 }
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("a counter only goes up by 1 to 10")]
/// pub struct TooMuch;
///
/// impl Aggregate for Counter {
///     const TYPE: &'static str = "counter";
///     type Command = Increment;
///     type Event = Incremented;
///     type Error = TooMuch;
///
///     fn handle(&self, command: &Increment) -> Result<Vec<Incremented>, TooMuch> {
///         if !(1..=10).contains(&command.by) { return Err(TooMuch); }
///         Ok(vec![Incremented { by: command.by }])
///     }
///     fn apply(&mut self, event: &Incremented) { self.total += u64::from(event.by); }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an aggregate",
    label = "implement `cqrs_core::Aggregate` for `{Self}`: `handle` decides, `apply` folds",
    note = "an aggregate also needs `Default + Clone + Serialize + Deserialize` (derive them)"
)]
pub trait Aggregate:
    Default + Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// The aggregate type, stored with every event and used to name topics: `"product"`.
    const TYPE: &'static str;
    /// The commands it handles: usually an enum. Implement [`Command`] for it (naming its
    /// target) to send it with [`CommandGateway::send`](crate::CommandGateway::send), or send
    /// it to an id with [`CommandGateway::send_to`](crate::CommandGateway::send_to).
    type Command: Send + Sync + 'static;
    /// The events it emits: one [`Event`](crate::Event) or an [`event_set!`](crate::event_set) enum.
    type Event: EventSet;
    /// The domain error returned when a command is refused.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Decides which events a command causes, or refuses it.
    ///
    /// # Errors
    /// The domain's reason to refuse the command.
    fn handle(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Folds one event into the state. It must not fail: the event already happened.
    fn apply(&mut self, event: &Self::Event);
}

/// An intent addressed to one aggregate instance.
///
/// The gateway's [`send`](crate::CommandGateway::send) routes a command to `Self::Aggregate`
/// and to the instance named by [`aggregate_id`](Command::aggregate_id). It is the
/// aggregate's own command type (`Aggregate::Command`), usually an enum of everything the
/// aggregate can be asked. A command type that does not carry its target needs no impl: send it
/// with [`send_to`](crate::CommandGateway::send_to).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a command",
    label = "implement `cqrs_core::Command` for `{Self}` (name its aggregate type and target id), or send it with `gateway.send_to::<TheAggregate>(id, command)`"
)]
pub trait Command: Send + Sync + 'static {
    /// The aggregate that handles it.
    type Aggregate: Aggregate;
    /// The id of the aggregate instance it targets (the stream id).
    fn aggregate_id(&self) -> &str;
    /// A short name for logs and spans; defaults to the Rust type name.
    fn command_name(&self) -> &'static str {
        std::any::type_name::<Self>()
    }
}
