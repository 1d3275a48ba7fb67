//! The catalog read model: one entry per product, joining the product's name and price with
//! its comments and their average rating. It converges whatever order the events arrive in
//! across aggregates: a comment may come before its product.

use cqrs_core::{BoxError, Envelope, Filter, Order, Projection, Query, ReadModel, Result};
use serde::{Deserialize, Serialize};

use crate::events::{
    CommentDeleted, CommentEdited, CommentPosted, ProductCreated, ProductPriceChanged,
    ProductRenamed,
};

cqrs_core::event_set! {
    /// The events the catalog follows, from both aggregates.
    #[derive(Debug, Clone, PartialEq)]
    pub enum CatalogEvent {
        ProductCreated(ProductCreated),
        ProductRenamed(ProductRenamed),
        PriceChanged(ProductPriceChanged),
        CommentPosted(CommentPosted),
        CommentEdited(CommentEdited),
        CommentDeleted(CommentDeleted),
    }
}

/// One comment as the catalog shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogComment {
    /// The comment's id.
    pub comment_id: String,
    /// Who wrote it.
    pub author: String,
    /// What they wrote.
    pub text: String,
    /// From 1 to 5.
    pub rating: u8,
    /// The global position of the post in the event store: comments are listed in this
    /// order, whatever order a bus delivered them in.
    #[serde(default)]
    pub position: u64,
}

/// A product's catalog entry. Name and price are `None` until the product's own events arrive.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CatalogEntry {
    /// The product's id.
    pub product_id: String,
    /// Its name.
    #[serde(default)]
    pub name: Option<String>,
    /// Its price in cents.
    #[serde(default)]
    pub price_cents: Option<i64>,
    /// The average rating of its comments, if it has any.
    #[serde(default)]
    pub average_rating: Option<f64>,
    /// How many rated comments it has.
    #[serde(default)]
    pub rating_count: u64,
    /// Its comments, oldest first (by their position in the event store).
    #[serde(default)]
    pub comments: Vec<CatalogComment>,
}

impl CatalogEntry {
    fn rerate(&mut self) {
        self.rating_count = self.comments.len() as u64;
        self.average_rating = if self.comments.is_empty() {
            None
        } else {
            let sum: u64 = self.comments.iter().map(|c| u64::from(c.rating)).sum();
            Some(sum as f64 / self.comments.len() as f64)
        };
    }
}

/// The catalog projection.
#[derive(Debug, Default, Clone, Copy)]
pub struct Catalog;

impl Projection for Catalog {
    const NAME: &'static str = "catalog";
    type Event = CatalogEvent;
    type View = CatalogEntry;

    fn view_id(&self, event: &CatalogEvent, _: &Envelope) -> String {
        product_id(event).to_owned()
    }

    fn apply(
        &self,
        view: &mut Option<CatalogEntry>,
        event: &CatalogEvent,
        envelope: &Envelope,
    ) -> Result<(), BoxError> {
        let entry = view.get_or_insert_with(|| CatalogEntry {
            product_id: product_id(event).to_owned(),
            ..CatalogEntry::default()
        });
        match event {
            CatalogEvent::ProductCreated(e) => {
                entry.name = Some(e.name.clone());
                entry.price_cents = Some(e.price_cents);
            }
            CatalogEvent::ProductRenamed(e) => entry.name = Some(e.name.clone()),
            CatalogEvent::PriceChanged(e) => entry.price_cents = Some(e.price_cents),
            CatalogEvent::CommentPosted(e) => {
                entry.comments.retain(|c| c.comment_id != e.comment_id);
                let comment = CatalogComment {
                    comment_id: e.comment_id.clone(),
                    author: e.author.clone(),
                    text: e.text.clone(),
                    rating: e.rating,
                    position: envelope.position,
                };
                let at = entry.comments.partition_point(|c| {
                    (c.position, &c.comment_id) < (comment.position, &comment.comment_id)
                });
                entry.comments.insert(at, comment);
                entry.rerate();
            }
            CatalogEvent::CommentEdited(e) => {
                if let Some(c) = entry
                    .comments
                    .iter_mut()
                    .find(|c| c.comment_id == e.comment_id)
                {
                    c.text.clone_from(&e.text);
                    c.rating = e.rating;
                }
                entry.rerate();
            }
            CatalogEvent::CommentDeleted(e) => {
                entry.comments.retain(|c| c.comment_id != e.comment_id);
                entry.rerate();
            }
        }
        Ok(())
    }
}

/// Every catalog event names its product: that is the entry it changes.
fn product_id(event: &CatalogEvent) -> &str {
    match event {
        CatalogEvent::ProductCreated(e) => &e.product_id,
        CatalogEvent::ProductRenamed(e) => &e.product_id,
        CatalogEvent::PriceChanged(e) => &e.product_id,
        CatalogEvent::CommentPosted(e) => &e.product_id,
        CatalogEvent::CommentEdited(e) => &e.product_id,
        CatalogEvent::CommentDeleted(e) => &e.product_id,
    }
}

/// The catalog's queries.
#[derive(Debug, Clone)]
pub struct CatalogQueries {
    model: ReadModel<Catalog>,
}

impl CatalogQueries {
    /// Queries over a read model of the catalog.
    pub fn new(model: ReadModel<Catalog>) -> Self {
        CatalogQueries { model }
    }

    /// One product's entry.
    ///
    /// # Errors
    /// A read-model store error.
    pub async fn entry(&self, product_id: &str) -> Result<Option<CatalogEntry>> {
        self.model.get(product_id).await
    }

    /// How many products the catalog lists.
    ///
    /// # Errors
    /// A read-model store error.
    pub async fn count(&self) -> Result<u64> {
        self.model.count(&Filter::All).await
    }

    /// A page of entries, by name then id.
    ///
    /// # Errors
    /// A read-model store error.
    pub async fn list(&self, page: u64, per_page: u64) -> Result<Vec<CatalogEntry>> {
        let query = Query::all()
            .sort("name", Order::Asc)
            .sort("product_id", Order::Asc)
            .skip(page.saturating_mul(per_page))
            .limit(per_page);
        Ok(self
            .model
            .find(&query)
            .await?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }
}
