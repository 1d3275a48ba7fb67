//! The envelope's metadata in one binary header, [`ENVELOPE`], for buses where every header
//! costs (Kafka: librdkafka parses each one, and each travels with its name): the same fields
//! as the named headers, in a fixed order, numbers as varints, ids as their 16 bytes.
//!
//! Layout (format 1): the format byte; a flags byte (1: a stream id follows, 2: a causation
//! id, 4: metadata pairs); the event version, version and position as LEB128 varints; the
//! timestamp in microseconds as 8 bytes, big-endian; the event id and correlation id, 16 bytes
//! each; the causation id if flagged; the event name and aggregate type, each a varint length
//! and UTF-8 bytes; the stream id if flagged; the metadata's stored map if flagged, a varint
//! count of key and value pairs in the same string form.

use std::collections::BTreeMap;

use bytes::Bytes;
use uuid::Uuid;

use crate::envelope::{Envelope, Metadata};

/// The header that carries the whole envelope but its payload (and its key, on buses with
/// keys).
pub const ENVELOPE: &str = "cqrs.envelope";

const FORMAT: u8 = 1;
const HAS_STREAM_ID: u8 = 1;
const HAS_CAUSATION: u8 = 2;
const HAS_META: u8 = 4;

/// The [`ENVELOPE`] header of an envelope; `with_stream_id` includes the stream id, for a
/// message whose key is not it.
pub fn encode(e: &Envelope, with_stream_id: bool) -> Vec<u8> {
    let m = &e.metadata;
    let stored = m.stored_map();
    let mut flags = 0;
    if with_stream_id {
        flags |= HAS_STREAM_ID;
    }
    if m.causation_id.is_some() {
        flags |= HAS_CAUSATION;
    }
    if !stored.is_empty() {
        flags |= HAS_META;
    }
    let mut out = Vec::with_capacity(64 + e.event_name.len() + e.aggregate_type.len());
    out.extend([FORMAT, flags]);
    varint(&mut out, u64::from(e.event_version));
    varint(&mut out, e.version);
    varint(&mut out, e.position);
    out.extend(m.timestamp.timestamp_micros().to_be_bytes());
    out.extend(m.event_id.as_bytes());
    out.extend(m.correlation_id.as_bytes());
    if let Some(causation) = m.causation_id {
        out.extend(causation.as_bytes());
    }
    text(&mut out, &e.event_name);
    text(&mut out, &e.aggregate_type);
    if with_stream_id {
        text(&mut out, &e.stream_id);
    }
    if !stored.is_empty() {
        varint(&mut out, stored.len() as u64);
        for (key, value) in stored.iter() {
            text(&mut out, key);
            text(&mut out, value);
        }
    }
    out
}

/// The envelope an [`ENVELOPE`] header and a payload describe. `key` is the stream id where
/// the message's key is it (the header then names none).
///
/// # Errors
/// Why the header does not describe an envelope: another format, cut short, a string that is
/// not UTF-8, a number or timestamp out of range, or no stream id.
pub fn decode(header: &[u8], key: Option<&str>, payload: &[u8]) -> Result<Envelope, String> {
    let bad = |what: String| format!("header `{ENVELOPE}`: {what}");
    let mut r = Reader(header);
    let mut f = Fields::default();
    read(&mut r, &mut f).map_err(bad)?;
    if !r.0.is_empty() {
        return Err(bad(format!("{} bytes after its end", r.0.len())));
    }
    let stream_id = f
        .stream_id
        .or(key)
        .ok_or_else(|| bad("it names no stream id and the message has no key".to_owned()))?;
    let parts = Metadata::split_stored_map(f.stored).map_err(bad)?;
    // Every field was read: the defaults below are never taken.
    let (event_id, correlation_id) = (
        f.event_id.unwrap_or_default(),
        f.correlation_id.unwrap_or_default(),
    );
    let timestamp = f.timestamp.unwrap_or_default();
    Ok(Envelope {
        stream_id: stream_id.to_owned(),
        aggregate_type: f.aggregate_type.to_owned(),
        version: f.version,
        position: f.position,
        event_name: f.event_name.to_owned(),
        event_version: f.event_version,
        payload: Bytes::copy_from_slice(payload),
        metadata: parts.into_metadata(event_id, correlation_id, f.causation_id, timestamp),
    })
}

/// What can be read of a damaged [`ENVELOPE`] header, for a dead letter: every field before
/// the damage (its event id among them, when it got that far, so a redelivery is dead-lettered
/// under the same id), `key` as the stream id unless the header gave one, the raw payload, and
/// `source` under [`DLQ_SOURCE`](super::DLQ_SOURCE). What it could not read is `fallback_id`
/// for the ids and empty or zero for the rest.
pub fn salvage(
    header: &[u8],
    key: Option<&str>,
    payload: &[u8],
    source: String,
    fallback_id: Uuid,
) -> Envelope {
    let mut f = Fields::default();
    // The reason the message was rejected is the decode's; this only says where reading stopped.
    if let Err(stopped) = read(&mut Reader(header), &mut f) {
        tracing::debug!(%stopped, "salvaged a damaged envelope header");
    }
    let mut metadata = Metadata::new();
    metadata.event_id = f.event_id.unwrap_or(fallback_id);
    metadata.correlation_id = f.correlation_id.unwrap_or(metadata.event_id);
    metadata.causation_id = f.causation_id;
    metadata.timestamp = f.timestamp.unwrap_or(metadata.timestamp);
    // The routing key: a retry then stores the dead letter's view under it.
    metadata.routing_key = f.stored.remove(crate::envelope::ROUTING_KEY);
    metadata.user.insert(super::DLQ_SOURCE.to_owned(), source);
    Envelope {
        stream_id: f.stream_id.or(key).unwrap_or_default().to_owned(),
        aggregate_type: f.aggregate_type.to_owned(),
        version: f.version,
        position: f.position,
        event_name: f.event_name.to_owned(),
        event_version: f.event_version,
        payload: Bytes::copy_from_slice(payload),
        metadata,
    }
}

/// A header's fields, as far as they were read.
#[derive(Default)]
struct Fields<'a> {
    event_version: u32,
    version: u64,
    position: u64,
    timestamp: Option<chrono::DateTime<chrono::Utc>>,
    event_id: Option<Uuid>,
    correlation_id: Option<Uuid>,
    causation_id: Option<Uuid>,
    event_name: &'a str,
    aggregate_type: &'a str,
    stream_id: Option<&'a str>,
    stored: BTreeMap<String, String>,
}

/// Reads a header's fields into `f` in order, up to the first that does not read (named in
/// the error).
fn read<'a>(r: &mut Reader<'a>, f: &mut Fields<'a>) -> Result<(), String> {
    let format = r.byte()?;
    if format != FORMAT {
        return Err(format!("format {format} is not one this build reads"));
    }
    let flags = r.byte()?;
    if flags & !(HAS_STREAM_ID | HAS_CAUSATION | HAS_META) != 0 {
        return Err(format!("flags {flags:#04x} are not ones this build reads"));
    }
    f.event_version =
        u32::try_from(r.varint()?).map_err(|_| "the event version is out of range")?;
    f.version = r.varint()?;
    f.position = r.varint()?;
    let micros = i64::from_be_bytes(r.array()?);
    f.timestamp = Some(
        chrono::DateTime::from_timestamp_micros(micros).ok_or("the timestamp is out of range")?,
    );
    f.event_id = Some(Uuid::from_bytes(r.array()?));
    f.correlation_id = Some(Uuid::from_bytes(r.array()?));
    if flags & HAS_CAUSATION != 0 {
        f.causation_id = Some(Uuid::from_bytes(r.array()?));
    }
    f.event_name = r.text()?;
    f.aggregate_type = r.text()?;
    if flags & HAS_STREAM_ID != 0 {
        f.stream_id = Some(r.text()?);
    }
    if flags & HAS_META != 0 {
        for _ in 0..r.varint()? {
            let key = r.text()?;
            f.stored.insert(key.to_owned(), r.text()?.to_owned());
        }
    }
    Ok(())
}

fn varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn text(out: &mut Vec<u8>, s: &str) {
    varint(out, s.len() as u64);
    out.extend(s.as_bytes());
}

/// Reads the header front to back; each step says what was cut short.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, &'static str> {
        let (&b, rest) = self.0.split_first().ok_or("cut short")?;
        self.0 = rest;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, &'static str> {
        let mut n: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let part = u64::from(b & 0x7f);
            if shift == 63 && part > 1 {
                return Err("a number is out of range");
            }
            n |= part << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err("a number is out of range")
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.0.len() < n {
            return Err("cut short");
        }
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], &'static str> {
        let mut array = [0; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }

    fn text(&mut self) -> Result<&'a str, &'static str> {
        let len = usize::try_from(self.varint()?).map_err(|_| "cut short")?;
        std::str::from_utf8(self.take(len)?).map_err(|_| "a string is not UTF-8")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn envelope() -> Envelope {
        let mut e = crate::wire::raw_envelope("comment", "c-7", 3, 41, "shop.Posted", 2, "{}");
        e.metadata.causation_id = Some(Uuid::new_v4());
        e.metadata.command_id = Some(Uuid::new_v4());
        e.metadata.routing_key = Some("p-1".into());
        e.metadata.user.insert("tenant".into(), "acme é".into());
        e
    }

    #[test]
    fn an_envelope_survives_its_header_with_and_without_its_stream_id() {
        let e = envelope();
        let with = encode(&e, true);
        assert_eq!(decode(&with, None, b"{}").unwrap(), e);
        assert_eq!(
            decode(&with, Some("ignored"), b"{}").unwrap(),
            e,
            "the header wins"
        );
        let without = encode(&e, false);
        assert_eq!(decode(&without, Some("c-7"), b"{}").unwrap(), e);
        let reason = decode(&without, None, b"{}").unwrap_err();
        assert!(reason.contains("no stream id"), "{reason}");
        let plain = crate::wire::raw_envelope("t", "s", 1, 1, "x.Y", 1, "1");
        assert_eq!(
            decode(&encode(&plain, false), Some("s"), b"1").unwrap(),
            plain
        );
    }

    #[test]
    fn one_header_is_under_two_fifths_of_the_named_ones() {
        let e =
            crate::wire::raw_envelope("comment", "c-7", 3, 41_000, "shop.CommentPosted", 1, "{}");
        let named: usize = super::super::headers(&e, false)
            .iter()
            .map(|(name, value)| name.len() + value.len())
            .sum();
        let one = ENVELOPE.len() + encode(&e, false).len();
        // 87 against 238 for a product event: under two fifths.
        assert!(one * 5 < named * 2, "{one} bytes against {named}");
    }

    #[test]
    fn a_damaged_header_says_what_is_wrong() {
        let header = encode(&envelope(), true);
        for cut in [0, 1, 5, 20, header.len() - 1] {
            let reason = decode(&header[..cut], None, b"{}").unwrap_err();
            assert!(reason.starts_with("header `cqrs.envelope`"), "{reason}");
        }
        let mut other = header.clone();
        other[0] = 9;
        assert!(decode(&other, None, b"").unwrap_err().contains("format 9"));
        let mut flags = header.clone();
        flags[1] |= 0x80;
        assert!(decode(&flags, None, b"").unwrap_err().contains("flags 0x"));
        let mut longer = header;
        longer.push(0);
        assert!(decode(&longer, None, b"")
            .unwrap_err()
            .contains("1 bytes after"));
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_say_why(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes, Some("k"), b"");
            // Past the format byte too, where the rest is read.
            let _ = decode(&[&[FORMAT][..], &bytes].concat(), None, b"");
        }

        #[test]
        fn any_numbers_names_times_and_metadata_survive(
            version in any::<u64>(), position in any::<u64>(), event_version in any::<u32>(),
            name in "\\PC{0,40}", stream in "\\PC{1,40}", with_stream_id in any::<bool>(),
            micros in -62_000_000_000_000_000i64..250_000_000_000_000_000,
            user in proptest::collection::btree_map("[a-z]{1,8}", "\\PC{0,12}", 0..4),
        ) {
            let mut e = envelope();
            (e.version, e.position, e.event_version) = (version, position, event_version);
            (e.event_name, e.stream_id) = (name, stream);
            e.metadata.timestamp = chrono::DateTime::from_timestamp_micros(micros).unwrap();
            e.metadata.user = user;
            let key = (!with_stream_id).then_some(e.stream_id.as_str());
            prop_assert_eq!(decode(&encode(&e, with_stream_id), key, b"{}").unwrap(), e);
        }

        #[test]
        fn a_cut_or_flipped_header_decodes_or_says_why_and_salvages(
            cut in any::<usize>(), at in any::<usize>(), bits in 1u8..,
        ) {
            let header = encode(&envelope(), true);
            let cut = &header[..cut % header.len()];
            prop_assert!(decode(cut, None, b"").is_err());
            let salvaged = salvage(cut, Some("k"), b"", "t/0/1".into(), Uuid::nil());
            prop_assert!(salvaged.metadata.user.contains_key(super::super::DLQ_SOURCE));
            let mut flipped = header.clone();
            flipped[at % header.len()] ^= bits;
            let _ = decode(&flipped, None, b"");
            let _ = salvage(&flipped, None, b"", String::new(), Uuid::nil());
        }
    }
}
