//! Envelopes as Kafka records: the key is the routing key (the stream id, unless the event
//! names another; then the stream id travels in its header), the value the payload, the rest
//! travels in headers (the wire contract of [`cqrs_core::wire`]).

use bytes::Bytes;
use cqrs_core::processor::Rejected;
use cqrs_core::wire::{self, Received};
use cqrs_core::Envelope;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::Message;

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
        Record {
            topic,
            key: e.routing_key().as_bytes().to_vec(),
            payload: e.payload.clone(),
            // The stream id travels as the key, unless a routing key took its place.
            headers: wire::headers(e, e.routing_key() != e.stream_id),
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

fn received<M: Message>(message: &M) -> Received<'_> {
    Received::of(
        message
            .headers()
            .into_iter()
            .flat_map(|h| h.iter())
            .filter_map(|h| Some((h.key, h.value?))),
    )
}

/// Decodes a record into an envelope, or says why it cannot. The headers are read in one
/// pass.
pub(crate) fn decode<M: Message>(message: &M) -> Result<Envelope, String> {
    let received = received(message);
    let stream_id = match received.get(wire::STREAM_ID) {
        // Routed by another key: the stream id is in its header.
        Some(_) => None,
        None => {
            let key = message.key().ok_or("the record has no key (stream id)")?;
            Some(std::str::from_utf8(key).map_err(|_| "the key is not UTF-8")?)
        }
    };
    received.envelope(stream_id, message.payload().unwrap_or_default())
}

/// What can be read of a record that is not an envelope, for the projection's dead letters:
/// the key as the stream id, whatever headers parse, the raw payload. Its event id is the one
/// its header gives, else one derived from where the record sits, so a redelivery is
/// dead-lettered under the same id.
pub(crate) fn rejected<M: Message>(message: &M, reason: String) -> Rejected {
    let source = format!(
        "{}/{}/{}",
        message.topic(),
        message.partition(),
        message.offset()
    );
    let fallback = wire::stable_id(
        message
            .topic()
            .bytes()
            .chain(message.partition().to_be_bytes()),
        message.offset() as u64,
    );
    let received = received(message);
    let key = match received.get(wire::STREAM_ID) {
        Some(_) => None,
        None => message.key().map(String::from_utf8_lossy),
    };
    Rejected {
        envelope: received.salvage(
            key.as_deref(),
            message.payload().unwrap_or_default(),
            source,
            fallback,
        ),
        reason,
    }
}
