//! The catalog service: a consumer group on the bus, or segments of the store's log, build the
//! catalog read model; it answers queries. Its dead letters and their retry are on the ops routes.

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use cqrs_axum::{ApiError, Id, Json, Query};
use std::time::Duration;

use cqrs_core::app::ProjectionOptions;
use cqrs_core::{App, BoxError};
use serde::{Deserialize, Serialize};

use super::{policy, CatalogFeed, Service, Shop, MAX_PAGE, MAX_PER_PAGE};
use crate::catalog::{Catalog, CatalogEntry, CatalogQueries};
use crate::comment::COMMENT;
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

async fn list(
    State(queries): State<CatalogQueries>,
    Query(Paging { page, per_page }): Query<Paging>,
) -> Result<Json<CatalogPage>, ApiError> {
    if page > MAX_PAGE {
        let message = format!("`page` must be at most {MAX_PAGE}");
        return Err(ApiError::bad_request("bad_query", message));
    }
    if !(1..=MAX_PER_PAGE).contains(&per_page) {
        let message = format!("`per_page` must be from 1 to {MAX_PER_PAGE}");
        return Err(ApiError::bad_request("bad_query", message));
    }
    let total = queries.count().await?;
    let items = queries.list(page, per_page).await?;
    Ok(Json(CatalogPage {
        page,
        per_page,
        total,
        items,
    }))
}

async fn entry(
    State(queries): State<CatalogQueries>,
    Id(product_id): Id,
) -> Result<Json<CatalogEntry>, ApiError> {
    let missing = || ApiError::not_found(format!("product `{product_id}` is not in the catalog"));
    queries
        .entry(&product_id)
        .await?
        .map(Json)
        .ok_or_else(missing)
}

/// Starts the catalog service: a consumer group on the bus (or segments of the store's log)
/// feeding the catalog projection into the read model, and the queries over it.
///
/// # Errors
/// A backend cannot be reached.
pub async fn catalog_service(shop: &Shop) -> Result<Service, BoxError> {
    let (b, s) = (&shop.backends, &shop.settings);
    let app = match s.catalog_feed {
        CatalogFeed::Bus => {
            let feed = |p: ProjectionOptions| p.from_bus(b.group("catalog"), [PRODUCT, COMMENT]);
            let app = App::builder().with(b.views().await?).with(b.bus().await?);
            app.projection(Catalog, |p| feed(p).error_policy(policy()))
        }
        // Every instance on one MongoDB shares the segments.
        CatalogFeed::Store => {
            let lease = Duration::from_millis(s.segment_lease_ms);
            let feed = |p: ProjectionOptions| p.segments(s.catalog_segments).segment_lease(lease);
            let app = App::builder().with(b.store().await?).with(b.views().await?);
            app.projection(Catalog, |p| feed(p).error_policy(policy()))
        }
    }
    .build()?;
    let routes = Router::new()
        .route("/products", get(list))
        .route("/products/{product_id}", get(entry))
        .with_state(CatalogQueries::new(app.read_model::<Catalog>()?));
    Ok(shop.service("catalog", app, routes))
}
