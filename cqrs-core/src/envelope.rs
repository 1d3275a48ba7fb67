//! Events as they are stored and carried: envelopes and their metadata.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::EventRef;

/// Who and what caused an event: ids for tracing a flow across services, and free key/values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Unique id of this event.
    pub event_id: Uuid,
    /// The id shared by everything one outside request set off.
    pub correlation_id: Uuid,
    /// The id of the message that directly caused this one: the event that caused the
    /// command, else the command.
    pub causation_id: Option<Uuid>,
    /// The id of the command whose handling recorded this event (`None` for an event appended
    /// without the gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<Uuid>,
    /// The idempotency key the command was sent with, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The key that decides which bus partition carries the event, when it is not the
    /// stream id: the id of the view the event changes (a comment routed by its product).
    /// A stream keeps one routing key for its whole life; stores fill it in on the events
    /// that do not name it (see [`crate::routing`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_key: Option<String>,
    /// When the event was committed (as the writer's clock saw it).
    pub timestamp: DateTime<Utc>,
    /// Free key/values: user id, tenant, request path...
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub user: BTreeMap<String, String>,
}

impl Metadata {
    /// Fresh metadata with a new event id and a new correlation id.
    pub fn new() -> Self {
        let id = Uuid::new_v4();
        Metadata {
            event_id: id,
            correlation_id: id,
            causation_id: None,
            command_id: None,
            idempotency_key: None,
            routing_key: None,
            timestamp: now(),
            user: BTreeMap::new(),
        }
    }
}

/// User metadata keys starting with this belong to the framework: the gateway refuses them in
/// a command's metadata, and backends drop them from what they store.
pub const RESERVED_PREFIX: &str = "cqrs.";

/// The key under which a backend that keeps metadata as one map of strings (a `json` column,
/// a message header) stores [`Metadata::command_id`]. Keys starting with `cqrs.` are reserved.
pub const COMMAND_ID_KEY: &str = "cqrs.command_id";
/// As [`COMMAND_ID_KEY`], for [`Metadata::idempotency_key`].
pub const IDEMPOTENCY_KEY: &str = "cqrs.idempotency_key";
/// As [`COMMAND_ID_KEY`], for [`Metadata::routing_key`].
pub const ROUTING_KEY: &str = "cqrs.routing_key";

/// A stored map of metadata (see [`Metadata::stored_map`]) split into its parts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredParts {
    /// The user key/values.
    pub user: BTreeMap<String, String>,
    /// [`Metadata::command_id`].
    pub command_id: Option<Uuid>,
    /// [`Metadata::idempotency_key`].
    pub idempotency_key: Option<String>,
    /// [`Metadata::routing_key`].
    pub routing_key: Option<String>,
}

impl StoredParts {
    /// The metadata these parts complete with what every envelope carries besides them: its
    /// event id, correlation id, causation id and timestamp (as a backend reads them back).
    pub fn into_metadata(
        self,
        event_id: Uuid,
        correlation_id: Uuid,
        causation_id: Option<Uuid>,
        timestamp: DateTime<Utc>,
    ) -> Metadata {
        Metadata {
            event_id,
            correlation_id,
            causation_id,
            command_id: self.command_id,
            idempotency_key: self.idempotency_key,
            routing_key: self.routing_key,
            timestamp,
            user: self.user,
        }
    }
}

impl Metadata {
    /// The user key/values with the command id, idempotency key and routing key added under
    /// their reserved keys: what a backend stores as one map of strings. Borrowed when there
    /// is nothing to add.
    /// User keys under [`RESERVED_PREFIX`] are left out, so that none can pass for the
    /// framework's own.
    pub fn stored_map(&self) -> std::borrow::Cow<'_, BTreeMap<String, String>> {
        let reserved = self.user.keys().any(|k| k.starts_with(RESERVED_PREFIX));
        if self.command_id.is_none()
            && self.idempotency_key.is_none()
            && self.routing_key.is_none()
            && !reserved
        {
            return std::borrow::Cow::Borrowed(&self.user);
        }
        let mut map = self.user.clone();
        map.retain(|k, _| !k.starts_with(RESERVED_PREFIX));
        if let Some(id) = self.command_id {
            map.insert(COMMAND_ID_KEY.to_owned(), id.to_string());
        }
        if let Some(key) = &self.idempotency_key {
            map.insert(IDEMPOTENCY_KEY.to_owned(), key.clone());
        }
        if let Some(key) = &self.routing_key {
            map.insert(ROUTING_KEY.to_owned(), key.clone());
        }
        std::borrow::Cow::Owned(map)
    }

    /// Splits a stored map (see [`stored_map`](Self::stored_map)) into the user key/values
    /// and the framework's own keys.
    ///
    /// # Errors
    /// The reason, when the stored command id is not a UUID.
    pub fn split_stored_map(
        mut map: BTreeMap<String, String>,
    ) -> std::result::Result<StoredParts, String> {
        let command_id = match map.remove(COMMAND_ID_KEY) {
            Some(text) => Some(
                Uuid::parse_str(&text)
                    .map_err(|e| format!("`{COMMAND_ID_KEY}` is not a UUID: {e}"))?,
            ),
            None => None,
        };
        let idempotency_key = map.remove(IDEMPOTENCY_KEY);
        let routing_key = map.remove(ROUTING_KEY);
        Ok(StoredParts {
            user: map,
            command_id,
            idempotency_key,
            routing_key,
        })
    }
}

/// The current time in microseconds, the precision every backend keeps (a timestamp read back
/// from PostgreSQL equals the one written).
pub fn now() -> DateTime<Utc> {
    let t = Utc::now();
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

impl Default for Metadata {
    fn default() -> Self {
        Self::new()
    }
}

/// An event ready to be appended: its name, schema version, JSON payload and metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// The stable event name.
    pub event_name: String,
    /// The schema version of the payload.
    pub event_version: u32,
    /// The event serialized as JSON.
    pub payload: Bytes,
    /// Ids and key/values.
    pub metadata: Metadata,
}

/// An event as stored: where it sits, what it is, and the bytes of its payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The stream (aggregate instance) id.
    pub stream_id: String,
    /// The aggregate type that wrote the stream, e.g. `"product"`.
    pub aggregate_type: String,
    /// The version of the stream after this event: 1 for the first event.
    pub version: u64,
    /// The position in the global log: 1 for the first event ever stored.
    pub position: u64,
    /// The stable event name.
    pub event_name: String,
    /// The schema version of the payload.
    pub event_version: u32,
    /// The JSON payload.
    pub payload: Bytes,
    /// Ids, timestamp and key/values.
    pub metadata: Metadata,
}

impl Envelope {
    /// The key that decides which bus partition carries this event: its
    /// [`Metadata::routing_key`], else its stream id.
    pub fn routing_key(&self) -> &str {
        self.metadata
            .routing_key
            .as_deref()
            .unwrap_or(&self.stream_id)
    }

    /// Where this event sits, for error messages.
    pub fn event_ref(&self) -> EventRef {
        EventRef {
            stream_id: self.stream_id.clone(),
            version: self.version,
            position: self.position,
            event_name: self.event_name.clone(),
            event_version: self.event_version,
        }
    }
}

/// What a writer expects a stream's current version to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// The stream must be at exactly this version (0: the stream must not exist).
    Exact(u64),
    /// No check: append at whatever version the stream has.
    Any,
}

impl ExpectedVersion {
    /// The stream must not exist yet.
    pub const NEW: ExpectedVersion = ExpectedVersion::Exact(0);
}
