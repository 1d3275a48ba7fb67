//! The comment aggregate: post a rated comment on a product, edit it, delete it.

use cqrs_core::{Aggregate, Command, Envelope, Fold};
use serde::{Deserialize, Serialize};

use crate::events::{
    CommentDeleted, CommentEdited, CommentEvent, CommentPosted, ProductCreated, ProductRenamed,
};

/// The aggregate type of comments.
pub const COMMENT: &str = "comment";

/// What the comment service can be asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CommentCommand {
    /// Post a comment.
    Post {
        /// The new comment's id.
        comment_id: String,
        /// The product it is about.
        product_id: String,
        /// Who writes it.
        author: String,
        /// The text.
        text: String,
        /// From 1 to 5.
        rating: u8,
    },
    /// Edit a comment's text and rating.
    Edit {
        /// The comment.
        comment_id: String,
        /// The new text.
        text: String,
        /// The new rating.
        rating: u8,
    },
    /// Delete a comment.
    Delete {
        /// The comment.
        comment_id: String,
    },
}

impl Command for CommentCommand {
    type Aggregate = Comment;
    fn aggregate_id(&self) -> &str {
        match self {
            CommentCommand::Post { comment_id, .. }
            | CommentCommand::Edit { comment_id, .. }
            | CommentCommand::Delete { comment_id } => comment_id,
        }
    }
    fn command_name(&self) -> &'static str {
        match self {
            CommentCommand::Post { .. } => "comment.post",
            CommentCommand::Edit { .. } => "comment.edit",
            CommentCommand::Delete { .. } => "comment.delete",
        }
    }
}

/// Why the comment service refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommentError {
    /// Ratings go from 1 to 5.
    #[error("a rating must be from 1 to 5 (got {0})")]
    RatingOutOfRange(u8),
    /// A comment says something.
    #[error("a comment's text must not be empty")]
    EmptyText,
    /// A comment has an author.
    #[error("a comment's author must not be empty")]
    EmptyAuthor,
    /// A comment is about a product.
    #[error("a comment must name its product")]
    NoProduct,
    /// Ids are unique.
    #[error("comment `{0}` already exists")]
    AlreadyExists(String),
    /// Only existing comments change.
    #[error("comment `{0}` does not exist")]
    NotFound(String),
    /// Deleted comments stay deleted.
    #[error("comment `{0}` was deleted")]
    Deleted(String),
}

/// A comment's state, as far as its decisions need it.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comment {
    /// Whether it was posted.
    pub exists: bool,
    /// Whether it was deleted.
    pub deleted: bool,
    /// The product it is about.
    pub product_id: String,
    /// Its text.
    pub text: String,
    /// Its rating.
    pub rating: u8,
}

fn check(text: &str, rating: u8) -> Result<String, CommentError> {
    if !(1..=5).contains(&rating) {
        return Err(CommentError::RatingOutOfRange(rating));
    }
    let text = text.trim();
    if text.is_empty() {
        return Err(CommentError::EmptyText);
    }
    Ok(text.to_owned())
}

impl Comment {
    fn existing(&self, comment_id: &str) -> Result<(), CommentError> {
        if !self.exists {
            Err(CommentError::NotFound(comment_id.to_owned()))
        } else if self.deleted {
            Err(CommentError::Deleted(comment_id.to_owned()))
        } else {
            Ok(())
        }
    }
}

impl Aggregate for Comment {
    const TYPE: &'static str = COMMENT;
    type Command = CommentCommand;
    type Event = CommentEvent;
    type Error = CommentError;

    fn handle(&self, command: &CommentCommand) -> Result<Vec<CommentEvent>, CommentError> {
        match command {
            CommentCommand::Post {
                comment_id,
                product_id,
                author,
                text,
                rating,
            } => {
                if self.exists {
                    return Err(CommentError::AlreadyExists(comment_id.clone()));
                }
                let text = check(text, *rating)?;
                if author.trim().is_empty() {
                    return Err(CommentError::EmptyAuthor);
                }
                if product_id.trim().is_empty() {
                    return Err(CommentError::NoProduct);
                }
                Ok(vec![CommentPosted {
                    comment_id: comment_id.clone(),
                    product_id: product_id.clone(),
                    author: author.trim().to_owned(),
                    text,
                    rating: *rating,
                }
                .into()])
            }
            CommentCommand::Edit {
                comment_id,
                text,
                rating,
            } => {
                self.existing(comment_id)?;
                let text = check(text, *rating)?;
                if text == self.text && *rating == self.rating {
                    return Ok(vec![]);
                }
                Ok(vec![CommentEdited {
                    comment_id: comment_id.clone(),
                    product_id: self.product_id.clone(),
                    text,
                    rating: *rating,
                }
                .into()])
            }
            CommentCommand::Delete { comment_id } => {
                self.existing(comment_id)?;
                Ok(vec![CommentDeleted {
                    comment_id: comment_id.clone(),
                    product_id: self.product_id.clone(),
                }
                .into()])
            }
        }
    }

    fn apply(&mut self, event: &CommentEvent) {
        match event {
            CommentEvent::Posted(e) => {
                self.exists = true;
                self.product_id.clone_from(&e.product_id);
                self.text.clone_from(&e.text);
                self.rating = e.rating;
            }
            CommentEvent::Edited(e) => {
                self.text.clone_from(&e.text);
                self.rating = e.rating;
            }
            CommentEvent::Deleted(_) => self.deleted = true,
        }
    }
}

cqrs_core::event_set! {
    /// The product events the comment service follows to know which products exist.
    #[derive(Debug, Clone, PartialEq)]
    pub enum ProductLifecycle {
        Created(ProductCreated),
        Renamed(ProductRenamed),
    }
}

/// A product as the comment service knows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KnownProduct {
    /// The product's id.
    pub product_id: String,
    /// Its current name.
    pub name: String,
}

/// The comment service's own projection of product events: which products exist. It lets the
/// service refuse comments on unknown products without calling the product service, so it
/// keeps working while that service is down.
#[derive(Debug, Default, Clone, Copy)]
pub struct KnownProducts;

impl Fold for KnownProducts {
    const NAME: &'static str = "known_products";
    type Event = ProductLifecycle;
    type View = KnownProduct;

    fn view_id(&self, event: &ProductLifecycle, _: &Envelope) -> String {
        self.named(event).0.clone()
    }

    fn fold(&self, known: &mut KnownProduct, event: &ProductLifecycle, _: &Envelope) {
        let (product_id, name) = self.named(event);
        known.product_id.clone_from(product_id);
        known.name.clone_from(name);
    }
}

impl KnownProducts {
    /// The product an event is about, and the name it gives it.
    fn named<'e>(&self, event: &'e ProductLifecycle) -> (&'e String, &'e String) {
        match event {
            ProductLifecycle::Created(e) => (&e.product_id, &e.name),
            ProductLifecycle::Renamed(e) => (&e.product_id, &e.name),
        }
    }
}
