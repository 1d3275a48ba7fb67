//! Envelopes as AMQP messages: the body is the payload, the rest travels in headers (the wire
//! contract of [`cqrs_core::wire`], with the stream id as a header), plus the standard
//! properties a RabbitMQ tool shows (message id, correlation id, timestamp, persistence).

use cqrs_core::processor::Rejected;
use cqrs_core::wire::{self, Received};
use cqrs_core::Envelope;
use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;

/// The header RabbitMQ's quorum queues set on a redelivery: how many times it was delivered.
const DELIVERY_COUNT: &str = "x-delivery-count";

/// The properties of an envelope's message, with `extra` headers (a dead letter's reason).
pub(crate) fn properties(e: &Envelope, extra: &[(&'static str, Vec<u8>)]) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (name, value) in wire::headers(e, true).iter().chain(extra) {
        headers.insert(
            ShortString::from(*name),
            AMQPValue::LongString(LongString::from(value.clone())),
        );
    }
    let m = &e.metadata;
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(m.event_id.to_string().into())
        .with_correlation_id(m.correlation_id.to_string().into())
        .with_timestamp(u64::try_from(m.timestamp.timestamp()).unwrap_or(0))
        .with_headers(headers)
}

fn received(delivery: &Delivery) -> Received<'_> {
    Received::of(
        delivery
            .properties
            .headers()
            .iter()
            .flat_map(|table| table.inner().iter())
            .filter_map(|(name, value)| match value {
                AMQPValue::LongString(s) => Some((name.as_str(), s.as_bytes())),
                _ => None,
            }),
    )
}

/// How many times the broker has delivered this message before (0 on the first delivery).
pub(crate) fn redeliveries(delivery: &Delivery) -> u64 {
    let count = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|t| t.inner().get(DELIVERY_COUNT).cloned());
    match count {
        Some(AMQPValue::LongLongInt(n)) => u64::try_from(n).unwrap_or(0),
        Some(AMQPValue::LongInt(n)) => u64::try_from(n).unwrap_or(0),
        Some(AMQPValue::LongUInt(n)) => u64::from(n),
        Some(AMQPValue::ShortInt(n)) => u64::try_from(n).unwrap_or(0),
        _ => u64::from(delivery.redelivered),
    }
}

/// Decodes a message into an envelope, or says why it cannot.
pub(crate) fn decode(delivery: &Delivery) -> Result<Envelope, String> {
    received(delivery).envelope(None, &delivery.data)
}

/// What can be read of a message that is not an envelope (or was delivered too often), for
/// the projection's dead letters. Without an event id header, its id is derived from its queue
/// and body, the same on every redelivery.
pub(crate) fn rejected(delivery: &Delivery, queue: &str, reason: String) -> Rejected {
    let fallback = wire::stable_id(
        queue.bytes().chain(delivery.data.iter().copied()),
        delivery.data.len() as u64,
    );
    Rejected {
        envelope: received(delivery).salvage(None, &delivery.data, queue.to_owned(), fallback),
        reason,
    }
}
