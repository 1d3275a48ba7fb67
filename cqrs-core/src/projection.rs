//! Projections: how events become a read model, and typed queries over it.

use std::fmt::Debug;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::envelope::Envelope;
use crate::error::{BoxError, Error, Result};
use crate::event::EventSet;
use crate::view::{Filter, Query, ViewQuery};

/// Turns events into views. It names the events it wants (`Self::Event`, usually an
/// [`event_set!`](crate::event_set) enum spanning several aggregates), picks the view each event
/// changes, and changes it. It never sees which aggregate an event came from unless it asks
/// the envelope, and it never downcasts.
///
/// A projection is fed by a [`TrackingProcessor`](crate::processor::TrackingProcessor), which
/// loads the views a batch touches, applies the events in memory, and commits the changed views
/// with the checkpoint. Events already applied to a view are skipped, so `apply` runs once per
/// event and view even when a batch is delivered twice.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a projection",
    label = "implement `cqrs_core::Projection` for `{Self}`: `view_id` picks the view, `apply` changes it"
)]
pub trait Projection: Send + Sync + 'static {
    /// The projection's stable name: it keys its views, checkpoint and dead letters.
    const NAME: &'static str;
    /// The events it wants; others are skipped without being decoded.
    type Event: EventSet;
    /// The view document. Add fields with `#[serde(default)]` so older documents still load.
    type View: Serialize + DeserializeOwned + Debug + Send + Sync + 'static;

    /// The id of the view an event changes; by default the event's stream id (one view per
    /// aggregate instance). A view spanning aggregates picks its own key.
    fn view_id(&self, event: &Self::Event, envelope: &Envelope) -> String {
        let _ = event;
        envelope.stream_id.clone()
    }

    /// Changes the view (`None` when it does not exist yet; set it to `None` to delete it).
    ///
    /// # Errors
    /// Any failure; the processor's error policy decides what happens (retry, dead-letter,
    /// stop). On an error the view's changes by this call are discarded.
    fn apply(
        &self,
        view: &mut Option<Self::View>,
        event: &Self::Event,
        envelope: &Envelope,
    ) -> Result<(), BoxError>;
}

/// The short form of a [`Projection`] whose views start out as their `Default` and whose
/// changes cannot fail: `fold` changes a view that is always there. Every `Fold` is a
/// `Projection` (views keyed by stream id unless `view_id` says otherwise); write
/// `Projection` itself to delete views, to start them otherwise, or to fail an event.
///
/// ```
/// use cqrs_core::{Envelope, Fold};
/// # #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
/// # pub struct Deposited { pub cents: u64 }
/// # cqrs_core::event!(Deposited, "doc.fold.Deposited");
///
/// pub struct Balances;
/// impl Fold for Balances {
///     const NAME: &'static str = "balances";
///     type Event = Deposited;
///     type View = u64;
///     fn fold(&self, balance: &mut u64, e: &Deposited, _: &Envelope) {
///         *balance += e.cents;
///     }
/// }
/// ```
pub trait Fold: Send + Sync + 'static {
    /// The projection's stable name (see [`Projection::NAME`]).
    const NAME: &'static str;
    /// The events it wants.
    type Event: EventSet;
    /// The view document; a new view starts as its `Default`.
    type View: Default + Serialize + DeserializeOwned + Debug + Send + Sync + 'static;

    /// The id of the view an event changes; by default the event's stream id.
    fn view_id(&self, event: &Self::Event, envelope: &Envelope) -> String {
        let _ = event;
        envelope.stream_id.clone()
    }

    /// Changes the view.
    fn fold(&self, view: &mut Self::View, event: &Self::Event, envelope: &Envelope);
}

impl<F: Fold> Projection for F {
    const NAME: &'static str = F::NAME;
    type Event = F::Event;
    type View = F::View;

    fn view_id(&self, event: &Self::Event, envelope: &Envelope) -> String {
        Fold::view_id(self, event, envelope)
    }

    fn apply(
        &self,
        view: &mut Option<Self::View>,
        event: &Self::Event,
        envelope: &Envelope,
    ) -> Result<(), BoxError> {
        self.fold(view.get_or_insert_with(Default::default), event, envelope);
        Ok(())
    }
}

/// Typed queries over one projection's views, in any [`ViewQuery`] store.
pub struct ReadModel<P: Projection> {
    store: Arc<dyn ViewQuery>,
    name: String,
    _projection: PhantomData<fn() -> P>,
}

impl<P: Projection> Clone for ReadModel<P> {
    fn clone(&self) -> Self {
        ReadModel {
            store: self.store.clone(),
            name: self.name.clone(),
            _projection: PhantomData,
        }
    }
}

impl<P: Projection> Debug for ReadModel<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadModel")
            .field("name", &self.name)
            .finish()
    }
}

impl<P: Projection> ReadModel<P> {
    /// Queries the views of `P` (under `P::NAME`) in `store`.
    pub fn new(store: Arc<dyn ViewQuery>) -> Self {
        Self::named(store, P::NAME)
    }

    /// Queries the views of `P` kept under another name (a processor renamed with `named`).
    pub fn named(store: Arc<dyn ViewQuery>, name: impl Into<String>) -> Self {
        ReadModel {
            store,
            name: name.into(),
            _projection: PhantomData,
        }
    }

    /// The name the views are kept under.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn decode(&self, id: &str, value: serde_json::Value) -> Result<P::View> {
        serde_json::from_value(value).map_err(|e| Error::Malformed {
            what: format!("view `{id}` of projection `{}`", self.name),
            reason: e.to_string(),
        })
    }

    /// One view by id.
    ///
    /// # Errors
    /// A backend error, or [`Error::Malformed`] when the stored document does not fit the view.
    pub async fn get(&self, id: &str) -> Result<Option<P::View>> {
        match self.store.get(&self.name, id).await? {
            Some(value) => self.decode(id, value).map(Some),
            None => Ok(None),
        }
    }

    /// The views matching a query, with their ids.
    ///
    /// # Errors
    /// A backend error, or [`Error::Malformed`] for a document that does not fit the view.
    pub async fn find(&self, query: &Query) -> Result<Vec<(String, P::View)>> {
        let found = self.store.find(&self.name, query).await?;
        found
            .into_iter()
            .map(|(id, value)| {
                let view = self.decode(&id, value)?;
                Ok((id, view))
            })
            .collect()
    }

    /// How many views match a filter.
    ///
    /// # Errors
    /// A backend error.
    pub async fn count(&self, filter: &Filter) -> Result<u64> {
        self.store.count(&self.name, filter).await
    }
}
