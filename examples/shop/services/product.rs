//! The product service: create, rename and reprice products. Its events go to the event
//! store; a relay publishes them to the bus.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{post, put};
use axum::Router;
use cqrs_core::{registry, App, BoxError, CommandGateway};
use serde::Deserialize;

use super::{relay_backoff, with_common_layers, Backends, Service, MAX_NAME};
use crate::http::{check_id, check_len, Accepted, ApiError, Json, Path};
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

fn product_rejected(error: ProductError) -> ApiError {
    let message = error.to_string();
    match error {
        ProductError::EmptyName => ApiError::invalid("empty_name", message),
        ProductError::NegativePrice(_) => ApiError::invalid("negative_price", message),
        ProductError::AlreadyExists(_) => {
            ApiError::new(StatusCode::CONFLICT, "already_exists", message)
        }
        ProductError::NotFound(_) => ApiError::not_found(message),
    }
}

/// Sends a command and answers with what it recorded, or with its failure mapped to HTTP
/// (`rejected` maps the aggregate's own rejections).
pub(super) async fn send<C>(
    gateway: &CommandGateway,
    command: C,
    rejected: fn(<C::Aggregate as cqrs_core::Aggregate>::Error) -> ApiError,
) -> Result<Json<Accepted>, ApiError>
where
    C: cqrs_core::Command,
    C::Aggregate: cqrs_core::Aggregate<Command = C>,
{
    let id = command.aggregate_id().to_owned();
    let events = gateway
        .send(command)
        .await
        .map_err(|e| ApiError::from_command(e, rejected))?;
    Ok(Json(Accepted::new(id, &events)))
}

async fn send_product(
    gateway: &CommandGateway,
    command: ProductCommand,
) -> Result<Json<Accepted>, ApiError> {
    send(gateway, command, product_rejected).await
}

async fn create_product(
    State(gateway): State<Arc<CommandGateway>>,
    Json(body): Json<CreateProduct>,
) -> Result<impl IntoResponse, ApiError> {
    let product_id = body
        .product_id
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    check_id("product_id", &product_id)?;
    check_len("name", &body.name, MAX_NAME)?;
    let command = ProductCommand::Create {
        product_id,
        name: body.name,
        price_cents: body.price_cents,
    };
    Ok((StatusCode::CREATED, send_product(&gateway, command).await?))
}

async fn rename_product(
    State(gateway): State<Arc<CommandGateway>>,
    Path(product_id): Path<String>,
    Json(body): Json<RenameProduct>,
) -> Result<Json<Accepted>, ApiError> {
    check_id("product_id", &product_id)?;
    check_len("name", &body.name, MAX_NAME)?;
    send_product(
        &gateway,
        ProductCommand::Rename {
            product_id,
            name: body.name,
        },
    )
    .await
}

async fn change_price(
    State(gateway): State<Arc<CommandGateway>>,
    Path(product_id): Path<String>,
    Json(body): Json<ChangePrice>,
) -> Result<Json<Accepted>, ApiError> {
    check_id("product_id", &product_id)?;
    send_product(
        &gateway,
        ProductCommand::ChangePrice {
            product_id,
            price_cents: body.price_cents,
        },
    )
    .await
}

/// Starts the product service: the gateway on the event store, the relay of product events.
///
/// # Errors
/// A backend cannot be reached, or the store holds events this build does not know.
pub async fn product_service(backends: &Backends) -> Result<Service, BoxError> {
    // This service must decode its own aggregate's events; the others' are not its concern.
    let store = backends.event_store().await?;
    registry()
        .check_store_for(store.as_ref(), &[PRODUCT])
        .await?;
    let app = backends
        .write_side(App::builder())
        .await?
        .relay("product-relay", |r| {
            r.only([PRODUCT]).backoff(relay_backoff())
        })
        .build()?;
    let routes = Router::new()
        .route("/products", post(create_product))
        .route("/products/{id}/name", put(rename_product))
        .route("/products/{id}/price", put(change_price))
        .with_state(Arc::new(app.gateway().clone()));
    Ok(Service {
        router: with_common_layers(routes, "product", app.ops()),
        app,
    })
}
