//! The metrics the framework records, through the [`metrics`](https://docs.rs/metrics) facade:
//! install any recorder (a Prometheus exporter, say: `cqrs-axum` serves one at `/metrics`) and
//! they appear; without one they cost a check each.
//!
//! Names follow one scheme: `cqrs_<unit of work>_<what>[_<unit>][_total]`, Prometheus style:
//! counters end in `_total`, durations are in seconds, and each carries one label naming its
//! unit: `projection`, `relay` or `aggregate`.
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `cqrs_processor_events_applied_total` | counter | projection | events applied (committed with their views) |
//! | `cqrs_processor_batch_seconds` | histogram | projection | one batch: fold, commit, retries included |
//! | `cqrs_processor_dead_letters_total` | counter | projection | events dead-lettered |
//! | `cqrs_processor_view_conflicts_total` | counter | projection | units of work refused because a view changed concurrently (folded again) |
//! | `cqrs_processor_commit_retries_total` | counter | projection | units of work that failed on a transient backend error (a write conflict in the view store, a lost connection) and were tried again |
//! | `cqrs_processor_segments_held` | gauge | projection | segments this instance holds, for a projection run in segments |
//! | `cqrs_processor_claims_lost_total` | counter | projection | segments another instance took while this one held them (its commit was refused) |
//! | `cqrs_processor_releases_failed_total` | counter | projection | segments this instance could not give back (a transient error or no answer in half a lease): free again once their lease ends |
//! | `cqrs_processor_lag_seconds` | gauge | projection | now minus the timestamp of the last applied event (of the oldest in the batch under way, so a stall grows it); 0 once the feed had nothing more (set as it changes and on each health report) |
//! | `cqrs_processor_lag_events` | gauge | projection | store feeds: the log's head minus the position (set on each health report) |
//! | `cqrs_processor_position` | gauge | projection | the largest position committed (set on each health report) |
//! | `cqrs_store_held_back_seconds` | gauge | none | how long the transaction holding the log's readers back has run; 0 while none does, -1 when one does but its age cannot be seen (set on each health report) |
//! | `cqrs_relay_events_published_total` | counter | relay | events the bus confirmed |
//! | `cqrs_relay_failures_total` | counter | relay | failed publishes or reads (each retried) |
//! | `cqrs_relay_breaker` | gauge | relay | 0 closed, 1 half open, 2 open (set as it changes and on each health report) |
//! | `cqrs_relay_position` | gauge | relay | the last position published (set on each health report) |
//! | `cqrs_command_seconds` | histogram | aggregate, outcome | a command through the gateway, retries included; outcome `committed`, `rejected`, `refused`, `conflict` or `failed` |
//! | `cqrs_command_conflicts_total` | counter | aggregate | optimistic conflicts met (each retried, or the last one given up on) |
//! | `cqrs_command_retries_total` | counter | aggregate | commands tried again after a conflict |

use std::time::Duration;

use crate::relay::Breaker;

/// Events applied, per projection.
pub const PROCESSOR_EVENTS_APPLIED: &str = "cqrs_processor_events_applied_total";
/// One batch's duration, per projection.
pub const PROCESSOR_BATCH_SECONDS: &str = "cqrs_processor_batch_seconds";
/// Events dead-lettered, per projection.
pub const PROCESSOR_DEAD_LETTERS: &str = "cqrs_processor_dead_letters_total";
/// Units of work refused by a concurrent view change, per projection.
pub const PROCESSOR_VIEW_CONFLICTS: &str = "cqrs_processor_view_conflicts_total";
/// Units of work tried again after a transient backend error, per projection.
pub const PROCESSOR_COMMIT_RETRIES: &str = "cqrs_processor_commit_retries_total";
/// Segments held by this instance, per projection.
pub const PROCESSOR_SEGMENTS_HELD: &str = "cqrs_processor_segments_held";
/// Segments lost to another instance, per projection.
pub const PROCESSOR_CLAIMS_LOST: &str = "cqrs_processor_claims_lost_total";
/// Seconds the transaction holding the log's readers back has run (0: none does).
pub const STORE_HELD_BACK_SECONDS: &str = "cqrs_store_held_back_seconds";
/// Segments whose release failed (free again after their lease), per projection.
pub const PROCESSOR_RELEASES_FAILED: &str = "cqrs_processor_releases_failed_total";
/// Seconds behind, per projection.
pub const PROCESSOR_LAG_SECONDS: &str = "cqrs_processor_lag_seconds";
/// Events behind the store's head, per store-fed projection.
pub const PROCESSOR_LAG_EVENTS: &str = "cqrs_processor_lag_events";
/// The committed position, per projection.
pub const PROCESSOR_POSITION: &str = "cqrs_processor_position";
/// Events published, per relay.
pub const RELAY_EVENTS_PUBLISHED: &str = "cqrs_relay_events_published_total";
/// Failed publishes or reads, per relay.
pub const RELAY_FAILURES: &str = "cqrs_relay_failures_total";
/// The breaker's state, per relay.
pub const RELAY_BREAKER: &str = "cqrs_relay_breaker";
/// The published position, per relay.
pub const RELAY_POSITION: &str = "cqrs_relay_position";
/// A command's duration, per aggregate type and outcome.
pub const COMMAND_SECONDS: &str = "cqrs_command_seconds";
/// Optimistic conflicts met, per aggregate type.
pub const COMMAND_CONFLICTS: &str = "cqrs_command_conflicts_total";
/// Commands tried again after a conflict, per aggregate type.
pub const COMMAND_RETRIES: &str = "cqrs_command_retries_total";

/// A committed batch of a projection.
pub(crate) fn batch(projection: &str, applied: usize, dead: usize, took: Duration) {
    let label = ("projection", projection.to_owned());
    metrics::counter!(PROCESSOR_EVENTS_APPLIED, std::slice::from_ref(&label))
        .increment(applied as u64);
    if dead > 0 {
        metrics::counter!(PROCESSOR_DEAD_LETTERS, std::slice::from_ref(&label))
            .increment(dead as u64);
    }
    metrics::histogram!(PROCESSOR_BATCH_SECONDS, &[label]).record(took.as_secs_f64());
}

/// A unit of work refused by a concurrent view change.
pub(crate) fn view_conflict(projection: &str) {
    metrics::counter!(PROCESSOR_VIEW_CONFLICTS, "projection" => projection.to_owned()).increment(1);
}

/// A unit of work that failed on a transient backend error, tried again.
pub(crate) fn commit_retry(projection: &str) {
    metrics::counter!(PROCESSOR_COMMIT_RETRIES, "projection" => projection.to_owned()).increment(1);
}

/// How many segments this instance holds.
pub(crate) fn segments_held(projection: &str, held: usize) {
    metrics::gauge!(PROCESSOR_SEGMENTS_HELD, "projection" => projection.to_owned())
        .set(held as f64);
}

/// A segment lost to another instance.
pub(crate) fn claim_lost(projection: &str) {
    metrics::counter!(PROCESSOR_CLAIMS_LOST, "projection" => projection.to_owned()).increment(1);
}

/// How long the transaction holding the log back has run (0: none does).
pub(crate) fn held_back(seconds: f64) {
    metrics::gauge!(STORE_HELD_BACK_SECONDS).set(seconds);
}

/// A segment this instance could not give back (it is free after its lease).
pub(crate) fn release_failed(projection: &str) {
    metrics::counter!(PROCESSOR_RELEASES_FAILED, "projection" => projection.to_owned())
        .increment(1);
}

/// How far behind a projection is, in seconds.
pub(crate) fn lag_seconds(projection: &str, seconds: f64) {
    metrics::gauge!(PROCESSOR_LAG_SECONDS, "projection" => projection.to_owned()).set(seconds);
}

/// A processor's position, its lag in seconds and, for a store feed, in events.
pub(crate) fn processor_position(
    projection: &str,
    position: u64,
    lag: Option<u64>,
    seconds: Option<f64>,
) {
    let label = ("projection", projection.to_owned());
    metrics::gauge!(PROCESSOR_POSITION, std::slice::from_ref(&label)).set(position as f64);
    if let Some(seconds) = seconds {
        metrics::gauge!(PROCESSOR_LAG_SECONDS, std::slice::from_ref(&label)).set(seconds);
    }
    if let Some(lag) = lag {
        metrics::gauge!(PROCESSOR_LAG_EVENTS, &[label]).set(lag as f64);
    }
}

/// Events a relay published.
pub(crate) fn published(relay: &str, events: usize) {
    metrics::counter!(RELAY_EVENTS_PUBLISHED, "relay" => relay.to_owned()).increment(events as u64);
}

/// A relay's failed publish or read.
pub(crate) fn relay_failure(relay: &str) {
    metrics::counter!(RELAY_FAILURES, "relay" => relay.to_owned()).increment(1);
}

/// A relay's breaker state.
pub(crate) fn breaker(relay: &str, state: Breaker) {
    let value = match state {
        Breaker::Closed => 0.0,
        Breaker::HalfOpen => 1.0,
        Breaker::Open => 2.0,
    };
    metrics::gauge!(RELAY_BREAKER, "relay" => relay.to_owned()).set(value);
}

/// A relay's breaker and published position.
pub(crate) fn relay_state(relay: &str, state: Breaker, position: u64) {
    breaker(relay, state);
    metrics::gauge!(RELAY_POSITION, "relay" => relay.to_owned()).set(position as f64);
}

/// A command's end.
pub(crate) fn command(aggregate: &'static str, outcome: &'static str, took: Duration) {
    metrics::histogram!(COMMAND_SECONDS, "aggregate" => aggregate, "outcome" => outcome)
        .record(took.as_secs_f64());
}

/// An optimistic conflict met by a command; `retried` when it is tried again.
pub(crate) fn command_conflict(aggregate: &'static str, retried: bool) {
    metrics::counter!(COMMAND_CONFLICTS, "aggregate" => aggregate).increment(1);
    if retried {
        metrics::counter!(COMMAND_RETRIES, "aggregate" => aggregate).increment(1);
    }
}
