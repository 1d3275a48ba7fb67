//! Envelopes as stream entries: the wire contract of [`cqrs_core::wire`] as fields (with the
//! stream id as a field), and the payload in the field `payload`.

use cqrs_core::processor::Rejected;
use cqrs_core::wire::{self, Received};
use cqrs_core::Envelope;
use redis::Value;

/// The field that holds an entry's payload.
pub const PAYLOAD: &str = "payload";

/// The fields of an envelope's entry, with `extra` ones (a dead letter's reason).
pub(crate) fn fields(
    e: &Envelope,
    extra: &[(&'static str, Vec<u8>)],
) -> Vec<(&'static str, Vec<u8>)> {
    let mut fields = wire::headers(e, true);
    fields.extend(extra.iter().cloned());
    fields.push((PAYLOAD, e.payload.to_vec()));
    fields
}

/// One entry as read from a stream.
#[derive(Debug, Clone)]
pub(crate) struct Raw {
    pub(crate) id: String,
    pub(crate) fields: Vec<(String, Vec<u8>)>,
}

impl Raw {
    fn received(&self) -> Received<'_> {
        Received::of(
            self.fields
                .iter()
                .filter(|(name, _)| name != PAYLOAD)
                .map(|(name, value)| (name.as_str(), value.as_slice())),
        )
    }

    fn payload(&self) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(name, _)| name == PAYLOAD)
            .map(|(_, value)| value.as_slice())
    }

    /// The envelope this entry carries, or why it carries none.
    pub(crate) fn decode(&self) -> Result<Envelope, String> {
        let payload = self
            .payload()
            .ok_or_else(|| format!("field `{PAYLOAD}` is missing"))?;
        self.received().envelope(None, payload)
    }

    /// What can be read of an entry that is not an envelope (or was delivered too often), for
    /// the projection's dead letters. Without an event id field, its id is derived from its
    /// stream and entry id, the same on every redelivery.
    pub(crate) fn rejected(&self, stream: &str, reason: String) -> Rejected {
        let source = format!("{stream}/{}", self.id);
        let fallback = wire::stable_id(source.bytes(), source.len() as u64);
        let payload = self.payload().unwrap_or_default();
        Rejected {
            envelope: self.received().salvage(None, payload, source, fallback),
            reason,
        }
    }
}

/// The bytes of a string reply.
pub(crate) fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// A string reply as text.
pub(crate) fn text(v: &Value) -> Option<String> {
    bytes(v).map(|b| String::from_utf8_lossy(b).into_owned())
}

/// An array reply's items (nil as none).
pub(crate) fn items(v: &Value) -> &[Value] {
    match v {
        Value::Array(items) | Value::Set(items) => items,
        _ => &[],
    }
}

/// A string reply's bytes, taken out of it.
fn into_bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

/// A string reply as text, taken out of it (lossy only where it is not UTF-8).
fn into_text(v: Value) -> Option<String> {
    into_bytes(v).map(|b| {
        String::from_utf8(b).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    })
}

/// An array reply's items, taken out of it (nil as none).
pub(crate) fn into_items(v: Value) -> Vec<Value> {
    match v {
        Value::Array(items) | Value::Set(items) => items,
        _ => Vec::new(),
    }
}

/// The streams of an `XREAD`/`XREADGROUP` reply, as name and entries: an array of pairs in
/// RESP2, a map in RESP3; none for nil.
pub(crate) fn streams(v: Value) -> Vec<(Vec<u8>, Value)> {
    match v {
        Value::Map(pairs) => pairs
            .into_iter()
            .filter_map(|(name, entries)| Some((into_bytes(name)?, entries)))
            .collect(),
        _ => into_items(v)
            .into_iter()
            .filter_map(|pair| {
                let mut pair = into_items(pair).into_iter();
                match (pair.next(), pair.next(), pair.next()) {
                    (Some(name), Some(entries), None) => Some((into_bytes(name)?, entries)),
                    _ => None,
                }
            })
            .collect(),
    }
}

/// An entry, `[id, [field, value, ...]]`, its strings moved out of the reply rather than
/// copied; `None` for one whose body is gone (trimmed).
pub(crate) fn entry(v: Value) -> Option<Raw> {
    let mut parts = into_items(v).into_iter();
    let (Some(id), Some(body), None) = (parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    let Value::Array(body) = body else {
        return None;
    };
    let id = into_text(id)?;
    let mut fields = Vec::with_capacity(body.len() / 2);
    let mut body = body.into_iter();
    while let (Some(name), Some(value)) = (body.next(), body.next()) {
        if let (Some(name), Some(value)) = (into_text(name), into_bytes(value)) {
            fields.push((name, value));
        }
    }
    Some(Raw { id, fields })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use cqrs_testing::envelope_of;

    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Put {
        n: u64,
    }
    cqrs_core::event!(Put, "codec.Put");

    fn raw(fields: Vec<(&'static str, Vec<u8>)>) -> Raw {
        Raw {
            id: "1-0".into(),
            fields: fields.into_iter().map(|(n, v)| (n.to_owned(), v)).collect(),
        }
    }

    #[test]
    fn an_envelope_travels_as_fields_and_back() {
        let mut e = envelope_of("order", "o-1", 3, 42, &Put { n: 7 });
        e.metadata.routing_key = Some("customer-9".into());
        let back = raw(fields(&e, &[])).decode().unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn an_entry_without_payload_or_headers_says_which_is_missing() {
        let e = envelope_of("order", "o-1", 1, 1, &Put { n: 1 });
        let mut f = fields(&e, &[]);
        f.retain(|(n, _)| *n != PAYLOAD);
        assert!(raw(f).decode().unwrap_err().contains("payload"));
        let bare = raw(vec![(PAYLOAD, b"{}".to_vec())]);
        assert!(bare.decode().unwrap_err().contains("cqrs.stream_id"));
        let a = bare.rejected("s:order:0", "why".into());
        let b = bare.rejected("s:order:0", "why".into());
        assert_eq!(a.envelope.metadata.event_id, b.envelope.metadata.event_id);
        assert_eq!(&a.envelope.payload[..], b"{}");
    }

    #[test]
    fn replies_parse_and_trimmed_entries_are_skipped() {
        let v = Value::Array(vec![
            Value::BulkString(b"5-1".to_vec()),
            Value::Array(vec![
                Value::BulkString(b"payload".to_vec()),
                Value::BulkString(b"x".to_vec()),
            ]),
        ]);
        let r = entry(v).unwrap();
        assert_eq!(r.id, "5-1");
        assert_eq!(r.payload(), Some(&b"x"[..]));
        let gone = Value::Array(vec![Value::BulkString(b"5-2".to_vec()), Value::Nil]);
        assert!(entry(gone).is_none());
    }
}
