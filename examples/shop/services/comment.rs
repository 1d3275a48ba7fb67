//! The comment service: post, edit and delete rated comments on products it knows, from its
//! own projection of the product events on the bus.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{post, put};
use axum::Router;
use cqrs_axum::{check, send, Accepted, ApiError, Id, Json};
use cqrs_core::{App, BoxError, CommandGateway, ReadModel};
use serde::Deserialize;

use super::{policy, relay_backoff, Service, Shop, MAX_NAME, MAX_TEXT};
use crate::comment::{CommentCommand, CommentError, KnownProducts, COMMENT};
use crate::product::PRODUCT;

/// `POST /comments`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostComment {
    /// The new comment's id; one is generated when absent.
    #[serde(default)]
    pub comment_id: Option<String>,
    /// The product it is about.
    pub product_id: String,
    /// Who writes it.
    pub author: String,
    /// The text.
    pub text: String,
    /// From 1 to 5.
    pub rating: i64,
}

/// `PUT /comments/{id}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditComment {
    /// The new text.
    pub text: String,
    /// The new rating, from 1 to 5.
    pub rating: i64,
}

fn check_rating(rating: i64) -> Result<u8, ApiError> {
    match u8::try_from(rating) {
        Ok(r @ 1..=5) => Ok(r),
        _ => Err(ApiError::invalid(
            "rating_out_of_range",
            format!("a rating must be from 1 to 5 (got {rating})"),
        )),
    }
}

impl From<CommentError> for ApiError {
    fn from(error: CommentError) -> Self {
        let message = error.to_string();
        match error {
            CommentError::RatingOutOfRange(_) => ApiError::invalid("rating_out_of_range", message),
            CommentError::EmptyText => ApiError::invalid("empty_text", message),
            CommentError::EmptyAuthor => ApiError::invalid("empty_author", message),
            CommentError::NoProduct => ApiError::invalid("no_product", message),
            CommentError::AlreadyExists(_) => ApiError::conflict("already_exists", message),
            CommentError::NotFound(_) => ApiError::not_found(message),
            CommentError::Deleted(_) => ApiError::new(StatusCode::GONE, "deleted", message),
        }
    }
}

#[derive(Clone)]
struct Comments {
    gateway: CommandGateway,
    products: ReadModel<KnownProducts>,
}

async fn create(
    State(state): State<Comments>,
    Json(body): Json<PostComment>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let comment_id = check::id_or_new("comment_id", body.comment_id)?;
    check::id("product_id", &body.product_id)?;
    check::text("author", &body.author, MAX_NAME)?;
    check::text("text", &body.text, MAX_TEXT)?;
    let rating = check_rating(body.rating)?;
    // The service's own projection of product events answers, not the product service.
    if state.products.get(&body.product_id).await?.is_none() {
        return Err(ApiError::invalid(
            "unknown_product",
            format!(
                "product `{}` is not known to the comment service (a product created a moment \
                 ago may take a little while to arrive)",
                body.product_id
            ),
        ));
    }
    let (product_id, author, text) = (body.product_id, body.author, body.text);
    let command = CommentCommand::Post {
        comment_id,
        product_id,
        author,
        text,
        rating,
    };
    Ok((StatusCode::CREATED, send(&state.gateway, command).await?))
}

async fn edit(
    State(state): State<Comments>,
    Id(comment_id): Id,
    Json(EditComment { text, rating }): Json<EditComment>,
) -> Result<Json<Accepted>, ApiError> {
    check::text("text", &text, MAX_TEXT)?;
    let rating = check_rating(rating)?;
    send(
        &state.gateway,
        CommentCommand::Edit {
            comment_id,
            text,
            rating,
        },
    )
    .await
}

async fn delete(
    State(state): State<Comments>,
    Id(comment_id): Id,
) -> Result<Json<Accepted>, ApiError> {
    send(&state.gateway, CommentCommand::Delete { comment_id }).await
}

/// Starts the comment service: the gateway, the relay of comment events, and its own
/// projection of product events from the bus (which products exist).
///
/// # Errors
/// A backend cannot be reached, or the store holds events this build does not know.
pub async fn comment_service(shop: &Shop) -> Result<Service, BoxError> {
    let b = &shop.backends;
    let group = b.group("comment-service");
    let app = App::builder()
        .with(b.store().await?)
        .with(b.bus().await?)
        .check_store_for(&[COMMENT])
        .await?
        .relay("comment-relay", |r| {
            r.only([COMMENT]).backoff(relay_backoff())
        })
        .projection(KnownProducts, |p| {
            p.from_bus(group, [PRODUCT]).error_policy(policy())
        })
        .build()?;
    let state = Comments {
        gateway: app.gateway().clone(),
        products: app.read_model::<KnownProducts>()?,
    };
    let routes = Router::new()
        .route("/comments", post(create))
        .route("/comments/{comment_id}", put(edit).delete(delete))
        .with_state(state);
    Ok(shop.service("comment", app, routes))
}
