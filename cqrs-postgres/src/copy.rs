//! Reading the global log with `COPY ... TO STDOUT (FORMAT binary)`.
//!
//! A page of the log is read as one binary COPY and decoded here: a row costs a few length
//! checks and the allocations of its strings, where a result row of the extended protocol
//! costs a type check and a decode per column. Catching up is bound by this decoding, so it
//! runs about twice as fast (see `BENCHMARKS.md`).
//!
//! The format (PostgreSQL's documentation, "COPY", "Binary Format"): a header (an 11-byte
//! signature, 32-bit flags, a 32-bit extension length and the extension), then one tuple per
//! row (a 16-bit field count, then per field a 32-bit length, -1 for NULL, and the value in
//! the type's binary send format), then a 16-bit -1. Integers are big-endian.

use std::collections::BTreeMap;

use bytes::{Buf, Bytes};
use chrono::{DateTime, Utc};
use cqrs_core::envelope::{Envelope, Metadata};
use cqrs_core::{Error, Result};
use futures::StreamExt;
use sqlx::PgPool;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::error::{db, to_the_end};

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// The columns a COPY of the log selects, in the order [`CopyDecoder`] reads them. The two
/// `json` columns go in their binary form, which is their text: a `::text` cast would cost
/// the server an output and an input conversion per row (a fifth of its time on a replay),
/// while `::json` on a `json` column is no conversion at all, and turns a `jsonb` column (a
/// schema not yet migrated past 0002) into text instead of its versioned binary form.
pub(crate) const COPY_COLUMNS: &str = "position, stream_id, aggregate_type, version, event_name, \
     event_version, payload::json, event_id, correlation_id, causation_id, created_at, \
     meta::json";

/// The longest field PostgreSQL can hold (1 GiB).
const MAX_FIELD: usize = 1 << 30;

const FIELDS: i16 = 12;

/// Microseconds from the Unix epoch to PostgreSQL's, 2000-01-01 00:00 UTC.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// Runs a `COPY (SELECT COPY_COLUMNS ...) TO STDOUT (FORMAT binary)` statement and decodes
/// its rows.
///
/// The COPY runs on a task of its own, so that a caller that stops waiting (a processor being
/// stopped) never leaves a connection in the middle of a COPY to go back to the pool: the task
/// sees the caller gone, stops reading, and closes its connection. A connection whose COPY
/// failed is closed too, not returned: the protocol state it is in after an error inside a
/// COPY is not one the pool can check.
pub(crate) async fn read_log(pool: &PgPool, statement: String) -> Result<Vec<Envelope>> {
    let pool = pool.clone();
    // Dropped with this future: the task then stops.
    let (_caller, mut gone) = oneshot::channel::<()>();
    to_the_end("reading the global log", async move {
        let mut conn = pool
            .acquire()
            .await
            .map_err(|e| db("reading the global log", e))?;
        let mut decoder = CopyDecoder::default();
        let outcome = async {
            let mut stream = conn
                .copy_out_raw(&statement)
                .await
                .map_err(|e| db("reading the global log", e))?;
            loop {
                let chunk = tokio::select! {
                    biased;
                    _ = &mut gone => return Err(Error::Backend {
                        backend: "postgres",
                        message: "the reader of the global log stopped waiting".into(),
                        source: None,
                    }),
                    chunk = stream.next() => chunk,
                };
                let Some(chunk) = chunk else { break };
                decoder.feed(&chunk.map_err(|e| db("reading the global log", e))?)?;
            }
            decoder.finish()
        }
        .await;
        if outcome.is_err() {
            conn.close_on_drop();
        }
        outcome
    })
    .await
}

/// Decodes a binary COPY of the log's columns, fed in chunks of any size.
#[derive(Default)]
pub(crate) struct CopyDecoder {
    /// The start of a row that the chunks so far left unfinished.
    partial: Vec<u8>,
    header_read: bool,
    ended: bool,
    events: Vec<Envelope>,
}

fn malformed(reason: impl Into<String>) -> Error {
    Error::Malformed {
        what: "a binary COPY of the global log".into(),
        reason: reason.into(),
    }
}

impl CopyDecoder {
    /// Adds a chunk and decodes every row it completes. Rows are decoded in place: only the
    /// unfinished end of a chunk is copied aside.
    pub(crate) fn feed(&mut self, chunk: &[u8]) -> Result<()> {
        if self.partial.is_empty() {
            let used = self.decode(chunk)?;
            self.partial.extend_from_slice(&chunk[used..]);
        } else {
            let mut data = std::mem::take(&mut self.partial);
            data.extend_from_slice(chunk);
            let used = self.decode(&data)?;
            data.drain(..used);
            self.partial = data;
        }
        Ok(())
    }

    /// Decodes the complete rows at the start of `data`; returns the bytes they took.
    fn decode(&mut self, data: &[u8]) -> Result<usize> {
        let mut at = 0;
        if !self.header_read {
            let Some(length) = header_length(data)? else {
                return Ok(0);
            };
            at = length;
            self.header_read = true;
        }
        while at < data.len() {
            if self.ended {
                return Err(malformed("data after the end of the COPY"));
            }
            let Some(length) = tuple_length(&data[at..])? else {
                break;
            };
            match decode_tuple(&data[at..at + length])? {
                Some(envelope) => self.events.push(envelope),
                None => self.ended = true,
            }
            at += length;
        }
        Ok(at)
    }

    /// The rows decoded, once the COPY ended where the format says it ends.
    pub(crate) fn finish(self) -> Result<Vec<Envelope>> {
        if !self.ended {
            return Err(malformed(format!(
                "the COPY stopped in the middle ({} bytes of an unfinished row, {} rows read)",
                self.partial.len(),
                self.events.len()
            )));
        }
        Ok(self.events)
    }
}

/// The header's length once it is all in `buffer`.
fn header_length(buffer: &[u8]) -> Result<Option<usize>> {
    let fixed = SIGNATURE.len() + 8;
    let signature = &buffer[..buffer.len().min(SIGNATURE.len())];
    if !SIGNATURE.starts_with(signature) {
        return Err(malformed("not a binary COPY (wrong signature)"));
    }
    let Some(mut rest) = buffer.get(SIGNATURE.len()..fixed) else {
        return Ok(None);
    };
    let flags = rest.get_u32();
    // Bit 16 is OIDs, which this decoder does not read; the format requires a reader to stop
    // at any other critical flag (bits 16 to 31) it does not know.
    if flags & 0xFFFF_0000 != 0 {
        return Err(malformed(format!(
            "unknown critical flags {flags:#x} in the header"
        )));
    }
    let extension = rest.get_u32() as usize;
    Ok((buffer.len() >= fixed + extension).then_some(fixed + extension))
}

/// The length of the tuple (or trailer) at the start of `buffer`, once it is all there.
fn tuple_length(buffer: &[u8]) -> Result<Option<usize>> {
    let Some(mut count) = buffer.get(..2) else {
        return Ok(None);
    };
    let count = count.get_i16();
    if count == -1 {
        return Ok(Some(2));
    }
    if count != FIELDS {
        return Err(malformed(format!("a row has {count} fields, not {FIELDS}")));
    }
    let mut at: usize = 2;
    for _ in 0..count {
        let Some(mut length) = buffer.get(at..at.saturating_add(4)) else {
            return Ok(None);
        };
        let length = length.get_i32();
        at += 4;
        match usize::try_from(length) {
            Ok(length) if length <= MAX_FIELD => {
                // Twelve fields of at most 1 GiB: only a 32-bit target could overflow.
                at = at
                    .checked_add(length)
                    .ok_or_else(|| malformed("a row longer than this target can address"))?;
            }
            _ if length == -1 => {}
            _ => return Err(malformed(format!("a field of length {length}"))),
        }
    }
    Ok((buffer.len() >= at).then_some(at))
}

/// One row's fields, read in order.
struct Fields<'a> {
    tuple: &'a [u8],
    position: Option<i64>,
}

impl<'a> Fields<'a> {
    fn error(&self, reason: String) -> Error {
        match self.position {
            Some(position) => Error::Malformed {
                what: format!("event row at position {position}"),
                reason,
            },
            None => malformed(reason),
        }
    }

    /// The next field's bytes, `None` for NULL.
    fn next(&mut self, column: &str) -> Result<Option<&'a [u8]>> {
        if self.tuple.remaining() < 4 {
            return Err(self.error(format!("{column} is missing")));
        }
        let length = self.tuple.get_i32();
        if length < 0 {
            return Ok(None);
        }
        let Some((value, rest)) = self.tuple.split_at_checked(length as usize) else {
            return Err(self.error(format!("{column} is cut short")));
        };
        self.tuple = rest;
        Ok(Some(value))
    }

    fn required(&mut self, column: &str) -> Result<&'a [u8]> {
        self.next(column)?
            .ok_or_else(|| self.error(format!("{column} is NULL")))
    }

    fn array<const N: usize>(&self, bytes: &[u8], column: &str) -> Result<[u8; N]> {
        <[u8; N]>::try_from(bytes)
            .map_err(|_| self.error(format!("{column} has {} bytes, not {N}", bytes.len())))
    }

    fn int8(&mut self, column: &str) -> Result<i64> {
        let bytes = self.required(column)?;
        Ok(i64::from_be_bytes(self.array(bytes, column)?))
    }

    fn int4(&mut self, column: &str) -> Result<i32> {
        let bytes = self.required(column)?;
        Ok(i32::from_be_bytes(self.array(bytes, column)?))
    }

    fn text(&mut self, column: &str) -> Result<&'a str> {
        let bytes = self.required(column)?;
        std::str::from_utf8(bytes).map_err(|e| self.error(format!("{column} is not UTF-8: {e}")))
    }

    fn uuid(&mut self, column: &str) -> Result<Option<Uuid>> {
        match self.next(column)? {
            Some(bytes) => Ok(Some(Uuid::from_bytes(self.array(bytes, column)?))),
            None => Ok(None),
        }
    }
}

/// A row as an envelope; `None` for the trailer.
fn decode_tuple(mut tuple: &[u8]) -> Result<Option<Envelope>> {
    if tuple.get_i16() == -1 {
        return Ok(None);
    }
    let mut row = Fields {
        tuple,
        position: None,
    };
    let position = row.int8("position")?;
    row.position = Some(position);
    let stream_id = row.text("stream_id")?.to_owned();
    let aggregate_type = row.text("aggregate_type")?.to_owned();
    let version = row.int8("version")?;
    let event_name = row.text("event_name")?.to_owned();
    let event_version = row.int4("event_version")?;
    // The payload stays bytes, but it must be text like every other store's.
    let payload = Bytes::copy_from_slice(row.text("payload")?.as_bytes());
    let event_id = row
        .uuid("event_id")?
        .ok_or_else(|| row.error("event_id is NULL".into()))?;
    let correlation_id = row
        .uuid("correlation_id")?
        .ok_or_else(|| row.error("correlation_id is NULL".into()))?;
    let causation_id = row.uuid("causation_id")?;
    let micros = row.int8("created_at")?;
    let timestamp = micros
        .checked_add(PG_EPOCH_MICROS)
        .and_then(DateTime::<Utc>::from_timestamp_micros)
        .ok_or_else(|| row.error(format!("created_at {micros} is out of range")))?;
    let stored: BTreeMap<String, String> = match row.next("meta")? {
        Some(text) => serde_json::from_slice(text)
            .map_err(|e| row.error(format!("metadata is not a map of strings: {e}")))?,
        None => BTreeMap::new(),
    };
    let parts =
        Metadata::split_stored_map(stored).map_err(|e| row.error(format!("metadata: {e}")))?;
    if row.tuple.has_remaining() {
        return Err(row.error("a row has bytes after its last field".into()));
    }
    Ok(Some(Envelope {
        stream_id,
        aggregate_type,
        version: u64::try_from(version)
            .map_err(|_| row.error(format!("negative version {version}")))?,
        position: u64::try_from(position).map_err(|_| row.error("negative position".into()))?,
        event_name,
        event_version: u32::try_from(event_version)
            .map_err(|_| row.error(format!("negative event version {event_version}")))?,
        payload,
        metadata: parts.into_metadata(event_id, correlation_id, causation_id, timestamp),
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn field(out: &mut Vec<u8>, value: Option<&[u8]>) {
        match value {
            Some(v) => {
                out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                out.extend_from_slice(v);
            }
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }

    fn row(position: i64, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&FIELDS.to_be_bytes());
        field(&mut out, Some(&position.to_be_bytes()));
        field(&mut out, Some(b"s-1"));
        field(&mut out, Some(b"thing"));
        field(&mut out, Some(&1i64.to_be_bytes()));
        field(&mut out, Some(b"thing.Happened"));
        field(&mut out, Some(&1i32.to_be_bytes()));
        field(&mut out, Some(payload));
        field(&mut out, Some(&[1; 16]));
        field(&mut out, Some(&[2; 16]));
        field(&mut out, None);
        field(&mut out, Some(&0i64.to_be_bytes()));
        field(&mut out, Some(br#"{"user":"ann"}"#));
        out
    }

    fn copy(rows: &[Vec<u8>]) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        for r in rows {
            out.extend_from_slice(r);
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    #[test]
    fn rows_decode_whatever_the_chunking() {
        let bytes = copy(&[row(7, br#"{"n":1}"#), row(9, br#"{"n":2}"#)]);
        for size in [1, 2, 3, 7, 19, bytes.len()] {
            let mut decoder = CopyDecoder::default();
            for chunk in bytes.chunks(size) {
                decoder.feed(chunk).expect("feed");
            }
            let events = decoder.finish().expect("finish");
            assert_eq!(events.len(), 2, "chunks of {size}");
            assert_eq!(events[0].position, 7);
            assert_eq!(events[1].payload.as_ref(), br#"{"n":2}"#);
            assert_eq!(events[0].metadata.causation_id, None);
            assert_eq!(events[0].metadata.event_id, Uuid::from_bytes([1; 16]));
            assert_eq!(events[0].metadata.user["user"], "ann");
            assert_eq!(
                events[0].metadata.timestamp.timestamp(),
                PG_EPOCH_MICROS / 1_000_000
            );
        }
    }

    #[test]
    fn a_cut_or_corrupt_copy_is_a_typed_error() {
        let bytes = copy(&[row(7, br#"{"n":1}"#)]);
        // Cut short: no trailer.
        let mut decoder = CopyDecoder::default();
        decoder.feed(&bytes[..bytes.len() - 2]).expect("feed");
        assert!(matches!(decoder.finish(), Err(Error::Malformed { .. })));
        // A wrong signature.
        let mut decoder = CopyDecoder::default();
        assert!(decoder.feed(b"PGCOPZ\n").is_err());
        // A payload that is not UTF-8, named by its position.
        let mut decoder = CopyDecoder::default();
        let err = decoder
            .feed(&copy(&[row(5, b"\xff\xfe")]))
            .expect_err("not UTF-8");
        assert!(err.to_string().contains("position 5"), "{err}");
        // A row with a field too long for its type.
        let mut bad = row(6, b"{}");
        bad[2..6].copy_from_slice(&9i32.to_be_bytes());
        bad.insert(6, 0);
        let mut decoder = CopyDecoder::default();
        assert!(decoder.feed(&copy(&[bad])).is_err());
    }
}
