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
    /// The id of the command or event that directly caused this one.
    pub causation_id: Option<Uuid>,
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
            timestamp: now(),
            user: BTreeMap::new(),
        }
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
