//! Routing keys: what decides which partition of a bus, or which segment of a processor,
//! carries an event (a store-fed processor's segments go by the view id instead, see
//! [`Segment`](crate::segment::Segment)).
//!
//! An event's routing key is its stream id unless the event names another
//! ([`Event::routing_key`](crate::Event::routing_key)): the id of the view it changes, so
//! that every event of one view travels through one partition, in order, to one member of a
//! consumer group. A stream keeps one routing key for its whole life, so its own order holds
//! too: the key its first append gives it. Every event store settles an append with
//! [`settle`], checks it against the stream with [`check`], and stores the key on every event
//! of the stream, also those that do not name it (see `docs/adr/0011`).

use crate::envelope::NewEvent;
use crate::error::{Error, Result};

/// Settles the routing key of one append's events: a key equal to the stream id is no key;
/// the events that name one must all name the same, which is then stamped on every event of
/// the append. Returns that key (`None`: the append routes by stream id, or inherits the
/// stream's key).
///
/// An event naming its own stream id as its key names none: it inherits the stream's key, as
/// every event that names none does.
///
/// # Errors
/// [`Error::RoutingKeyChanged`] when two events of the append name different keys;
/// [`Error::Malformed`] for an empty key (it would route every such event to one place by
/// accident).
pub fn settle(stream_id: &str, events: &mut [NewEvent]) -> Result<Option<String>> {
    let mut key: Option<String> = None;
    for event in events.iter_mut() {
        let named = &mut event.metadata.routing_key;
        if named.as_deref() == Some("") {
            return Err(Error::Malformed {
                what: format!(
                    "the routing key of event `{}` in stream `{stream_id}`",
                    event.event_name
                ),
                reason: "it is empty; name none to route by the stream id".into(),
            });
        }
        if named.as_deref() == Some(stream_id) {
            *named = None;
        }
        match (named.as_deref(), key.as_deref()) {
            (Some(named), Some(settled)) if named != settled => {
                return Err(changed(stream_id, Some(settled), named));
            }
            (Some(named), None) => key = Some(named.to_owned()),
            _ => {}
        }
    }
    if let Some(key) = &key {
        for event in events.iter_mut() {
            if event.metadata.routing_key.is_none() {
                event.metadata.routing_key = Some(key.clone());
            }
        }
    }
    Ok(key)
}

/// Checks a settled append against an existing stream whose routing key is `stream_key`
/// (`None`: its id). An append that names no key inherits the stream's.
///
/// # Errors
/// [`Error::RoutingKeyChanged`] when the append names a key the stream does not have.
pub fn check(stream_id: &str, stream_key: Option<&str>, append_key: Option<&str>) -> Result<()> {
    match append_key {
        Some(key) if Some(key) != stream_key => Err(changed(stream_id, stream_key, key)),
        _ => Ok(()),
    }
}

/// The error for a stream routed by `expected` (`None`: its id) given `actual`.
pub fn changed(stream_id: &str, expected: Option<&str>, actual: &str) -> Error {
    Error::RoutingKeyChanged {
        stream_id: stream_id.to_owned(),
        expected: expected.unwrap_or(stream_id).to_owned(),
        actual: actual.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::envelope::Metadata;

    fn event(key: Option<&str>) -> NewEvent {
        let mut metadata = Metadata::new();
        metadata.routing_key = key.map(str::to_owned);
        NewEvent {
            event_name: "t.E".into(),
            event_version: 1,
            payload: bytes::Bytes::from_static(b"{}"),
            metadata,
        }
    }

    fn keys(events: &[NewEvent]) -> Vec<Option<&str>> {
        events
            .iter()
            .map(|e| e.metadata.routing_key.as_deref())
            .collect()
    }

    #[test]
    fn one_named_key_is_stamped_on_the_whole_append() {
        let mut events = vec![event(None), event(Some("p-1")), event(None)];
        assert_eq!(settle("s", &mut events).unwrap().as_deref(), Some("p-1"));
        assert_eq!(keys(&events), [Some("p-1"); 3]);
    }

    #[test]
    fn the_stream_id_as_key_is_no_key() {
        let mut events = vec![event(Some("s")), event(None)];
        assert_eq!(settle("s", &mut events).unwrap(), None);
        assert_eq!(keys(&events), [None, None]);
    }

    #[test]
    fn two_keys_in_one_append_are_refused() {
        let mut events = vec![event(Some("a")), event(Some("b"))];
        let err = settle("s", &mut events).unwrap_err();
        assert!(
            matches!(&err, Error::RoutingKeyChanged { stream_id, expected, actual }
                if stream_id == "s" && expected == "a" && actual == "b"),
            "{err}"
        );
    }

    #[test]
    fn an_empty_key_is_refused() {
        let mut events = vec![event(Some(""))];
        let err = settle("s", &mut events).unwrap_err();
        assert!(matches!(&err, Error::Malformed { .. }), "{err}");
    }

    #[test]
    fn a_stream_keeps_its_key() {
        assert!(check("s", Some("a"), None).is_ok());
        assert!(check("s", Some("a"), Some("a")).is_ok());
        assert!(check("s", None, None).is_ok());
        let err = check("s", None, Some("a")).unwrap_err();
        assert!(
            matches!(&err, Error::RoutingKeyChanged { expected, .. } if expected == "s"),
            "{err}"
        );
        assert!(check("s", Some("a"), Some("b")).is_err());
    }
}
