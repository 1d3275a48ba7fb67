//! One JSON shape for every error a service answers: `{"error": "<code>", "message": "..."}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cqrs_core::{CommandError, Error};
use serde::Serialize;

/// An error answer: an HTTP status and a JSON body naming the problem,
/// `{"error": "<code>", "message": "<for people>"}`.
///
/// A domain error becomes one through `From` (implement `From<MyAggregateError> for ApiError`);
/// then a handler's `gateway.send(command).await?` answers a rejection with its own code, a
/// conflict with 409, an outage with 503.
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

    /// 400: the query string, path or body is not what the route takes.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 409 with this code.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// 404: no such resource.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// The answer for a route that does not exist (a router's fallback).
    pub async fn no_route() -> Self {
        Self::not_found("no such route")
    }

    /// A framework or backend failure: 503 when it is transient (a server is down), else 500.
    /// The details go to the log, not to the client.
    pub fn from_framework(error: &Error) -> Self {
        if let Error::WrongAggregateType {
            stream_id, actual, ..
        } = error
        {
            return Self::conflict(
                "id_taken",
                format!("the id `{stream_id}` is already used by a {actual}; choose another"),
            );
        }
        if let Error::RoutingKeyChanged {
            stream_id,
            expected,
            actual,
        } = error
        {
            return Self::conflict(
                "routing_key_changed",
                format!("`{stream_id}` belongs to `{expected}`; it cannot move to `{actual}`"),
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
            Self::internal()
        }
    }

    fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the service failed; see its log",
        )
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        Self::from_framework(&error)
    }
}

impl<E: std::fmt::Display> From<CommandError<E>> for ApiError
where
    ApiError: From<E>,
{
    /// A rejection through the domain error's own mapping; a middleware's refusal is 403, a
    /// conflict that outlasted the retries 409, a failure as [`ApiError::from_framework`].
    fn from(error: CommandError<E>) -> Self {
        match error {
            CommandError::Rejected(e) => e.into(),
            CommandError::Refused(reason) => Self::new(StatusCode::FORBIDDEN, "refused", reason),
            CommandError::Conflict { attempts, .. } => Self::conflict(
                "conflict",
                format!("the resource kept changing concurrently ({attempts} attempts); retry"),
            ),
            CommandError::Failed(e) => Self::from_framework(&e),
            other => {
                tracing::error!(error = %other, "command failed");
                Self::internal()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_that_keeps_its_routing_key_answers_409() {
        let error = Error::RoutingKeyChanged {
            stream_id: "comment-1".into(),
            expected: "p-1".into(),
            actual: "p-2".into(),
        };
        let answer = ApiError::from_framework(&error);
        assert_eq!(answer.status, StatusCode::CONFLICT);
        assert_eq!(answer.code, "routing_key_changed");
        assert!(answer.message.contains("p-1"), "{}", answer.message);
    }

    #[test]
    fn an_outage_answers_503_and_a_bug_500() {
        let down = Error::Backend {
            backend: "postgres",
            message: "connection refused".into(),
            source: None,
        };
        assert_eq!(
            ApiError::from_framework(&down).status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let bug = Error::Config("nothing".into());
        assert_eq!(
            ApiError::from_framework(&bug).status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
