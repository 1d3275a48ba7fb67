#![doc = include_str!("../README.md")]
//!
//! These are test helpers: they panic, with a message naming the broken expectation, where
//! library code would return an error.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod aggregate;
pub mod bus_conformance;
mod bus_routing;
pub mod bus_torture;
pub mod conformance;
mod faults;
mod projection;
mod routing;
mod segments;
pub mod server;
pub mod view_conformance;

pub use self::aggregate::{AggregateFixture, Then};
pub use self::bus_routing::one_routing_key_reaches_one_member_in_order;
pub use self::faults::{CrashAfterStep, CrashBeforeCheckpoint};
pub use self::projection::ProjectionFixture;
pub use self::routing::streams_keep_their_routing_key;
pub use self::segments::claims_fence_and_expire;

use bytes::Bytes;

use cqrs_core::envelope::{Envelope, Metadata};
use cqrs_core::event::EventSet;

/// Wraps an event in an envelope as if stored at `stream_id`/`version`/`position`, with the
/// routing key the event names.
///
/// # Panics
/// When the event cannot be serialized (a test helper).
pub fn envelope_of<E: EventSet>(
    aggregate_type: &str,
    stream_id: &str,
    version: u64,
    position: u64,
    event: &E,
) -> Envelope {
    let payload = match event.to_payload() {
        Ok(p) => p,
        Err(e) => panic!("event {event:?} does not serialize: {e}"),
    };
    let mut envelope = raw_envelope(
        aggregate_type,
        stream_id,
        version,
        position,
        event.event_name(),
        event.event_version(),
        payload,
    );
    // The routing key the event names, as a store keeps it (none when it is the stream id).
    envelope.metadata.routing_key = event
        .routing_key()
        .filter(|key| *key != stream_id)
        .map(str::to_owned);
    envelope
}

/// An envelope with any name, version and payload bytes: for unknown or corrupted events.
pub fn raw_envelope(
    aggregate_type: &str,
    stream_id: &str,
    version: u64,
    position: u64,
    event_name: &str,
    event_version: u32,
    payload: impl Into<Bytes>,
) -> Envelope {
    Envelope {
        stream_id: stream_id.to_owned(),
        aggregate_type: aggregate_type.to_owned(),
        version,
        position,
        event_name: event_name.to_owned(),
        event_version,
        payload: payload.into(),
        metadata: Metadata::new(),
    }
}
