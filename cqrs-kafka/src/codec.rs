//! Envelopes as Kafka records: the key is the stream id, the value the payload, the rest
//! travels in headers.

use std::collections::BTreeMap;

use bytes::Bytes;
use cqrs_core::processor::Rejected;
use cqrs_core::{Envelope, Metadata};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::Message;
use uuid::Uuid;

pub(crate) const EVENT: &str = "cqrs.event";
pub(crate) const EVENT_VERSION: &str = "cqrs.event_version";
pub(crate) const AGGREGATE: &str = "cqrs.aggregate_type";
pub(crate) const VERSION: &str = "cqrs.version";
pub(crate) const POSITION: &str = "cqrs.position";
pub(crate) const EVENT_ID: &str = "cqrs.event_id";
pub(crate) const CORRELATION: &str = "cqrs.correlation_id";
pub(crate) const CAUSATION: &str = "cqrs.causation_id";
pub(crate) const TIMESTAMP: &str = "cqrs.timestamp";
pub(crate) const META: &str = "cqrs.meta";
/// Why a record is on a dead-letter topic.
pub(crate) const DLQ_REASON: &str = "cqrs.dlq.reason";

/// A record ready to send.
#[derive(Clone)]
pub(crate) struct Record {
    pub(crate) topic: String,
    pub(crate) key: Vec<u8>,
    pub(crate) payload: Bytes,
    pub(crate) headers: Vec<(&'static str, Vec<u8>)>,
}

impl Record {
    pub(crate) fn of(topic: String, e: &Envelope) -> Record {
        let m = &e.metadata;
        let mut headers = vec![
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
        ];
        if let Some(causation) = m.causation_id {
            headers.push((CAUSATION, causation.to_string().into_bytes()));
        }
        let stored = m.stored_map();
        if !stored.is_empty() {
            if let Ok(meta) = serde_json::to_vec(&*stored) {
                headers.push((META, meta));
            }
        }
        Record {
            topic,
            key: e.stream_id.as_bytes().to_vec(),
            payload: e.payload.clone(),
            headers,
        }
    }

    pub(crate) fn headers(&self) -> OwnedHeaders {
        self.headers.iter().fold(
            OwnedHeaders::new_with_capacity(self.headers.len()),
            |h, (k, v)| {
                h.insert(Header {
                    key: k,
                    value: Some(v.as_slice()),
                })
            },
        )
    }
}

fn header<'a, M: Message>(message: &'a M, name: &str) -> Option<&'a [u8]> {
    message
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
}

fn text<'a>(name: &str, value: Option<&'a [u8]>) -> Result<&'a str, String> {
    let bytes = value.ok_or_else(|| format!("header `{name}` is missing"))?;
    std::str::from_utf8(bytes).map_err(|_| format!("header `{name}` is not UTF-8"))
}

fn number<T: std::str::FromStr>(name: &str, value: Option<&[u8]>) -> Result<T, String> {
    text(name, value)?
        .parse()
        .map_err(|_| format!("header `{name}` is not a number"))
}

fn uuid(name: &str, value: Option<&[u8]>) -> Result<Uuid, String> {
    Uuid::try_parse_ascii(value.ok_or_else(|| format!("header `{name}` is missing"))?)
        .map_err(|_| format!("header `{name}` is not a UUID"))
}

/// Decodes a record into an envelope, or says why it cannot. The headers are read in one
/// pass.
pub(crate) fn decode<M: Message>(message: &M) -> Result<Envelope, String> {
    let key = message.key().ok_or("the record has no key (stream id)")?;
    let stream_id = std::str::from_utf8(key).map_err(|_| "the key is not UTF-8")?;
    let mut h: [Option<&[u8]>; 10] = [None; 10];
    if let Some(headers) = message.headers() {
        for header in headers.iter() {
            let slot = match header.key {
                EVENT => 0,
                EVENT_VERSION => 1,
                AGGREGATE => 2,
                VERSION => 3,
                POSITION => 4,
                EVENT_ID => 5,
                CORRELATION => 6,
                CAUSATION => 7,
                TIMESTAMP => 8,
                META => 9,
                _ => continue,
            };
            h[slot] = header.value;
        }
    }
    let micros: i64 = number(TIMESTAMP, h[8])?;
    let timestamp = chrono::DateTime::from_timestamp_micros(micros)
        .ok_or_else(|| format!("header `{TIMESTAMP}` is out of range"))?;
    let causation_id = match h[7] {
        Some(_) => Some(uuid(CAUSATION, h[7])?),
        None => None,
    };
    let stored: BTreeMap<String, String> = match h[9] {
        Some(bytes) => {
            serde_json::from_slice(bytes).map_err(|e| format!("header `{META}`: {e}"))?
        }
        None => BTreeMap::new(),
    };
    let (user, command_id, idempotency_key) =
        Metadata::split_stored_map(stored).map_err(|e| format!("header `{META}`: {e}"))?;
    Ok(Envelope {
        stream_id: stream_id.to_owned(),
        aggregate_type: text(AGGREGATE, h[2])?.to_owned(),
        version: number(VERSION, h[3])?,
        position: number(POSITION, h[4])?,
        event_name: text(EVENT, h[0])?.to_owned(),
        event_version: number(EVENT_VERSION, h[1])?,
        payload: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
        metadata: Metadata {
            event_id: uuid(EVENT_ID, h[5])?,
            correlation_id: uuid(CORRELATION, h[6])?,
            causation_id,
            command_id,
            idempotency_key,
            timestamp,
            user,
        },
    })
}

/// Where a record came from, kept in the metadata of a record that could not be read.
pub(crate) const DLQ_SOURCE: &str = "cqrs.dlq.source";

/// What can be read of a record that is not an envelope, for the projection's dead letters:
/// the key as the stream id, whatever headers parse, the raw payload. Its event id is the one
/// its header gives, else one derived from where the record sits, so a redelivery is
/// dead-lettered under the same id.
pub(crate) fn rejected<M: Message>(message: &M, reason: String) -> Rejected {
    let text_of = |name| header(message, name).and_then(|v| std::str::from_utf8(v).ok());
    let number_of = |name| text_of(name).and_then(|t| t.parse::<u64>().ok());
    let uuid_of = |name| header(message, name).and_then(|v| Uuid::try_parse_ascii(v).ok());
    let source = format!(
        "{}/{}/{}",
        message.topic(),
        message.partition(),
        message.offset()
    );
    let event_id = uuid_of(EVENT_ID).unwrap_or_else(|| {
        // FNV-1a of the topic and partition, and the offset: stable, and unique per record.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in message
            .topic()
            .bytes()
            .chain(message.partition().to_be_bytes())
        {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        Uuid::from_u64_pair(h, message.offset() as u64)
    });
    let mut metadata = Metadata::new();
    metadata.event_id = event_id;
    metadata.correlation_id = uuid_of(CORRELATION).unwrap_or(event_id);
    metadata.causation_id = uuid_of(CAUSATION);
    metadata.user.insert(DLQ_SOURCE.to_owned(), source);
    Rejected {
        envelope: Envelope {
            stream_id: message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default(),
            aggregate_type: text_of(AGGREGATE).unwrap_or_default().to_owned(),
            version: number_of(VERSION).unwrap_or(0),
            position: number_of(POSITION).unwrap_or(0),
            event_name: text_of(EVENT).unwrap_or_default().to_owned(),
            event_version: number_of(EVENT_VERSION)
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(0),
            payload: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
            metadata,
        },
        reason,
    }
}
