//! Extractors whose rejections are [`ApiError`]s, and the limit on request bodies.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde::Serialize;

use crate::ApiError;

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let code = match &rejection {
            JsonRejection::JsonDataError(_) => "invalid_body",
            JsonRejection::JsonSyntaxError(_) => "malformed_json",
            JsonRejection::MissingJsonContentType(_) => "unsupported_media_type",
            _ if status == StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
            _ => "bad_body",
        };
        Self::new(status, code, rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::bad_request("bad_query", rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::bad_request("bad_path", rejection.body_text())
    }
}

/// A JSON body whose rejections are [`ApiError`]s (`malformed_json`, `invalid_body`, ...);
/// as an answer, the value as JSON.
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// A query string whose rejections are [`ApiError`]s (`bad_query`).
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// A path parameter whose rejections are [`ApiError`]s (`bad_path`).
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// The one parameter of a route's path, an id checked with [`check::id`](crate::check::id):
/// `422 invalid_id` naming the parameter (`/products/{product_id}` names `product_id`), `400
/// bad_path` when it is not UTF-8 once percent-decoded. On a route that has not exactly one
/// parameter (a wiring mistake) it answers `500 internal` and logs the route.
///
/// ```
/// use cqrs_axum::Id;
///
/// async fn show(Id(product_id): Id) -> String {
///     product_id
/// }
/// let _routes: axum::Router = axum::Router::new().route("/products/{product_id}", axum::routing::get(show));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Id(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::new(e.status(), "bad_path", e.body_text()))?;
        let mut params = params.iter();
        match (params.next(), params.next()) {
            (Some((name, value)), None) => {
                crate::check::id(name, value)?;
                Ok(Id(value.to_owned()))
            }
            // The route's mistake, not the request's.
            _ => {
                tracing::error!(path = %parts.uri.path(), "an `Id` on a route without exactly one path parameter");
                Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the service could not answer this request",
                ))
            }
        }
    }
}

/// The most read of a body that is too large before it is answered: reading it to its end lets
/// the client finish sending, so it gets its 413 instead of a connection closed under it.
const MAX_DRAINED: u64 = 1024 * 1024;

/// Gives `router` the service conventions: JSON 404s for unknown routes and `413
/// body_too_large` for a body over `max_body` bytes. At most `max_body` bytes of a request are
/// held in memory; a body announced larger than 1 MiB is refused at once (and its connection
/// closed), a smaller one is read to its end and dropped first.
pub fn json_service(router: Router, max_body: usize) -> Router {
    router
        .fallback(ApiError::no_route)
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn(move |request, next| {
            refuse_large_bodies(request, next, max_body)
        }))
}

async fn refuse_large_bodies(request: Request, next: Next, max: usize) -> Response {
    use futures::StreamExt as _;

    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is larger than {max} bytes"),
        )
        .into_response()
    };
    let announced = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_DRAINED.max(max as u64)) {
        return too_large();
    }
    let (parts, body) = request.into_parts();
    let mut chunks = body.into_data_stream();
    let mut kept: Vec<u8> = Vec::new();
    let mut read: u64 = 0;
    while let Some(chunk) = chunks.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                return ApiError::bad_request(
                    "bad_body",
                    format!("the body could not be read: {e}"),
                )
                .into_response()
            }
        };
        read += chunk.len() as u64;
        if read > MAX_DRAINED.max(max as u64) {
            return too_large();
        }
        if read <= max as u64 {
            kept.extend_from_slice(&chunk);
        }
    }
    if read > max as u64 {
        return too_large();
    }
    next.run(Request::from_parts(parts, axum::body::Body::from(kept)))
        .await
}
