//! The read side: stored view documents, units of work, dead letters and portable queries.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::envelope::Envelope;
use crate::error::Result;

/// A view document as a read-model store keeps it.
///
/// Besides the view itself it records, per source stream, the last stream version applied to
/// it. That makes applying idempotent whatever feeds the projection: the global log (one
/// order) or a bus (one order per partition), and a batch delivered twice changes nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredDoc {
    /// The view's own id, chosen by the projection.
    pub id: String,
    /// The view as JSON; `None` for a deleted view, kept as a tombstone so that a late
    /// duplicate of an older event cannot bring it back.
    pub view: Option<Value>,
    /// Stream id to the last version of that stream applied to this view.
    pub applied: BTreeMap<String, u64>,
    /// The largest global position applied to this view.
    pub position: u64,
    /// Optimistic concurrency: the revision the document had when loaded (0: not stored yet).
    /// A store writes it as `revision + 1`, and refuses the whole unit of work with
    /// [`Error::ViewConflict`](crate::Error::ViewConflict) when the stored revision is another,
    /// so two processors (or two members of a group) never overwrite each other's work.
    #[serde(default)]
    pub revision: u64,
    /// Events (by id) dead-lettered from this view: counted as seen, so a redelivery skips
    /// them, and applied only by a retry of their dead letter, which takes them out of here
    /// in the same write. So an event is applied to its view once, whichever comes first.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub parked: BTreeSet<Uuid>,
}

/// An event a projection could not apply, kept with the reason instead of being dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The projection that failed.
    pub projection: String,
    /// The event, as it was delivered.
    pub envelope: Envelope,
    /// Why it failed.
    pub reason: String,
    /// When it was dead-lettered.
    pub at: DateTime<Utc>,
    /// The view it is parked in (see [`StoredDoc::parked`]): a handler failure. `None` for an
    /// event no view could be had of (unknown, undecodable), and for letters older than
    /// parking; a retry applies those as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view: Option<String>,
}

impl DeadLetter {
    /// Where this dead letter stands in its projection's list: a page that ends with it is
    /// followed by the page after this cursor.
    pub fn cursor(&self) -> DeadLetterCursor {
        DeadLetterCursor {
            position: self.envelope.position,
            event_id: self.envelope.metadata.event_id,
        }
    }
}

/// A place in a projection's dead letters, which are ordered by the event's global position,
/// then by event id (an undecodable message from a bus may carry no position of its own).
/// Written `<position>.<event id>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeadLetterCursor {
    /// The event's global position.
    pub position: u64,
    /// The event's id.
    pub event_id: Uuid,
}

impl std::fmt::Display for DeadLetterCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.position, self.event_id)
    }
}

impl std::str::FromStr for DeadLetterCursor {
    type Err = crate::error::Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || crate::error::Error::Malformed {
            what: format!("the dead-letter cursor `{s}`"),
            reason: "expected `<position>.<event id>`".into(),
        };
        let (position, event_id) = s.split_once('.').ok_or_else(bad)?;
        Ok(DeadLetterCursor {
            position: position.parse().map_err(|_| bad())?,
            event_id: event_id.parse().map_err(|_| bad())?,
        })
    }
}

/// Everything one processed batch changes, committed at once where the store allows it.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitOfWork {
    /// The projection's name.
    pub projection: String,
    /// The documents to write (including tombstones).
    pub writes: Vec<StoredDoc>,
    /// The events to dead-letter.
    pub dead_letters: Vec<DeadLetter>,
    /// The new global-log checkpoint, when the feed has one (a bus feed commits offsets instead).
    pub checkpoint: Option<u64>,
    /// Dead letters (by event id) this unit of work resolves: a successful retry removes its
    /// dead letter together with the view it changed. A store refuses the unit of work with
    /// [`Error::ViewConflict`](crate::Error::ViewConflict) when one of them is gone (resolved
    /// by a concurrent retry), except MongoDB without transactions (at least once).
    pub resolved: Vec<Uuid>,
    /// The segment claim the unit of work is committed under, for a projection run in
    /// segments (see [`crate::segment`]). Then `checkpoint` is the segment's, and the store
    /// commits only while it holds the claim's token, else refuses the whole unit of work with
    /// [`Error::ClaimLost`](crate::Error::ClaimLost).
    pub claim: Option<crate::segment::Claim>,
}

/// Where a projection keeps its documents, checkpoint and dead letters.
///
/// [`commit`](ViewStore::commit) is the unit of work: a transactional store writes everything
/// in one transaction. A store that cannot writes it step by step in [`COMMIT_ORDER`] (see
/// [`StepwiseCommit`]); the `applied` versions in each document then make a repeated batch a
/// no-op, and no crash between two steps loses a dead letter or an event.
#[async_trait]
pub trait ViewStore: Send + Sync {
    /// Loads the documents of a projection with these ids (missing ids are left out).
    ///
    /// # Errors
    /// A backend error.
    async fn load(&self, projection: &str, ids: &[String]) -> Result<Vec<StoredDoc>>;
    /// Commits one unit of work.
    ///
    /// # Errors
    /// A backend error; then nothing or only idempotent document writes took effect.
    async fn commit(&self, work: UnitOfWork) -> Result<()>;
    /// The projection's saved checkpoint.
    ///
    /// # Errors
    /// A backend error.
    async fn checkpoint(&self, projection: &str) -> Result<Option<u64>>;
    /// Deletes the projection's documents, checkpoint and dead letters, for a replay.
    ///
    /// # Errors
    /// A backend error.
    async fn reset(&self, projection: &str) -> Result<()>;

    /// What the store guarantees of a unit of work (the conformance suite checks exactly
    /// that). [`Atomicity::Atomic`] unless the store says otherwise.
    fn atomicity(&self) -> Atomicity {
        Atomicity::Atomic
    }

    /// The segment claims the store keeps beside the views, for projections run in segments;
    /// `None` (the default) when it keeps none.
    fn claims(&self) -> Option<&dyn crate::segment::SegmentClaims> {
        None
    }
}

/// How a view store commits a unit of work, as it declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Atomicity {
    /// In one transaction: all of it or nothing. A unit of work resolving a dead letter that
    /// is gone (a concurrent retry resolved it) is refused whole with
    /// [`Error::ViewConflict`](crate::Error::ViewConflict): a dead letter is applied once.
    Atomic,
    /// Step by step in [`COMMIT_ORDER`], each step idempotent: events reach the views once and
    /// no dead letter is lost, but resolving a dead letter that is gone still writes its view
    /// (a retry crashed before removing it, or racing another, applies it again: at least
    /// once).
    Stepwise,
}

/// One step of a unit of work written without a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CommitStep {
    /// Save the batch's dead letters (upserts by event id: writing one twice keeps one).
    DeadLetters,
    /// Write the view documents (conditional on their revisions).
    Views,
    /// Remove the dead letters the unit of work resolves.
    Resolved,
    /// Move the checkpoint.
    Checkpoint,
}

/// The order in which a store without transactions writes a unit of work.
///
/// Dead letters come first: once the views are written, a redelivered batch finds them past a
/// failed event (a later event of the same view and stream was applied) and counts it as seen,
/// so a dead letter written after the views would be lost by a crash between the two. Written
/// before, a crash leaves the dead letter and the batch is folded and written again. The
/// resolved dead letters go after the views (a crash between applies that retry again: at
/// least once), the checkpoint last.
pub const COMMIT_ORDER: [CommitStep; 4] = [
    CommitStep::DeadLetters,
    CommitStep::Views,
    CommitStep::Resolved,
    CommitStep::Checkpoint,
];

/// A view store that writes a unit of work step by step, without a transaction.
#[async_trait]
pub trait StepwiseCommit: Send + Sync {
    /// Writes one step of a unit of work (nothing when the step has nothing to write).
    ///
    /// # Errors
    /// A backend error, or [`Error::ViewConflict`](crate::Error::ViewConflict) from the
    /// views step; the steps before it stay written.
    async fn commit_step(&self, step: CommitStep, work: &UnitOfWork) -> Result<()>;
}

/// Commits a unit of work step by step, in [`COMMIT_ORDER`], stopping at the first error.
///
/// # Errors
/// The first step's error.
pub async fn commit_in_order<S: StepwiseCommit + ?Sized>(
    store: &S,
    work: &UnitOfWork,
) -> Result<()> {
    for step in COMMIT_ORDER {
        store.commit_step(step, work).await?;
    }
    Ok(())
}

/// Sort direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Order {
    /// Smallest first.
    Asc,
    /// Largest first.
    Desc,
}

/// A condition on view fields, by dotted path (`"price"`, `"author.name"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Filter {
    /// Every document.
    All,
    /// The field equals the value.
    Eq(String, Value),
    /// The field is greater than the value.
    Gt(String, Value),
    /// The field is greater than or equal to the value.
    Gte(String, Value),
    /// The field is less than the value.
    Lt(String, Value),
    /// The field is less than or equal to the value.
    Lte(String, Value),
    /// Every condition holds.
    And(Vec<Filter>),
}

/// A portable query over one projection's views: filter, sort, page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Query {
    /// Which documents.
    pub filter: Filter,
    /// Sort keys, most significant first. Ties are broken by id.
    pub sort: Vec<(String, Order)>,
    /// How many to skip.
    pub skip: u64,
    /// How many at most.
    pub limit: Option<u64>,
}

impl Default for Query {
    fn default() -> Self {
        Query {
            filter: Filter::All,
            sort: Vec::new(),
            skip: 0,
            limit: None,
        }
    }
}

impl Query {
    /// Every document, in id order.
    pub fn all() -> Self {
        Self::default()
    }
    /// Only documents matching `filter`.
    #[must_use]
    pub fn filter(mut self, filter: Filter) -> Self {
        self.filter = filter;
        self
    }
    /// Adds a sort key.
    #[must_use]
    pub fn sort(mut self, field: impl Into<String>, order: Order) -> Self {
        self.sort.push((field.into(), order));
        self
    }
    /// Skips the first `n`.
    #[must_use]
    pub fn skip(mut self, n: u64) -> Self {
        self.skip = n;
        self
    }
    /// Returns at most `n`.
    #[must_use]
    pub fn limit(mut self, n: u64) -> Self {
        self.limit = Some(n);
        self
    }
}

/// The query half of a read-model store.
#[async_trait]
pub trait ViewQuery: Send + Sync {
    /// One view by id (`None` when missing or deleted).
    ///
    /// # Errors
    /// A backend error.
    async fn get(&self, projection: &str, id: &str) -> Result<Option<Value>>;
    /// The views matching a query, as `(id, view)`.
    ///
    /// # Errors
    /// A backend error, or [`Error::Config`](crate::Error::Config) for a bad field path.
    async fn find(&self, projection: &str, query: &Query) -> Result<Vec<(String, Value)>>;
    /// How many views match a filter.
    ///
    /// # Errors
    /// A backend error.
    async fn count(&self, projection: &str, filter: &Filter) -> Result<u64>;
}

/// Lists and removes dead letters, to inspect and retry them.
#[async_trait]
pub trait DeadLetterStore: Send + Sync {
    /// At most `limit` dead letters of a projection after `after` (from the first without
    /// it), in [`DeadLetterCursor`] order: oldest position first. A `limit` of 0 gives none.
    ///
    /// # Errors
    /// A backend error.
    async fn dead_letters_page(
        &self,
        projection: &str,
        after: Option<DeadLetterCursor>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>>;

    /// Every dead letter of a projection, oldest position first (read page by page).
    ///
    /// # Errors
    /// A backend error.
    async fn dead_letters(&self, projection: &str) -> Result<Vec<DeadLetter>> {
        const PAGE: usize = 1000;
        let mut all: Vec<DeadLetter> = Vec::new();
        loop {
            let after = all.last().map(DeadLetter::cursor);
            let page = self.dead_letters_page(projection, after, PAGE).await?;
            let full = page.len() == PAGE;
            all.extend(page);
            if !full {
                return Ok(all);
            }
        }
    }

    /// Removes one dead letter by event id; `false` when there was none.
    ///
    /// # Errors
    /// A backend error.
    async fn remove_dead_letter(&self, projection: &str, event_id: Uuid) -> Result<bool>;
}

macro_rules! forward_view {
    ($($ptr:ident),+) => {$(
        #[async_trait]
        impl<T: ViewStore + ?Sized> ViewStore for $ptr<T> {
            async fn load(&self, projection: &str, ids: &[String]) -> Result<Vec<StoredDoc>> {
                (**self).load(projection, ids).await
            }
            async fn commit(&self, work: UnitOfWork) -> Result<()> {
                (**self).commit(work).await
            }
            async fn checkpoint(&self, projection: &str) -> Result<Option<u64>> {
                (**self).checkpoint(projection).await
            }
            async fn reset(&self, projection: &str) -> Result<()> {
                (**self).reset(projection).await
            }
            fn atomicity(&self) -> Atomicity {
                (**self).atomicity()
            }
            fn claims(&self) -> Option<&dyn crate::segment::SegmentClaims> {
                (**self).claims()
            }
        }

        #[async_trait]
        impl<T: ViewQuery + ?Sized> ViewQuery for $ptr<T> {
            async fn get(&self, projection: &str, id: &str) -> Result<Option<Value>> {
                (**self).get(projection, id).await
            }
            async fn find(&self, projection: &str, query: &Query) -> Result<Vec<(String, Value)>> {
                (**self).find(projection, query).await
            }
            async fn count(&self, projection: &str, filter: &Filter) -> Result<u64> {
                (**self).count(projection, filter).await
            }
        }

        #[async_trait]
        impl<T: DeadLetterStore + ?Sized> DeadLetterStore for $ptr<T> {
            async fn dead_letters_page(
                &self,
                projection: &str,
                after: Option<DeadLetterCursor>,
                limit: usize,
            ) -> Result<Vec<DeadLetter>> {
                (**self).dead_letters_page(projection, after, limit).await
            }
            async fn dead_letters(&self, projection: &str) -> Result<Vec<DeadLetter>> {
                (**self).dead_letters(projection).await
            }
            async fn remove_dead_letter(&self, projection: &str, event_id: Uuid) -> Result<bool> {
                (**self).remove_dead_letter(projection, event_id).await
            }
        }
    )+};
}

forward_view!(Arc, Box);
