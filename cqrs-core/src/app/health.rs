//! The health report of a running service: its relays and processors.

use serde::{Deserialize, Serialize};

use crate::relay::Breaker;
use crate::store::HeldBack;

/// How a service is doing: `ok`, or `degraded` once a processor has stopped (its read model
/// no longer follows the events) or a relay has. A relay whose circuit is open (the bus is
/// down) is reported with its breaker but does not degrade the service: events wait in the
/// store and commands go on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// `ok` or `degraded`.
    pub status: Status,
    /// Each relay.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relays: Vec<RelayHealth>,
    /// Each processor.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processors: Vec<ProcessorHealth>,
    /// The transaction holding the log's readers back, while one does (a session paused or
    /// cut off in a transaction): processors and relays reading the log wait for it. Reported,
    /// not degraded: it ends (the server ends an idle one, docs/adr/0018).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_held_back: Option<HeldBack>,
}

impl Health {
    /// Whether everything runs.
    pub fn is_ok(&self) -> bool {
        self.status == Status::Ok
    }
}

/// The overall state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Every relay and processor runs.
    Ok,
    /// A processor or a relay stopped.
    Degraded,
}

/// A relay in the health report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayHealth {
    /// Its name (its checkpoint's key).
    pub name: String,
    /// Its circuit breaker.
    pub breaker: Breaker,
    /// The last global position it published.
    pub position: u64,
    /// Why it ended, once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

/// A tracking processor in the health report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessorHealth {
    /// The projection's name.
    pub name: String,
    /// `store` or `bus`.
    pub feed: String,
    /// The largest global position it has committed.
    pub position: u64,
    /// For a processor fed from the store's log: the events' positions still ahead of it,
    /// as the store's head minus its position (positions may be sparse: an upper bound).
    /// `None` for a bus feed, which has no one order to measure along, and while the store's
    /// head cannot be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
    /// Seconds behind: now minus the timestamp of the last event applied (of the oldest in the
    /// batch under way, so a stall shows), 0 once the feed had nothing more; `None` before the
    /// first poll.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<f64>,
    /// For a projection run in segments: the segments this instance holds (empty: a spare,
    /// whose lag is then 0). The lag and position are those of these segments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segments: Option<Vec<u32>>,
    /// Why it stopped, once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}
