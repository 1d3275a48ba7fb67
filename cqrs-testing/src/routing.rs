//! The event-store conformance check of routing keys (see [`cqrs_core::routing`]).

use std::sync::Arc;

use cqrs_core::envelope::{Envelope, ExpectedVersion, NewEvent};
use cqrs_core::error::Error;
use cqrs_core::store::EventStore;

use super::conformance::{event, read_settled};

fn routed(n: u64, key: Option<&str>) -> NewEvent {
    let mut e = event(n);
    e.metadata.routing_key = key.map(str::to_owned);
    e
}

fn keys(events: &[Envelope]) -> Vec<&str> {
    events.iter().map(Envelope::routing_key).collect()
}

fn assert_refused(
    outcome: cqrs_core::Result<Vec<Envelope>>,
    stream: &str,
    stream_key: &str,
    named: &str,
) {
    match outcome {
        Err(Error::RoutingKeyChanged {
            stream_id,
            expected,
            actual,
        }) => assert_eq!(
            (stream_id.as_str(), expected.as_str(), actual.as_str()),
            (stream, stream_key, named),
            "the error names the stream, its key and the key refused"
        ),
        other => panic!("a changed routing key must be refused: {other:?}"),
    }
}

/// A stream keeps one routing key for its whole life: the key its first append names (else
/// its id) is on every event of the stream, also those that name none, in what `append`
/// returns and in both read paths; an event naming another key is refused with
/// [`Error::RoutingKeyChanged`], whatever the expected version, and writes nothing.
pub async fn streams_keep_their_routing_key<S: EventStore>(store: Arc<S>) {
    // The first append names the key on its second event only: all of it routes by it.
    let first = store
        .append(
            "comment",
            "c-1",
            ExpectedVersion::NEW,
            vec![routed(1, None), routed(2, Some("p-1"))],
        )
        .await
        .expect("first append");
    assert_eq!(keys(&first), ["p-1", "p-1"], "one key for the whole append");
    let inherited = store
        .append("comment", "c-1", ExpectedVersion::Exact(2), vec![event(3)])
        .await
        .expect("an event naming no key");
    assert_eq!(keys(&inherited), ["p-1"], "an event naming none inherits");
    // A stale version too (every backend checks the key first: no retry mends it).
    for expected in [
        ExpectedVersion::Exact(3),
        ExpectedVersion::Any,
        ExpectedVersion::Exact(0),
    ] {
        let outcome = store
            .append("comment", "c-1", expected, vec![routed(4, Some("p-2"))])
            .await;
        assert_refused(outcome, "c-1", "p-1", "p-2");
    }
    let same = store
        .append(
            "comment",
            "c-1",
            ExpectedVersion::Any,
            vec![routed(4, Some("p-1"))],
        )
        .await
        .expect("the same key");
    assert_eq!(keys(&same), ["p-1"]);

    // A stream routed by its own id keeps it: naming the id is no change, another key is.
    store
        .append("product", "p-9", ExpectedVersion::NEW, vec![event(1)])
        .await
        .expect("routed by id");
    let own = store
        .append(
            "product",
            "p-9",
            ExpectedVersion::Exact(1),
            vec![routed(2, Some("p-9"))],
        )
        .await
        .expect("naming its own id");
    assert_eq!(own[0].metadata.routing_key, None, "its own id is no key");
    let outcome = store
        .append(
            "product",
            "p-9",
            ExpectedVersion::Exact(2),
            vec![routed(3, Some("x"))],
        )
        .await;
    assert_refused(outcome, "p-9", "p-9", "x");
    // Naming the stream id on a stream routed by another key is naming none: it inherits.
    let own_on_routed = store
        .append(
            "comment",
            "c-1",
            ExpectedVersion::Exact(4),
            vec![routed(5, Some("c-1"))],
        )
        .await
        .expect("naming the stream id on a routed stream");
    assert_eq!(keys(&own_on_routed), ["p-1"], "inherits the stream's key");
    // An empty key is malformed, not a key.
    let outcome = store
        .append(
            "comment",
            "c-3",
            ExpectedVersion::NEW,
            vec![routed(1, Some(""))],
        )
        .await;
    assert!(
        matches!(outcome, Err(Error::Malformed { .. })),
        "an empty key: {outcome:?}"
    );

    // Two keys in one append: refused, nothing written, the stream is still new.
    let outcome = store
        .append(
            "comment",
            "c-2",
            ExpectedVersion::NEW,
            vec![routed(1, Some("p-1")), routed(2, Some("p-2"))],
        )
        .await;
    assert_refused(outcome, "c-2", "p-1", "p-2");
    assert!(store.read_stream("c-2", 0).await.expect("read").is_empty());

    let stream = store.read_stream("c-1", 0).await.expect("read");
    assert_eq!(
        keys(&stream),
        ["p-1"; 5],
        "read_stream: the refused wrote nothing"
    );
    let log = read_settled(store.as_ref()).await;
    let c1: Vec<&Envelope> = log.iter().filter(|e| e.stream_id == "c-1").collect();
    assert_eq!(c1.len(), 5, "read_all");
    assert!(
        c1.iter().all(|e| e.routing_key() == "p-1"),
        "read_all: {c1:?}"
    );
    assert!(
        c1.iter()
            .all(|e| !e.metadata.user.contains_key("cqrs.routing_key")),
        "the key is not a user key"
    );
}
