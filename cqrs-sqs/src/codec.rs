//! Envelopes as SQS messages: the payload is the body (as text where SQS takes it as it is,
//! else base64, said by [`BODY`]), and the headers of [`cqrs_core::wire`] travel in one
//! message attribute, [`HEADERS`], a JSON object, since SQS carries at most 10 attributes.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_sqs::types::{Message, MessageAttributeValue, MessageSystemAttributeName};
use cqrs_core::processor::Rejected;
use cqrs_core::wire::{self, Received};
use cqrs_core::{Envelope, Error, EventRef, Result};

/// The message attribute that holds an envelope's headers, as a JSON object of strings.
pub const HEADERS: &str = "cqrs.headers";
/// The message attribute that says how the body holds the payload: absent for the payload's
/// own text, `base64` for a payload that is not text SQS accepts, `empty` for an empty
/// payload (SQS refuses an empty body; the body is then `-`).
pub const BODY: &str = "cqrs.body";
/// The message attribute of a dead letter's reason.
pub const REASON: &str = "cqrs.dlq.reason";

/// A message to send: its body and attributes, and its size as SQS counts it.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub(crate) body: String,
    pub(crate) attributes: Vec<(&'static str, String)>,
    pub(crate) size: usize,
}

/// Whether SQS takes this text as a body or attribute value as it is: XML characters only.
fn sqs_text(text: &str) -> bool {
    text.chars().all(|c| {
        matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}')
            || c >= '\u{10000}'
    })
}

fn event_ref(e: &Envelope) -> EventRef {
    EventRef {
        stream_id: e.stream_id.clone(),
        version: e.version,
        position: e.position,
        event_name: e.event_name.clone(),
        event_version: e.event_version,
    }
}

/// The message of an envelope, with `reason` for a dead letter.
///
/// # Errors
/// [`Error::TooLarge`] when it is larger than `limit` bytes.
pub(crate) fn encode(e: &Envelope, reason: Option<&str>, limit: usize) -> Result<Outgoing> {
    let headers: BTreeMap<&str, String> = wire::headers(e, true)
        .into_iter()
        .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()))
        .collect();
    let headers = serde_json::to_string(&headers).map_err(|source| Error::Serialize {
        what: format!("the headers of {}", event_ref(e)),
        source,
    })?;
    // JSON escapes control characters but not the two non-characters SQS refuses.
    let headers = headers
        .replace('\u{FFFE}', "\\ufffe")
        .replace('\u{FFFF}', "\\uffff");
    let mut attributes = vec![(HEADERS, headers)];
    let body = match std::str::from_utf8(&e.payload) {
        Ok("") => {
            attributes.push((BODY, "empty".to_owned()));
            "-".to_owned()
        }
        Ok(text) if sqs_text(text) => text.to_owned(),
        _ => {
            attributes.push((BODY, "base64".to_owned()));
            aws_smithy_types::base64::encode(&e.payload)
        }
    };
    if let Some(reason) = reason {
        let reason: String = reason
            .chars()
            .filter(|c| sqs_text(&c.to_string()))
            .collect();
        attributes.push((REASON, reason));
    }
    // SQS counts the body and each attribute's name, data type and value.
    let size = body.len()
        + attributes
            .iter()
            .map(|(name, value)| name.len() + "String".len() + value.len())
            .sum::<usize>();
    if size > limit {
        return Err(Error::TooLarge {
            event: event_ref(e),
            size,
            limit,
        });
    }
    Ok(Outgoing {
        body,
        attributes,
        size,
    })
}

/// The message attribute values of an outgoing message.
pub(crate) fn attribute_values(out: &Outgoing) -> Result<HashMap<String, MessageAttributeValue>> {
    out.attributes
        .iter()
        .map(|(name, value)| {
            let value = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()
                .map_err(|e| Error::backend("sqs", "building a message attribute", e))?;
            Ok(((*name).to_owned(), value))
        })
        .collect()
}

/// A received message, as far as the bus needs it.
#[derive(Debug, Clone)]
pub(crate) struct Incoming {
    pub(crate) id: String,
    pub(crate) receipt: String,
    pub(crate) receives: u64,
    body_empty: bool,
    /// Whether it came first in its receive: only such a message is suspected of crashing
    /// the batches it was in (the others were received behind it).
    pub(crate) first: bool,
    headers: Option<String>,
    body_base64: bool,
    body: String,
}

impl Incoming {
    /// What the bus needs of a message; `None` for one without a receipt handle (which SQS
    /// never sends).
    pub(crate) fn of(m: &Message) -> Option<Self> {
        let system = |name: MessageSystemAttributeName| {
            m.attributes()
                .and_then(|a| a.get(&name))
                .map(String::as_str)
        };
        let attribute = |name: &str| {
            m.message_attributes()
                .and_then(|a| a.get(name))
                .and_then(|v| v.string_value())
        };
        Some(Incoming {
            id: m.message_id()?.to_owned(),
            receipt: m.receipt_handle()?.to_owned(),
            receives: system(MessageSystemAttributeName::ApproximateReceiveCount)
                .and_then(|n| n.parse().ok())
                .unwrap_or(1),
            first: false,
            headers: attribute(HEADERS).map(str::to_owned),
            body_base64: attribute(BODY) == Some("base64"),
            body_empty: attribute(BODY) == Some("empty"),
            body: m.body().unwrap_or_default().to_owned(),
        })
    }

    fn payload(&self) -> Result<Vec<u8>, String> {
        if self.body_empty {
            Ok(Vec::new())
        } else if self.body_base64 {
            aws_smithy_types::base64::decode(&self.body)
                .map_err(|e| format!("the body is not base64: {e}"))
        } else {
            Ok(self.body.as_bytes().to_vec())
        }
    }

    fn headers(&self) -> Result<BTreeMap<String, String>, String> {
        let text = self
            .headers
            .as_deref()
            .ok_or_else(|| format!("message attribute `{HEADERS}` is missing"))?;
        serde_json::from_str(text).map_err(|e| format!("message attribute `{HEADERS}`: {e}"))
    }

    /// The envelope this message carries, or why it carries none.
    pub(crate) fn decode(&self) -> Result<Envelope, String> {
        let headers = self.headers()?;
        let payload = self.payload()?;
        Received::of(headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes())))
            .envelope(None, &payload)
    }

    /// What can be read of a message that is not an envelope (or was received too often),
    /// for the projection's dead letters. Without an event id header, its id is derived from
    /// the message id, the same on every receive.
    pub(crate) fn rejected(&self, queue: &str, reason: String) -> Rejected {
        let headers = self.headers().unwrap_or_default();
        let payload = self
            .payload()
            .unwrap_or_else(|_| self.body.as_bytes().to_vec());
        let source = format!("{queue}/{}", self.id);
        let fallback = wire::stable_id(source.bytes(), source.len() as u64);
        let received = Received::of(headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes())));
        Rejected {
            envelope: received.salvage(None, &payload, source, fallback),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use cqrs_testing::raw_envelope;

    #[test]
    fn text_payloads_go_as_they_are_and_bytes_as_base64() {
        let e = raw_envelope("t", "s-1", 1, 1, "t.E", 1, "{\"a\":1}");
        let out = encode(&e, None, 262_144).unwrap();
        assert_eq!(out.body, "{\"a\":1}");
        assert_eq!(out.attributes.len(), 1);
        let empty = encode(&raw_envelope("t", "s-1", 1, 1, "t.E", 1, ""), None, 262_144).unwrap();
        assert_eq!(empty.body, "-", "SQS refuses an empty body");
        assert!(empty
            .attributes
            .iter()
            .any(|(n, v)| *n == BODY && v == "empty"));
        let mut odd = raw_envelope("t", "s-\u{FFFE}", 1, 1, "t.E", 1, "{}");
        odd.metadata.routing_key = None;
        let out = encode(&odd, None, 262_144).unwrap();
        assert!(
            out.attributes.iter().all(|(_, v)| sqs_text(v)),
            "{:?}",
            out.attributes
        );
        let headers: BTreeMap<String, String> = serde_json::from_str(&out.attributes[0].1).unwrap();
        assert_eq!(headers["cqrs.stream_id"], "s-\u{FFFE}");
        let mut e = raw_envelope("t", "s-1", 1, 1, "t.E", 1, "");
        e.payload = bytes::Bytes::from_static(&[0, 159, 146, 150]);
        let out = encode(&e, None, 262_144).unwrap();
        assert!(out
            .attributes
            .iter()
            .any(|(n, v)| *n == BODY && v == "base64"));
        assert_eq!(
            aws_smithy_types::base64::decode(&out.body).unwrap(),
            vec![0, 159, 146, 150]
        );
    }

    #[test]
    fn a_message_over_the_limit_is_a_typed_error() {
        let e = raw_envelope("t", "s-1", 7, 1, "t.E", 1, "x".repeat(300_000));
        match encode(&e, None, 262_144) {
            Err(Error::TooLarge { event, size, limit }) => {
                assert_eq!((event.stream_id.as_str(), event.version), ("s-1", 7));
                assert!(size > 300_000, "{size}");
                assert_eq!(limit, 262_144);
            }
            other => panic!("{other:?}"),
        }
    }
}
