//! What travels with a command: its ids, its cause, its idempotency key, key/values.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::envelope::Envelope;

/// Ids and key/values that travel with a command into the events it causes.
///
/// Every event a command records carries the command's id (`command_id`) and a causation id:
/// the id of the event that caused the command when there is one ([`caused_by`](Self::caused_by)),
/// else the command's own id. So a chain event -> command -> event can be followed both ways.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandMetadata {
    /// The command's id, stored in every event it records. A new one when `None`.
    pub command_id: Option<Uuid>,
    /// The correlation id of the flow the command belongs to; the command id when `None`.
    pub correlation_id: Option<Uuid>,
    /// The id of the message (an event) that caused the command: its events' causation id.
    /// When `None` the events name the command itself as their cause.
    pub causation_id: Option<Uuid>,
    /// Sent twice with the same key, a command is recorded once: the second send returns the
    /// events of the first (see [`CommandGateway::send_with`](super::CommandGateway::send_with)).
    pub idempotency_key: Option<String>,
    /// Free key/values copied into every event's metadata.
    pub user: BTreeMap<String, String>,
}

impl CommandMetadata {
    /// A command that reacts to an event: same correlation id, the event as its cause, and the
    /// event's key/values.
    pub fn caused_by(envelope: &Envelope) -> Self {
        CommandMetadata {
            command_id: None,
            correlation_id: Some(envelope.metadata.correlation_id),
            causation_id: Some(envelope.metadata.event_id),
            idempotency_key: None,
            user: envelope
                .metadata
                .user
                .iter()
                .filter(|(k, _)| !k.starts_with(crate::envelope::RESERVED_PREFIX))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// Sets the idempotency key: a retried request (a client that timed out and sends again)
    /// records its events once.
    #[must_use]
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Adds a key/value.
    #[must_use]
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.user.insert(key.into(), value.into());
        self
    }
}
