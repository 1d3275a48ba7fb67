//! The ops API of a running app: its health, its processors, its dead letters and their
//! retry. Reading is open; retrying needs the bearer token the service was given, and without
//! one it is disabled, not open.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use cqrs_core::app::{Health, Ops, ProcessorHealth};
use cqrs_core::view::DeadLetter;
use cqrs_core::{DeadLetterCursor, RetryReport};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;

use crate::{ApiError, Json, Path, Query};

/// The largest page of `GET /dead-letters`.
pub const MAX_DEAD_LETTERS_PAGE: usize = 500;
/// The page of `GET /dead-letters` without `limit`.
pub const DEFAULT_DEAD_LETTERS_PAGE: usize = 50;

/// The ops routes of one app, as a router to merge into the service's own:
///
/// | route | answer |
/// |---|---|
/// | `GET /health` | [`HealthAnswer`]: 200 while everything runs, 503 with the reason once a processor or relay stopped |
/// | `GET /processors` | each processor's position, lag and state ([`ProcessorHealth`]) |
/// | `GET /metrics` | the framework's metrics, Prometheus text ([`cqrs_core::metrics`]) |
/// | `GET /console` | a page for operators over these routes: processors with a lag bar, relays with their breaker, dead letters with a retry button |
/// | `GET /dead-letters?projection=&limit=&cursor=` | a [`DeadLetterPage`], oldest first |
/// | `POST /dead-letters/retry?projection=` | retries them all: a [`RetryReport`] (token) |
/// | `POST /dead-letters/{event_id}/retry?projection=` | retries one; 404 when there is none (token) |
///
/// `projection` may be left out when the app runs one projection. The `POST` routes need
/// `Authorization: Bearer <token>`: a missing or wrong token is `401 unauthorized` and changes
/// nothing; without a configured token they answer `403 disabled`.
///
/// ```
/// # fn routes(app: &cqrs_core::App) -> axum::Router {
/// let ops = cqrs_axum::OpsApi::new("catalog", app.ops())
///     .token(std::env::var("OPS_TOKEN").ok())
///     .router();
/// # ops }
/// ```
#[derive(Clone)]
pub struct OpsApi {
    service: String,
    ops: Ops,
    token: Option<Arc<str>>,
    metrics: Option<PrometheusHandle>,
}

impl std::fmt::Debug for OpsApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpsApi")
            .field("service", &self.service)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("metrics", &self.metrics.is_some())
            .finish_non_exhaustive()
    }
}

/// `GET /health`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthAnswer {
    /// Which service this is.
    pub service: String,
    /// The app's report: `status`, `relays`, `processors`.
    #[serde(flatten)]
    pub health: Health,
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
    /// When it was dead-lettered.
    pub at: DateTime<Utc>,
}

impl From<DeadLetter> for DeadLetterInfo {
    fn from(d: DeadLetter) -> Self {
        DeadLetterInfo {
            event_id: d.envelope.metadata.event_id,
            event_name: d.envelope.event_name,
            stream_id: d.envelope.stream_id,
            version: d.envelope.version,
            position: d.envelope.position,
            reason: d.reason,
            at: d.at,
        }
    }
}

/// A page of `GET /dead-letters`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterPage {
    /// The projection they belong to.
    pub projection: String,
    /// Oldest first.
    pub items: Vec<DeadLetterInfo>,
    /// The `cursor` of the next page; absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    projection: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectionQuery {
    projection: Option<String>,
}

impl OpsApi {
    /// The ops API of `ops`, answering as service `service`; retries disabled until a token
    /// is given. `/metrics` renders the process's recorder ([`prometheus`](crate::prometheus));
    /// when another recorder was installed first it answers 503 until given its handle
    /// ([`metrics`](Self::metrics)).
    pub fn new(service: impl Into<String>, ops: Ops) -> Self {
        let metrics = match crate::prometheus() {
            Ok(handle) => Some(handle),
            Err(e) => {
                tracing::warn!(error = %e, "GET /metrics is unavailable");
                None
            }
        };
        OpsApi {
            service: service.into(),
            ops,
            token: None,
            metrics,
        }
    }

    /// Renders `/metrics` from this Prometheus handle (a recorder the service installed).
    #[must_use]
    pub fn metrics(mut self, handle: PrometheusHandle) -> Self {
        self.metrics = Some(handle);
        self
    }

    /// The bearer token the mutating routes require. `None` or an empty token disables them.
    #[must_use]
    pub fn token(mut self, token: Option<impl Into<String>>) -> Self {
        self.token = token
            .map(Into::into)
            .filter(|t: &String| !t.is_empty())
            .map(Arc::from);
        self
    }

    /// The routes, to merge into the service's router.
    pub fn router(self) -> Router {
        Router::new()
            .route("/health", get(health))
            .route("/processors", get(processors))
            .route("/metrics", get(metrics))
            .route("/dead-letters", get(dead_letters))
            .route("/dead-letters/retry", post(retry_all))
            .route("/dead-letters/{event_id}/retry", post(retry_one))
            .merge(crate::console::routes())
            .with_state(self)
    }

    /// The projection a request names, or the app's only one.
    fn projection(&self, named: Option<String>) -> Result<String, ApiError> {
        let known = self.ops.projections();
        match named {
            Some(name) if known.contains(&name.as_str()) => Ok(name),
            Some(name) => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_projection",
                format!("the service runs no projection named `{name}` (it runs {known:?})"),
            )),
            None => match known.as_slice() {
                [only] => Ok((*only).to_owned()),
                _ => Err(ApiError::bad_request(
                    "projection_required",
                    format!("name the projection with `?projection=` (one of {known:?})"),
                )),
            },
        }
    }

    /// Checks the bearer token of a mutating request.
    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(token) = &self.token else {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "disabled",
                "this service was started without an ops token: retries are disabled",
            ));
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
            Ok(())
        } else {
            tracing::warn!(service = %self.service, "ops request with a missing or wrong token");
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid `Authorization: Bearer <token>` header is required",
            ))
        }
    }
}

async fn health(State(api): State<OpsApi>) -> Response {
    let health = api.ops.health().await;
    let code = if health.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let answer = HealthAnswer {
        service: api.service.clone(),
        health,
    };
    (code, Json(answer)).into_response()
}

async fn metrics(State(api): State<OpsApi>) -> Response {
    crate::metrics::render(&api.ops, api.metrics.as_ref()).await
}

async fn processors(State(api): State<OpsApi>) -> Json<Vec<ProcessorHealth>> {
    Json(api.ops.health().await.processors)
}

async fn dead_letters(
    State(api): State<OpsApi>,
    Query(query): Query<PageQuery>,
) -> Result<Json<DeadLetterPage>, ApiError> {
    let projection = api.projection(query.projection)?;
    let limit = query.limit.unwrap_or(DEFAULT_DEAD_LETTERS_PAGE);
    if !(1..=MAX_DEAD_LETTERS_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "bad_query",
            format!("`limit` must be from 1 to {MAX_DEAD_LETTERS_PAGE}"),
        ));
    }
    let after = query
        .cursor
        .map(|c| c.parse::<DeadLetterCursor>())
        .transpose()
        .map_err(|e| ApiError::bad_request("bad_query", e.to_string()))?;
    // One more than the page tells whether another follows.
    let mut page = api
        .ops
        .dead_letters_page(&projection, after, limit + 1)
        .await?;
    let more = page.len() > limit;
    page.truncate(limit);
    let next = more
        .then(|| page.last().map(|d| d.cursor().to_string()))
        .flatten();
    Ok(Json(DeadLetterPage {
        projection,
        items: page.into_iter().map(DeadLetterInfo::from).collect(),
        next,
    }))
}

async fn retry_all(
    State(api): State<OpsApi>,
    headers: HeaderMap,
    Query(query): Query<ProjectionQuery>,
) -> Result<Json<RetryReport>, ApiError> {
    api.authorize(&headers)?;
    let projection = api.projection(query.projection)?;
    Ok(Json(api.ops.retry_dead_letters(&projection, None).await?))
}

async fn retry_one(
    State(api): State<OpsApi>,
    headers: HeaderMap,
    Path(event_id): Path<uuid::Uuid>,
    Query(query): Query<ProjectionQuery>,
) -> Result<Json<RetryReport>, ApiError> {
    api.authorize(&headers)?;
    let projection = api.projection(query.projection)?;
    let report = api
        .ops
        .retry_dead_letters(&projection, Some(event_id))
        .await?;
    if report.resolved.is_empty() && report.failed.is_empty() {
        return Err(ApiError::not_found(format!(
            "no dead letter for event `{event_id}`"
        )));
    }
    Ok(Json(report))
}
