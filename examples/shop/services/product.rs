//! The product service: create, rename and reprice products. Its events go to the event
//! store; a relay publishes them to the bus.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{post, put};
use axum::Router;
use cqrs_axum::{check, send, Accepted, ApiError, Id, Json};
use cqrs_core::{App, BoxError, CommandGateway};
use serde::Deserialize;

use super::{relay_backoff, Service, Shop, MAX_NAME};
use crate::product::{ProductCommand, ProductError, PRODUCT};

/// `POST /products`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateProduct {
    /// The new product's id; one is generated when absent.
    #[serde(default)]
    pub product_id: Option<String>,
    /// Its name.
    pub name: String,
    /// Its price in cents.
    pub price_cents: i64,
}

/// `PUT /products/{id}/name`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenameProduct {
    /// The new name.
    pub name: String,
}

/// `PUT /products/{id}/price`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangePrice {
    /// The new price in cents.
    pub price_cents: i64,
}

impl From<ProductError> for ApiError {
    fn from(error: ProductError) -> Self {
        let message = error.to_string();
        match error {
            ProductError::EmptyName => ApiError::invalid("empty_name", message),
            ProductError::NegativePrice(_) => ApiError::invalid("negative_price", message),
            ProductError::AlreadyExists(_) => ApiError::conflict("already_exists", message),
            ProductError::NotFound(_) => ApiError::not_found(message),
        }
    }
}

type Answer = Result<Json<Accepted>, ApiError>;

async fn create(
    State(gateway): State<CommandGateway>,
    Json(body): Json<CreateProduct>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let product_id = check::id_or_new("product_id", body.product_id)?;
    check::text("name", &body.name, MAX_NAME)?;
    let (name, price_cents) = (body.name, body.price_cents);
    let command = ProductCommand::Create {
        product_id,
        name,
        price_cents,
    };
    Ok((StatusCode::CREATED, send(&gateway, command).await?))
}

async fn rename(
    State(gateway): State<CommandGateway>,
    Id(product_id): Id,
    Json(RenameProduct { name }): Json<RenameProduct>,
) -> Answer {
    check::text("name", &name, MAX_NAME)?;
    send(&gateway, ProductCommand::Rename { product_id, name }).await
}

async fn change_price(
    State(gateway): State<CommandGateway>,
    Id(product_id): Id,
    Json(ChangePrice { price_cents }): Json<ChangePrice>,
) -> Answer {
    send(
        &gateway,
        ProductCommand::ChangePrice {
            product_id,
            price_cents,
        },
    )
    .await
}

/// Starts the product service: the gateway on the event store, the relay of product events.
///
/// # Errors
/// A backend cannot be reached, or the store holds events this build does not know.
pub async fn product_service(shop: &Shop) -> Result<Service, BoxError> {
    let b = &shop.backends;
    let app = App::builder()
        .with(b.store().await?)
        .with(b.bus().await?)
        // This service must decode its own aggregate's events; the others' are not its concern.
        .check_store_for(&[PRODUCT])
        .await?
        .relay("product-relay", |r| {
            r.only([PRODUCT]).backoff(relay_backoff())
        })
        .build()?;
    let routes = Router::new()
        .route("/products", post(create))
        .route("/products/{product_id}/name", put(rename))
        .route("/products/{product_id}/price", put(change_price))
        .with_state(app.gateway().clone());
    Ok(shop.service("product", app, routes))
}
