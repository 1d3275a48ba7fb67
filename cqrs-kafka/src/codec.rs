//! Envelopes as Kafka records: the key is the routing key (the stream id, unless the event
//! names another; then the stream id travels in its header), the value the payload, the rest
//! travels in one binary header ([`compact`]), or in the named headers of the wire contract
//! ([`cqrs_core::wire`]) where the configuration asks for them. Records of either kind are
//! read.

use bytes::Bytes;
use cqrs_core::processor::Rejected;
use cqrs_core::wire::{self, compact, Received};
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
    /// The record of an envelope on `topic`: its metadata in one header, or in the named
    /// headers when `named`.
    pub(crate) fn of(topic: String, e: &Envelope, named: bool) -> Record {
        // The stream id travels as the key, unless a routing key took its place.
        let with_stream_id = e.routing_key() != e.stream_id;
        let headers = if named {
            wire::headers(e, with_stream_id)
        } else {
            vec![(compact::ENVELOPE, compact::encode(e, with_stream_id))]
        };
        Record {
            topic,
            key: e.routing_key().as_bytes().to_vec(),
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

fn received<M: Message>(message: &M) -> Received<'_> {
    Received::of(
        message
            .headers()
            .into_iter()
            .flat_map(|h| h.iter())
            .filter_map(|h| Some((h.key, h.value?))),
    )
}

/// The record's `cqrs.envelope` header (`Some(None)`: there, without a value): the first
/// header of this bus's own records, else wherever another tool moved it.
fn envelope_header<M: Message>(message: &M) -> Option<Option<&[u8]>> {
    let headers = message.headers()?;
    match headers.try_get(0) {
        Some(first) if first.key == compact::ENVELOPE => Some(first.value),
        _ => headers
            .iter()
            .find(|h| h.key == compact::ENVELOPE)
            .map(|h| h.value),
    }
}

/// Decodes a record into an envelope, or says why it cannot: from its `cqrs.envelope`
/// header where it has one, else from the named headers, read in one pass.
pub(crate) fn decode<M: Message>(message: &M) -> Result<Envelope, String> {
    let payload = message.payload().unwrap_or_default();
    if let Some(header) = envelope_header(message) {
        let header = header.ok_or("header `cqrs.envelope` is empty")?;
        let key = message.key().map(std::str::from_utf8).transpose();
        let key = key.map_err(|_| "the key is not UTF-8")?;
        return compact::decode(header, key, payload);
    }
    let received = received(message);
    let stream_id = match received.get(wire::STREAM_ID) {
        // Routed by another key: the stream id is in its header.
        Some(_) => None,
        None => {
            let key = message.key().ok_or("the record has no key (stream id)")?;
            Some(std::str::from_utf8(key).map_err(|_| "the key is not UTF-8")?)
        }
    };
    received.envelope(stream_id, payload)
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
    let payload = message.payload().unwrap_or_default();
    if let Some(Some(header)) = envelope_header(message) {
        let key = message.key().map(String::from_utf8_lossy);
        let envelope = compact::salvage(header, key.as_deref(), payload, source, fallback);
        return Rejected { envelope, reason };
    }
    let received = received(message);
    let key = match received.get(wire::STREAM_ID) {
        Some(_) => None,
        None => message.key().map(String::from_utf8_lossy),
    };
    Rejected {
        envelope: received.salvage(key.as_deref(), payload, source, fallback),
        reason,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use cqrs_core::Metadata;
    use rdkafka::message::{OwnedMessage, Timestamp};

    fn envelope(routing_key: Option<&str>) -> Envelope {
        let mut metadata = Metadata::new();
        metadata.routing_key = routing_key.map(str::to_owned);
        Envelope {
            stream_id: "comment-7".into(),
            aggregate_type: "comment".into(),
            version: 3,
            position: 41,
            event_name: "shop.CommentPosted".into(),
            event_version: 1,
            payload: Bytes::from_static(br#"{"text":"ok"}"#),
            metadata,
        }
    }

    /// The record as a consumer receives it.
    fn delivered(record: &Record, headers: Option<OwnedHeaders>) -> OwnedMessage {
        OwnedMessage::new(
            Some(record.payload.to_vec()),
            Some(record.key.clone()),
            record.topic.clone(),
            Timestamp::NotAvailable,
            2,
            17,
            headers,
        )
    }

    #[test]
    fn a_record_keyed_by_its_stream_reads_back_whole() {
        for named in [false, true] {
            let sent = envelope(None);
            let record = Record::of("comment".into(), &sent, named);
            assert_eq!(record.key, b"comment-7");
            assert_eq!(record.headers.len(), if named { 8 } else { 1 });
            assert!(record.headers.iter().all(|(k, _)| *k != wire::STREAM_ID));
            let back = decode(&delivered(&record, Some(record.headers()))).unwrap();
            assert_eq!(back, sent, "named: {named}");
            assert_eq!(back.routing_key(), "comment-7");
        }
    }

    #[test]
    fn a_routed_record_is_keyed_by_its_route_and_names_its_stream() {
        for named in [false, true] {
            let sent = envelope(Some("product-1"));
            let record = Record::of("comment".into(), &sent, named);
            assert_eq!(record.key, b"product-1");
            let back = decode(&delivered(&record, Some(record.headers()))).unwrap();
            assert_eq!(back.stream_id, "comment-7", "the header wins over the key");
            assert_eq!(back.routing_key(), "product-1");
            assert_eq!(back, sent, "named: {named}");
        }
    }

    #[test]
    fn the_envelope_header_is_found_behind_a_header_another_tool_put_first() {
        let sent = envelope(Some("product-1"));
        let record = Record::of("comment".into(), &sent, false);
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "traceparent",
                value: Some("00-abc-def-01".as_bytes()),
            })
            .insert(Header {
                key: compact::ENVELOPE,
                value: Some(record.headers[0].1.as_slice()),
            });
        assert_eq!(decode(&delivered(&record, Some(headers))).unwrap(), sent);
    }

    #[test]
    fn a_routed_record_with_a_damaged_envelope_header_keeps_what_came_before_the_damage() {
        let sent = envelope(Some("product-1"));
        let record = Record::of("comment".into(), &sent, false);
        let mut header = record.headers[0].1.clone();
        header.truncate(header.len() - 3); // into the metadata, after the stream id
        let headers = OwnedHeaders::new().insert(Header {
            key: compact::ENVELOPE,
            value: Some(header.as_slice()),
        });
        let message = delivered(&record, Some(headers));
        let reason = decode(&message).unwrap_err();
        let dead = rejected(&message, reason).envelope;
        assert_eq!(dead.stream_id, "comment-7", "not the routing key");
        assert_eq!(dead.metadata.event_id, sent.metadata.event_id);
        assert_eq!(
            (dead.event_name.as_str(), dead.version),
            ("shop.CommentPosted", 3)
        );
        assert!(dead.metadata.user.contains_key(wire::DLQ_SOURCE));
    }

    #[test]
    fn a_record_with_a_damaged_envelope_header_is_rejected_keeping_its_key() {
        let record = Record::of("comment".into(), &envelope(None), false);
        let mut header = record.headers[0].1.clone();
        header.truncate(10);
        let headers = OwnedHeaders::new().insert(Header {
            key: compact::ENVELOPE,
            value: Some(header.as_slice()),
        });
        let message = delivered(&record, Some(headers));
        let reason = decode(&message).unwrap_err();
        assert!(reason.starts_with("header `cqrs.envelope`"), "{reason}");
        let dead = rejected(&message, reason).envelope;
        assert_eq!(dead.stream_id, "comment-7");
        assert_eq!(dead.payload, record.payload);
    }

    #[test]
    fn a_record_without_headers_is_rejected_with_a_stable_id_and_its_key() {
        let record = Record::of("comment".into(), &envelope(Some("product-1")), false);
        let message = delivered(&record, None);
        let reason = decode(&message).unwrap_err();
        let first = rejected(&message, reason.clone());
        let again = rejected(&message, reason);
        assert_eq!(
            first.envelope.metadata.event_id,
            again.envelope.metadata.event_id
        );
        assert_eq!(
            first.envelope.stream_id, "product-1",
            "the key is all it has"
        );
        assert_eq!(first.envelope.payload, record.payload);
    }

    #[test]
    fn a_routed_record_with_a_bad_header_keeps_its_stream_and_route() {
        let sent = envelope(Some("product-1"));
        let record = Record::of("comment".into(), &sent, true);
        let headers = record
            .headers
            .iter()
            .filter(|(k, _)| *k != wire::EVENT_ID)
            .fold(OwnedHeaders::new(), |h, (k, v)| {
                h.insert(Header {
                    key: k,
                    value: Some(v.as_slice()),
                })
            });
        let message = delivered(&record, Some(headers));
        let reason = decode(&message).unwrap_err();
        let dead = rejected(&message, reason).envelope;
        assert_eq!(dead.stream_id, "comment-7");
        assert_eq!(dead.metadata.routing_key.as_deref(), Some("product-1"));
        assert_eq!(dead.event_name, "shop.CommentPosted");
    }
}
