//! Envelopes as Kafka records: the key is the stream id, the value the payload, the rest
//! travels in headers.

use std::collections::BTreeMap;

use bytes::Bytes;
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

/// The same record, headed for a dead-letter topic with the reason.
pub(crate) fn dead_letter<M: Message>(message: &M, topic: String, reason: &str) -> Record {
    let mut headers: Vec<(&'static str, Vec<u8>)> = Vec::new();
    for name in [
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
    ] {
        if let Some(v) = header(message, name) {
            headers.push((name, v.to_vec()));
        }
    }
    headers.push((DLQ_REASON, reason.as_bytes().to_vec()));
    headers.push((
        "cqrs.dlq.source",
        format!(
            "{}/{}/{}",
            message.topic(),
            message.partition(),
            message.offset()
        )
        .into_bytes(),
    ));
    Record {
        topic,
        key: message.key().unwrap_or_default().to_vec(),
        payload: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
        headers,
    }
}
