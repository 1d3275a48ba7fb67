//! What the shop's HTTP services share: JSON errors, extractors that answer bad input with
//! them, id validation and the health route.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cqrs_core::{CommandError, Envelope, Error};
use serde::Serialize;

/// The largest request body the services accept (bytes).
pub const MAX_BODY: usize = 16 * 1024;

/// The most a service reads of a body that is too large before it answers 413: reading it
/// to its end lets the client finish sending, so it gets its 413 instead of a connection
/// closed under it. A body announced larger is answered at once (and the connection closed).
pub const MAX_DRAINED: u64 = 1024 * 1024;

/// Answers a request whose body is larger than [`MAX_BODY`] with `413 body_too_large`, after
/// reading the rest of the body and dropping it (up to [`MAX_DRAINED`]); passes the others
/// on with their body. At most `MAX_BODY` bytes of a request are held in memory.
pub async fn refuse_large_bodies(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use futures::StreamExt as _;

    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is larger than {MAX_BODY} bytes"),
        )
        .into_response()
    };
    let announced = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_DRAINED) {
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
                return ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_body",
                    format!("the body could not be read: {e}"),
                )
                .into_response()
            }
        };
        read += chunk.len() as u64;
        if read > MAX_DRAINED {
            return too_large();
        }
        if read <= MAX_BODY as u64 {
            kept.extend_from_slice(&chunk);
        }
    }
    if read > MAX_BODY as u64 {
        return too_large();
    }
    next.run(axum::extract::Request::from_parts(
        parts,
        axum::body::Body::from(kept),
    ))
    .await
}

/// The longest id the services accept.
pub const MAX_ID_LEN: usize = 64;

/// An error answer: an HTTP status and a JSON body naming the problem,
/// `{"error": "<code>", "message": "<for people>"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable, machine-readable code (`malformed_json`, `unknown_product`, ...).
    pub code: &'static str,
    /// What went wrong, for people.
    pub message: String,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 422: the request is well-formed but a value is not acceptable.
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// 404: no such resource.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// A framework or backend failure: 503 when it is transient (a server is down), else 500.
    /// The details go to the log, not to the client.
    pub fn from_framework(error: &Error) -> Self {
        if let Error::WrongAggregateType {
            stream_id, actual, ..
        } = error
        {
            return Self::new(
                StatusCode::CONFLICT,
                "id_taken",
                format!("the id `{stream_id}` is already used by a {actual}; choose another"),
            );
        }
        if error.is_transient() {
            tracing::warn!(error = %error, "a backend is unavailable");
            Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "a backend the service needs is unavailable; try again later",
            )
        } else {
            tracing::error!(error = %error, "request failed");
            Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the service failed; see its log",
            )
        }
    }

    /// Maps a command's failure; `rejected` maps the aggregate's own rejections.
    pub fn from_command<E: std::fmt::Display>(
        error: CommandError<E>,
        rejected: impl FnOnce(E) -> ApiError,
    ) -> Self {
        match error {
            CommandError::Rejected(e) => rejected(e),
            CommandError::Refused(reason) => Self::new(StatusCode::FORBIDDEN, "refused", reason),
            CommandError::Conflict { attempts, .. } => Self::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("the resource kept changing concurrently ({attempts} attempts); retry"),
            ),
            CommandError::Failed(e) => Self::from_framework(&e),
            other => {
                tracing::error!(error = %other, "command failed");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the service failed; see its log",
                )
            }
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code,
            message: &self.message,
        };
        (self.status, axum::Json(body)).into_response()
    }
}

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
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!("the body is larger than {MAX_BODY} bytes")
        } else {
            rejection.body_text()
        };
        Self::new(status, code, message)
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_query", rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_path", rejection.body_text())
    }
}

/// A JSON body whose rejections are [`ApiError`]s.
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// A query string whose rejections are [`ApiError`]s.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// A path parameter whose rejections are [`ApiError`]s.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// Checks an id: 1 to 64 characters out of letters, digits, `-`, `_` and `.`.
///
/// # Errors
/// `422 invalid_id` naming the field.
pub fn check_id(field: &str, id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "invalid_id",
            format!("`{field}` must be 1 to {MAX_ID_LEN} letters, digits, `-`, `_` or `.`"),
        ))
    }
}

/// Checks a text field: at most `max` characters, and no control characters other than line
/// breaks and tabs (a NUL, say, which some stores refuse).
///
/// # Errors
/// `422 too_long` or `422 invalid_text` naming the field.
pub fn check_len(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(ApiError::invalid(
            "invalid_text",
            format!("`{field}` must not contain control characters"),
        ));
    }
    if value.chars().count() > max {
        Err(ApiError::invalid(
            "too_long",
            format!("`{field}` must be at most {max} characters"),
        ))
    } else {
        Ok(())
    }
}

/// What a command answers: the aggregate, its version after the command, and the events it
/// recorded (none when the command changed nothing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Accepted {
    /// The aggregate's id.
    pub id: String,
    /// Its version after the command (absent when nothing was recorded).
    pub version: Option<u64>,
    /// The names of the events recorded.
    pub events: Vec<String>,
}

impl Accepted {
    /// The answer for the events a command recorded on aggregate `id`.
    pub fn new(id: impl Into<String>, events: &[Envelope]) -> Self {
        Accepted {
            id: id.into(),
            version: events.last().map(|e| e.version),
            events: events.iter().map(|e| e.event_name.clone()).collect(),
        }
    }
}

/// `GET /health`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Health {
    /// `ok`; `degraded` (with status 503) once one of its processors or its relay has stopped.
    pub status: String,
    /// Which service this is.
    pub service: String,
    /// The relay of a write service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<RelayHealth>,
    /// The service's tracking processors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processors: Vec<ProcessorHealth>,
}

/// A relay's state in `GET /health`.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct RelayHealth {
    /// Its circuit breaker: `closed`, `open` (the bus is failing; events wait in the store)
    /// or `half_open`.
    pub breaker: cqrs_core::Breaker,
    /// The last global position it published.
    pub position: u64,
}

/// A tracking processor's state in `GET /health`.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ProcessorHealth {
    /// The processor (projection) name.
    pub name: String,
    /// The largest global position it has committed.
    pub position: u64,
    /// Why it stopped, once it has: its read model no longer follows the events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

/// The answer for a route that does not exist.
pub async fn no_route() -> ApiError {
    ApiError::not_found("no such route")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_short_and_plain() {
        assert!(check_id("id", "p-1_a.b").is_ok());
        for bad in ["", "a b", "x'; DROP TABLE events; --", "é", &"a".repeat(65)] {
            let e = check_id("product_id", bad).expect_err(bad);
            assert_eq!(
                (e.status, e.code),
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_id")
            );
            assert!(e.message.contains("product_id"));
        }
    }

    #[test]
    fn lengths_count_characters() {
        assert!(check_len("text", "ééé", 3).is_ok());
        assert_eq!(
            check_len("text", "éééé", 3).map_err(|e| e.code),
            Err("too_long")
        );
    }
}
