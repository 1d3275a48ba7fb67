//! Commands over HTTP: send one through the gateway, answer with what it recorded.

use cqrs_core::{Aggregate, Command, CommandGateway, Envelope};
use serde::{Deserialize, Serialize};

use crate::{ApiError, Json};

/// What a command answers: the aggregate, its version after the command, and the events it
/// recorded (none when the command changed nothing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// The aggregate's id.
    pub id: String,
    /// Its version after the command (absent when nothing was recorded).
    pub version: Option<u64>,
    /// The names of the events recorded.
    pub events: Vec<String>,
}

impl Accepted {
    /// The answer for the events a command recorded on aggregate `id`.
    pub fn new(id: impl Into<String>, events: &[Envelope]) -> Self {
        Accepted {
            id: id.into(),
            version: events.last().map(|e| e.version),
            events: events.iter().map(|e| e.event_name.clone()).collect(),
        }
    }
}

/// Sends a command that names its aggregate and answers with what it recorded; its failure as
/// an [`ApiError`] (a rejection through `From<A::Error> for ApiError`).
///
/// # Errors
/// The command's failure, mapped to HTTP.
pub async fn send<C>(gateway: &CommandGateway, command: C) -> Result<Json<Accepted>, ApiError>
where
    C: Command,
    C::Aggregate: Aggregate<Command = C>,
    ApiError: From<<C::Aggregate as Aggregate>::Error>,
{
    let id = command.aggregate_id().to_owned();
    let events = gateway.send(command).await?;
    Ok(Json(Accepted::new(id, &events)))
}

/// Sends a command to aggregate `id` of type `A` and answers as [`send`] does.
///
/// # Errors
/// The command's failure, mapped to HTTP.
pub async fn send_to<A>(
    gateway: &CommandGateway,
    id: &str,
    command: A::Command,
) -> Result<Json<Accepted>, ApiError>
where
    A: Aggregate,
    ApiError: From<A::Error>,
{
    let events = gateway.send_to::<A>(id, command).await?;
    Ok(Json(Accepted::new(id, &events)))
}
