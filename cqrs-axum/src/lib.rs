#![doc = include_str!("../README.md")]
//!
//! # A write service in a few lines
//!
//! ```
//! use axum::extract::State;
//! use axum::routing::post;
//! use cqrs_axum::{send, ApiError, Json};
//! use cqrs_core::{App, CommandGateway};
//! # use cqrs_core::{Aggregate, Command};
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)] pub struct Opened { pub id: String }
//! # cqrs_core::event!(Opened, "doc.axum.Opened");
//! # #[derive(Debug, Deserialize)] pub struct Open { pub id: String }
//! # impl Command for Open { type Aggregate = Account; fn aggregate_id(&self) -> &str { &self.id } }
//! # #[derive(Debug, thiserror::Error)] #[error("already open")] pub struct AlreadyOpen;
//! # #[derive(Debug, Default, Clone, Serialize, Deserialize)] pub struct Account { open: bool }
//! # impl Aggregate for Account {
//! #     const TYPE: &'static str = "doc-account";
//! #     type Command = Open; type Event = Opened; type Error = AlreadyOpen;
//! #     fn handle(&self, c: &Open) -> Result<Vec<Opened>, AlreadyOpen> {
//! #         if self.open { Err(AlreadyOpen) } else { Ok(vec![Opened { id: c.id.clone() }]) } }
//! #     fn apply(&mut self, _: &Opened) { self.open = true; }
//! # }
//! // A domain rejection keeps its meaning over HTTP.
//! impl From<AlreadyOpen> for ApiError {
//!     fn from(e: AlreadyOpen) -> Self {
//!         ApiError::conflict("already_open", e.to_string())
//!     }
//! }
//!
//! async fn open(State(gateway): State<CommandGateway>, Json(open): Json<Open>)
//!     -> Result<Json<cqrs_axum::Accepted>, ApiError> {
//!     send(&gateway, open).await
//! }
//!
//! fn routes(app: &App) -> axum::Router {
//!     let routes = axum::Router::new()
//!         .route("/accounts", post(open))
//!         .with_state(app.gateway().clone())
//!         .merge(cqrs_axum::OpsApi::new("accounts", app.ops()).router());
//!     cqrs_axum::json_service(routes, 16 * 1024)
//! }
//! ```

pub mod check;
mod command;
mod console;
mod error;
mod extract;
mod metrics;
mod ops;
#[cfg(feature = "otel")]
pub mod otel;
mod service;

use std::future::Future;

pub use crate::command::{send, send_to, Accepted};
pub use crate::error::ApiError;
pub use crate::extract::{json_service, Id, Json, Path, Query};
pub use crate::metrics::prometheus;
pub use crate::ops::{
    DeadLetterInfo, DeadLetterPage, HealthAnswer, OpsApi, DEFAULT_DEAD_LETTERS_PAGE,
    MAX_DEAD_LETTERS_PAGE,
};
pub use crate::service::{Service, DEFAULT_DRAIN, DEFAULT_MAX_BODY};
pub use metrics_exporter_prometheus::PrometheusHandle;

/// Serves `router` on `listener` until Ctrl-C or SIGTERM ([`shutdown_signal`]), then lets
/// the requests in flight finish. Stop the app's relays and processors after it returns.
///
/// # Errors
/// The listener fails.
pub async fn serve(listener: tokio::net::TcpListener, router: axum::Router) -> std::io::Result<()> {
    serve_until(listener, router, shutdown_signal()).await
}

/// Serves `router` on `listener` until `stop` completes, then lets the requests in flight
/// finish.
///
/// # Errors
/// The listener fails.
pub async fn serve_until(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(stop)
        .await
}

/// Completes on Ctrl-C or (on Unix) SIGTERM. A signal that cannot be listened for is logged
/// and waited on no longer; the other still stops the service.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
