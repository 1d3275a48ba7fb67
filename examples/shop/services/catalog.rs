//! The catalog service: a consumer group on the bus builds the catalog read model; it answers
//! queries, lists dead letters and retries them.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use cqrs_core::app::Ops;
use cqrs_core::{App, BoxError, Error, Projection, RetryReport};
use serde::{Deserialize, Serialize};

use super::{policy, with_common_layers, Backends, Service, MAX_PAGE, MAX_PER_PAGE};
use crate::catalog::{Catalog, CatalogEntry, CatalogQueries};
use crate::comment::COMMENT;
use crate::http::{check_id, ApiError, Json, Path, Query};
use crate::product::PRODUCT;

/// `GET /products`'s query.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Paging {
    /// The page, from 0.
    #[serde(default)]
    pub page: u64,
    /// Entries per page (1 to 100, default 20).
    #[serde(default = "default_per_page")]
    pub per_page: u64,
}

fn default_per_page() -> u64 {
    20
}

/// `GET /products`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogPage {
    /// The page, from 0.
    pub page: u64,
    /// Entries per page.
    pub per_page: u64,
    /// Products in the whole catalog.
    pub total: u64,
    /// This page's entries, by name then id.
    pub items: Vec<CatalogEntry>,
}

/// A dead letter as `GET /dead-letters` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterInfo {
    /// The event's id.
    pub event_id: uuid::Uuid,
    /// The event's name.
    pub event_name: String,
    /// Its stream.
    pub stream_id: String,
    /// Its version in the stream.
    pub version: u64,
    /// Its global position.
    pub position: u64,
    /// Why it could not be applied.
    pub reason: String,
}

#[derive(Clone)]
struct CatalogState {
    queries: CatalogQueries,
    ops: Ops,
}

async fn list_products(
    State(state): State<CatalogState>,
    Query(paging): Query<Paging>,
) -> Result<Json<CatalogPage>, ApiError> {
    if paging.page > MAX_PAGE {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_query",
            format!("`page` must be at most {MAX_PAGE}"),
        ));
    }
    if !(1..=MAX_PER_PAGE).contains(&paging.per_page) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_query",
            format!("`per_page` must be from 1 to {MAX_PER_PAGE}"),
        ));
    }
    let unavailable = |e: Error| ApiError::from_framework(&e);
    let total = state.queries.count().await.map_err(unavailable)?;
    let items = state
        .queries
        .list(paging.page, paging.per_page)
        .await
        .map_err(unavailable)?;
    Ok(Json(CatalogPage {
        page: paging.page,
        per_page: paging.per_page,
        total,
        items,
    }))
}

async fn get_product(
    State(state): State<CatalogState>,
    Path(product_id): Path<String>,
) -> Result<Json<CatalogEntry>, ApiError> {
    check_id("product_id", &product_id)?;
    match state.queries.entry(&product_id).await {
        Ok(Some(entry)) => Ok(Json(entry)),
        Ok(None) => Err(ApiError::not_found(format!(
            "product `{product_id}` is not in the catalog"
        ))),
        Err(e) => Err(ApiError::from_framework(&e)),
    }
}

async fn list_dead_letters(
    State(state): State<CatalogState>,
) -> Result<Json<Vec<DeadLetterInfo>>, ApiError> {
    let letters = state
        .ops
        .dead_letters(Catalog::NAME)
        .await
        .map_err(|e| ApiError::from_framework(&e))?;
    Ok(Json(
        letters
            .into_iter()
            .map(|d| DeadLetterInfo {
                event_id: d.envelope.metadata.event_id,
                event_name: d.envelope.event_name,
                stream_id: d.envelope.stream_id,
                version: d.envelope.version,
                position: d.envelope.position,
                reason: d.reason,
            })
            .collect(),
    ))
}

async fn retry_dead_letters(
    State(state): State<CatalogState>,
) -> Result<Json<RetryReport>, ApiError> {
    state
        .ops
        .retry_dead_letters(Catalog::NAME, None)
        .await
        .map(Json)
        .map_err(|e| ApiError::from_framework(&e))
}

async fn retry_dead_letter(
    State(state): State<CatalogState>,
    Path(event_id): Path<uuid::Uuid>,
) -> Result<Json<RetryReport>, ApiError> {
    let report = state
        .ops
        .retry_dead_letters(Catalog::NAME, Some(event_id))
        .await
        .map_err(|e| ApiError::from_framework(&e))?;
    if report.resolved.is_empty() && report.failed.is_empty() {
        return Err(ApiError::not_found(format!(
            "no dead letter for event `{event_id}`"
        )));
    }
    Ok(Json(report))
}

/// Starts the catalog service: a consumer group on the bus feeding the catalog projection
/// into the read model, and the queries over it.
///
/// # Errors
/// A backend cannot be reached.
pub async fn catalog_service(backends: &Backends) -> Result<Service, BoxError> {
    let group = backends.group("catalog");
    let app = backends.read_side(App::builder()).await?;
    let app = backends
        .bus(app)
        .await?
        .projection(Catalog, |p| {
            p.from_bus(group, [PRODUCT, COMMENT]).error_policy(policy())
        })
        .build()?;
    let state = CatalogState {
        queries: CatalogQueries::new(app.read_model::<Catalog>()?),
        ops: app.ops(),
    };
    let routes = Router::new()
        .route("/products", get(list_products))
        .route("/products/{id}", get(get_product))
        .route("/dead-letters", get(list_dead_letters))
        .route("/dead-letters/retry", post(retry_dead_letters))
        .route("/dead-letters/{event_id}/retry", post(retry_dead_letter))
        .with_state(state);
    Ok(Service {
        router: with_common_layers(routes, "catalog", app.ops()),
        app,
    })
}
