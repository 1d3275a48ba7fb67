//! The wire contract every bus shares: an envelope travels as its payload plus named headers,
//! whatever the broker (Kafka record headers, AMQP message headers, Redis stream fields).
//! One definition here keeps every bus readable by every other tool that speaks it. Where
//! each header costs, a bus may carry the same fields in one binary header instead
//! ([`compact`]); its readers take both.

pub mod compact;

use std::collections::BTreeMap;

use bytes::Bytes;
use uuid::Uuid;

use crate::envelope::{Envelope, Metadata};

/// The event's name.
pub const EVENT: &str = "cqrs.event";
/// The version of the event's schema.
pub const EVENT_VERSION: &str = "cqrs.event_version";
/// The aggregate type the stream belongs to.
pub const AGGREGATE: &str = "cqrs.aggregate_type";
/// The stream id, on buses whose messages have no key of their own.
pub const STREAM_ID: &str = "cqrs.stream_id";
/// The version of the event in its stream.
pub const VERSION: &str = "cqrs.version";
/// The event's position in the store's global log.
pub const POSITION: &str = "cqrs.position";
/// The event's id.
pub const EVENT_ID: &str = "cqrs.event_id";
/// The correlation id.
pub const CORRELATION: &str = "cqrs.correlation_id";
/// The causation id, when there is one.
pub const CAUSATION: &str = "cqrs.causation_id";
/// When the event was recorded, in microseconds since the Unix epoch.
pub const TIMESTAMP: &str = "cqrs.timestamp";
/// The rest of the metadata (user keys, command id, idempotency key) as a JSON object.
pub const META: &str = "cqrs.meta";
/// Why a message is on a dead-letter topic or queue.
pub const DLQ_REASON: &str = "cqrs.dlq.reason";
/// Where a message that could not be read came from (kept in its dead letter's metadata).
pub const DLQ_SOURCE: &str = "cqrs.dlq.source";

/// The headers of an envelope, in a fixed order. `with_stream_id` adds [`STREAM_ID`], for
/// buses whose messages carry no key.
pub fn headers(e: &Envelope, with_stream_id: bool) -> Vec<(&'static str, Vec<u8>)> {
    let m = &e.metadata;
    let mut headers = Vec::with_capacity(11);
    if with_stream_id {
        headers.push((STREAM_ID, e.stream_id.as_bytes().to_vec()));
    }
    headers.extend([
        (EVENT, e.event_name.as_bytes().to_vec()),
        (EVENT_VERSION, e.event_version.to_string().into_bytes()),
        (AGGREGATE, e.aggregate_type.as_bytes().to_vec()),
        (VERSION, e.version.to_string().into_bytes()),
        (POSITION, e.position.to_string().into_bytes()),
        (EVENT_ID, m.event_id.to_string().into_bytes()),
        (CORRELATION, m.correlation_id.to_string().into_bytes()),
        (
            TIMESTAMP,
            m.timestamp.timestamp_micros().to_string().into_bytes(),
        ),
    ]);
    if let Some(causation) = m.causation_id {
        headers.push((CAUSATION, causation.to_string().into_bytes()));
    }
    let stored = m.stored_map();
    if !stored.is_empty() {
        // A JSON object of strings, written through `Display`, which cannot fail.
        let object: serde_json::Map<String, serde_json::Value> = stored
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        headers.push((
            META,
            serde_json::Value::Object(object).to_string().into_bytes(),
        ));
    }
    headers
}

/// The headers of a message, as far as they are there, read in one pass.
#[derive(Debug, Default, Clone, Copy)]
pub struct Received<'a> {
    slots: [Option<&'a [u8]>; 11],
}

const NAMES: [&str; 11] = [
    EVENT,
    EVENT_VERSION,
    AGGREGATE,
    VERSION,
    POSITION,
    EVENT_ID,
    CORRELATION,
    CAUSATION,
    TIMESTAMP,
    META,
    STREAM_ID,
];

impl<'a> Received<'a> {
    /// Reads the headers this contract names; others are ignored.
    pub fn of(headers: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Self {
        let mut received = Received::default();
        for (name, value) in headers {
            if let Some(slot) = NAMES.iter().position(|n| *n == name) {
                received.slots[slot] = Some(value);
            }
        }
        received
    }

    /// One header's raw value.
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        NAMES
            .iter()
            .position(|n| *n == name)
            .and_then(|slot| self.slots[slot])
    }

    fn text(&self, name: &str) -> Result<&'a str, String> {
        let bytes = self
            .get(name)
            .ok_or_else(|| format!("header `{name}` is missing"))?;
        std::str::from_utf8(bytes).map_err(|_| format!("header `{name}` is not UTF-8"))
    }

    fn number<T: std::str::FromStr>(&self, name: &str) -> Result<T, String> {
        self.text(name)?
            .parse()
            .map_err(|_| format!("header `{name}` is not a number"))
    }

    fn uuid(&self, name: &str) -> Result<Uuid, String> {
        Uuid::try_parse_ascii(
            self.get(name)
                .ok_or_else(|| format!("header `{name}` is missing"))?,
        )
        .map_err(|_| format!("header `{name}` is not a UUID"))
    }

    /// The envelope these headers and this payload describe, or why they do not describe one.
    /// `stream_id` is the message's key where the bus has keys, else the [`STREAM_ID`] header.
    ///
    /// # Errors
    /// A header that is missing or unreadable, named in the message.
    pub fn envelope(&self, stream_id: Option<&str>, payload: &[u8]) -> Result<Envelope, String> {
        let stream_id = match stream_id {
            Some(id) => id,
            None => self.text(STREAM_ID)?,
        };
        let micros: i64 = self.number(TIMESTAMP)?;
        let timestamp = chrono::DateTime::from_timestamp_micros(micros)
            .ok_or_else(|| format!("header `{TIMESTAMP}` is out of range"))?;
        let causation_id = match self.get(CAUSATION) {
            Some(_) => Some(self.uuid(CAUSATION)?),
            None => None,
        };
        let stored: BTreeMap<String, String> = match self.get(META) {
            Some(bytes) => {
                serde_json::from_slice(bytes).map_err(|e| format!("header `{META}`: {e}"))?
            }
            None => BTreeMap::new(),
        };
        let parts =
            Metadata::split_stored_map(stored).map_err(|e| format!("header `{META}`: {e}"))?;
        Ok(Envelope {
            stream_id: stream_id.to_owned(),
            aggregate_type: self.text(AGGREGATE)?.to_owned(),
            version: self.number(VERSION)?,
            position: self.number(POSITION)?,
            event_name: self.text(EVENT)?.to_owned(),
            event_version: self.number(EVENT_VERSION)?,
            payload: Bytes::copy_from_slice(payload),
            metadata: parts.into_metadata(
                self.uuid(EVENT_ID)?,
                self.uuid(CORRELATION)?,
                causation_id,
                timestamp,
            ),
        })
    }

    /// What can be read of a message that is not an envelope, for the projection's dead
    /// letters: whatever headers parse, the raw payload, and `source` (where it came from)
    /// under [`DLQ_SOURCE`]. Its event id is the header's, else `fallback_id`, which the bus
    /// derives from where the message sits or what it holds, so that a redelivery is
    /// dead-lettered under the same id.
    pub fn salvage(
        &self,
        stream_id: Option<&str>,
        payload: &[u8],
        source: String,
        fallback_id: Uuid,
    ) -> Envelope {
        let text = |name| self.text(name).ok();
        let number = |name| text(name).and_then(|t| t.parse::<u64>().ok());
        let event_id = self.uuid(EVENT_ID).unwrap_or(fallback_id);
        let mut metadata = Metadata::new();
        metadata.event_id = event_id;
        metadata.correlation_id = self.uuid(CORRELATION).unwrap_or(event_id);
        metadata.causation_id = self.uuid(CAUSATION).ok();
        metadata.user.insert(DLQ_SOURCE.to_owned(), source);
        // The routing key, where the metadata header still parses: a retry then stores the
        // dead letter's view under the key it travelled by.
        metadata.routing_key = self
            .get(META)
            .and_then(|bytes| serde_json::from_slice::<BTreeMap<String, String>>(bytes).ok())
            .and_then(|mut map| map.remove(crate::envelope::ROUTING_KEY));
        Envelope {
            stream_id: stream_id
                .or_else(|| text(STREAM_ID))
                .unwrap_or_default()
                .to_owned(),
            aggregate_type: text(AGGREGATE).unwrap_or_default().to_owned(),
            version: number(VERSION).unwrap_or(0),
            position: number(POSITION).unwrap_or(0),
            event_name: text(EVENT).unwrap_or_default().to_owned(),
            event_version: number(EVENT_VERSION)
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(0),
            payload: Bytes::copy_from_slice(payload),
            metadata,
        }
    }
}

/// A stable id from bytes (FNV-1a, 64 bits) and a number: for messages without an event id.
pub fn stable_id(bytes: impl IntoIterator<Item = u8>, n: u64) -> Uuid {
    Uuid::from_u64_pair(fnv1a(bytes), n)
}

fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The partition (0 to `partitions - 1`) of a key, for buses that partition by hand (RabbitMQ
/// queues, Redis streams): FNV-1a of the key's bytes, the same in every process and release.
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    (fnv1a(key.bytes()) % u64::from(partitions.max(1))) as u32
}

/// An envelope with any name, version and payload, for the tests of this module.
#[cfg(test)]
pub(crate) fn raw_envelope(
    aggregate_type: &str,
    stream_id: &str,
    version: u64,
    position: u64,
    event_name: &str,
    event_version: u32,
    payload: &'static str,
) -> Envelope {
    Envelope {
        stream_id: stream_id.to_owned(),
        aggregate_type: aggregate_type.to_owned(),
        version,
        position,
        event_name: event_name.to_owned(),
        event_version,
        payload: bytes::Bytes::from_static(payload.as_bytes()),
        metadata: crate::envelope::Metadata::new(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_envelope_survives_its_headers() {
        let mut e = raw_envelope("t", "s-1", 3, 9, "x.Y", 2, "{}");
        e.metadata.causation_id = Some(Uuid::new_v4());
        e.metadata.user.insert("k".into(), "v".into());
        e.metadata.command_id = Some(Uuid::new_v4());
        let headers = headers(&e, true);
        let received = Received::of(headers.iter().map(|(k, v)| (*k, v.as_slice())));
        assert_eq!(received.envelope(None, b"{}").unwrap(), e);
        let without = Received::of(headers.iter().skip(1).map(|(k, v)| (*k, v.as_slice())));
        assert_eq!(
            without.envelope(None, b"{}").unwrap_err(),
            "header `cqrs.stream_id` is missing"
        );
    }

    #[test]
    fn partitions_are_stable_and_spread() {
        assert_eq!(partition_of("s-1", 8), partition_of("s-1", 8));
        let used: std::collections::HashSet<u32> = (0..100)
            .map(|i| partition_of(&format!("s-{i}"), 8))
            .collect();
        assert_eq!(used.len(), 8);
        assert!(used.iter().all(|p| *p < 8));
    }
}
