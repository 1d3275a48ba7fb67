//! The event contracts between the shop's services. The write services emit them; the catalog
//! depends on them, never on the write side's aggregates.

use serde::{Deserialize, Serialize};

/// A product was put on sale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProductCreated {
    /// The product's id.
    pub product_id: String,
    /// Its name.
    pub name: String,
    /// Its price in cents. (Version 1 stored `price` in whole units as a float.)
    pub price_cents: i64,
}
cqrs_core::event!(ProductCreated, "shop.ProductCreated", version = 2);

/// Version 1 of `shop.ProductCreated` carried `price` as a float in whole units.
fn product_created_v1_to_v2(mut payload: serde_json::Value) -> Result<serde_json::Value, String> {
    let object = payload
        .as_object_mut()
        .ok_or("ProductCreated v1 payload is not an object")?;
    let price = object
        .remove("price")
        .and_then(|p| p.as_f64())
        .ok_or("ProductCreated v1 payload has no numeric `price`")?;
    object.insert(
        "price_cents".into(),
        ((price * 100.0).round() as i64).into(),
    );
    Ok(payload)
}
cqrs_core::upcaster!("shop.ProductCreated", from = 1, product_created_v1_to_v2);

/// A product got a new name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProductRenamed {
    /// The product's id.
    pub product_id: String,
    /// The new name.
    pub name: String,
}
cqrs_core::event!(ProductRenamed, "shop.ProductRenamed");

/// A product got a new price.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProductPriceChanged {
    /// The product's id.
    pub product_id: String,
    /// The new price in cents.
    pub price_cents: i64,
}
cqrs_core::event!(ProductPriceChanged, "shop.ProductPriceChanged");

/// A comment with a rating was posted on a product.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommentPosted {
    /// The comment's id.
    pub comment_id: String,
    /// The product it is about.
    pub product_id: String,
    /// Who wrote it.
    pub author: String,
    /// What they wrote.
    pub text: String,
    /// From 1 to 5.
    pub rating: u8,
}
// A comment changes its product's catalog entry: it routes by the product, so one partition
// (and one catalog instance) carries every event of one entry.
cqrs_core::event!(
    CommentPosted,
    "shop.CommentPosted",
    routing_key = product_id
);

/// A comment's text and rating were edited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommentEdited {
    /// The comment's id.
    pub comment_id: String,
    /// The product it is about.
    pub product_id: String,
    /// The new text.
    pub text: String,
    /// The new rating, from 1 to 5.
    pub rating: u8,
}
cqrs_core::event!(
    CommentEdited,
    "shop.CommentEdited",
    routing_key = product_id
);

/// A comment was deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommentDeleted {
    /// The comment's id.
    pub comment_id: String,
    /// The product it was about.
    pub product_id: String,
}
cqrs_core::event!(
    CommentDeleted,
    "shop.CommentDeleted",
    routing_key = product_id
);

cqrs_core::event_set! {
    /// Everything that happens to a product.
    #[derive(Debug, Clone, PartialEq)]
    pub enum ProductEvent {
        Created(ProductCreated),
        Renamed(ProductRenamed),
        PriceChanged(ProductPriceChanged),
    }
}

cqrs_core::event_set! {
    /// Everything that happens to a comment.
    #[derive(Debug, Clone, PartialEq)]
    pub enum CommentEvent {
        Posted(CommentPosted),
        Edited(CommentEdited),
        Deleted(CommentDeleted),
    }
}
