//! Segments: a projection fed from the store's log, split `count` ways by its view ids, so
//! that several instances share the work instead of competing for every view.
//!
//! A view belongs to one segment, the one its id hashes to ([`Segment::owns`]). Each segment
//! has its own checkpoint, kept with its [`Claim`] in the view store. An instance holds a
//! segment while it renews the claim's lease; every unit of work of that segment carries the
//! claim, and the view store commits it only while the claim's token is still the one the
//! store holds (fencing): once another instance took the segment, the first one's commits
//! are refused with [`Error::ClaimLost`] and it lets the segment go.
//! Instances share out the segments by release: each one takes up to its fair share
//! (segments over live members, rounded up) and gives back, between batches, what it holds
//! above it (see `docs/adr/0012`).

use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use crate::error::{Error, Result};

/// One of `count` segments of a projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Segment {
    /// Which one, from 0.
    pub index: u32,
    /// Of how many.
    pub count: u32,
}

impl Segment {
    /// Segment `index` of `count`.
    ///
    /// # Errors
    /// [`Error::Config`] unless `index < count`.
    pub fn new(index: u32, count: u32) -> Result<Self> {
        if index >= count {
            return Err(Error::Config(format!(
                "segment {index} of {count}: a projection has segments 0 to {}",
                count.saturating_sub(1)
            )));
        }
        Ok(Segment { index, count })
    }

    /// Every segment of `count`.
    pub fn all(count: u32) -> impl Iterator<Item = Segment> {
        (0..count).map(move |index| Segment { index, count })
    }

    /// Whether this segment carries the view (or, for an event no view id can be had of, the
    /// routing key) `key`: the same FNV-1a hash in every process and release.
    pub fn owns(&self, key: &str) -> bool {
        crate::wire::partition_of(key, self.count) == self.index
    }
}

impl std::fmt::Display for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// A segment as one instance holds it: the instance and the token that fences its commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// The segment.
    pub segment: Segment,
    /// The instance that holds it.
    pub owner: Uuid,
    /// New on every claim: a unit of work commits only while the store holds this token.
    pub token: Uuid,
}

/// A segment just claimed, with the checkpoint to start after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claimed {
    /// The claim.
    pub claim: Claim,
    /// The segment's checkpoint (`None`: from the start of the log).
    pub checkpoint: Option<u64>,
}

/// Where a view store keeps segment claims, beside the views (their checkpoints move in the
/// views' unit of work). Leases are measured by the store's clock where it has one
/// (PostgreSQL), else by the instances' (memory, MongoDB): keep their clocks in step to well
/// within a lease.
#[async_trait]
pub trait SegmentClaims: Send + Sync {
    /// Says `owner` is a live member of `projection`'s group for `lease`, and returns how many
    /// members are live (itself included). A zero lease leaves the group.
    ///
    /// # Errors
    /// A backend error.
    async fn heartbeat(&self, projection: &str, owner: Uuid, lease: Duration) -> Result<u32>;

    /// Takes `segment` for `owner`, with a new token, when no one holds it or its holder's
    /// lease ran out; `None` when another instance holds it.
    ///
    /// # Errors
    /// [`Error::Config`] when the projection's claims were made for another segment count; a
    /// backend error.
    async fn claim(
        &self,
        projection: &str,
        segment: Segment,
        owner: Uuid,
        lease: Duration,
    ) -> Result<Option<Claimed>>;

    /// Extends a claim's lease; `false` when the store holds another token (it was taken).
    ///
    /// # Errors
    /// A backend error.
    async fn renew(&self, projection: &str, claim: &Claim, lease: Duration) -> Result<bool>;

    /// Gives a claim up; its checkpoint stays for the next holder. Nothing when the store
    /// holds another token.
    ///
    /// # Errors
    /// A backend error.
    async fn release(&self, projection: &str, claim: &Claim) -> Result<()>;
}

/// The error for a view store that keeps no claims, naming the projection that wanted them.
pub(crate) fn no_claims(projection: &str) -> Error {
    Error::Config(format!(
        "projection `{projection}` runs in segments, but its view store keeps no segment \
         claims: use a store that does (memory, PostgreSQL, MongoDB)"
    ))
}

/// The error for claims made for another segment count.
pub fn count_changed(projection: &str, stored: u32, wanted: u32) -> Error {
    Error::Config(format!(
        "projection `{projection}` has {stored} segments in its view store, not {wanted}: \
         reset it (a replay) to change the count"
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_key_has_one_segment() {
        for key in ["p-1", "p-2", "product-42", ""] {
            let owners: Vec<_> = Segment::all(3).filter(|s| s.owns(key)).collect();
            assert_eq!(owners.len(), 1, "{key}: {owners:?}");
        }
        let spread: std::collections::BTreeSet<u32> = (0..60)
            .map(|i| format!("p-{i}"))
            .filter_map(|k| Segment::all(3).find(|s| s.owns(&k)).map(|s| s.index))
            .collect();
        assert_eq!(spread.len(), 3, "60 keys reach every segment");
    }

    #[test]
    fn a_segment_is_within_its_count() {
        assert!(Segment::new(2, 3).is_ok());
        assert!(matches!(Segment::new(3, 3), Err(Error::Config(_))));
        assert!(matches!(Segment::new(0, 0), Err(Error::Config(_))));
    }
}
