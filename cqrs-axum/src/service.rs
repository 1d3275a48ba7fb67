//! A service: an app, the HTTP routes over it and its ops API, served until a signal, then
//! stopped in order.

use std::future::Future;

use axum::Router;
use cqrs_core::{App, BoxError};

use crate::OpsApi;

/// The largest request body a [`Service`] accepts unless told otherwise (bytes).
pub const DEFAULT_MAX_BODY: usize = 16 * 1024;

/// A service: the app (its gateway, relays and processors) and the HTTP routes over it. Its
/// router is the service's routes, the ops API of the app ([`OpsApi`]) and the JSON
/// conventions ([`json_service`](crate::json_service)).
///
/// ```no_run
/// # async fn run(app: cqrs_core::App, routes: axum::Router) -> Result<(), cqrs_core::BoxError> {
/// let service = cqrs_axum::Service::new("catalog", app, routes)
///     .ops_token(std::env::var("OPS_TOKEN").ok());
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3003").await?;
/// service.serve(listener).await // until Ctrl-C or SIGTERM; then the app stops
/// # }
/// ```
#[derive(Debug)]
pub struct Service {
    name: String,
    app: App,
    routes: Router,
    token: Option<String>,
    max_body: usize,
}

impl Service {
    /// A service named `name` (as `/health` reports it) answering `routes` over `app`.
    pub fn new(name: impl Into<String>, app: App, routes: Router) -> Self {
        Service {
            name: name.into(),
            app,
            routes,
            token: None,
            max_body: DEFAULT_MAX_BODY,
        }
    }

    /// The bearer token of the ops API's retries; `None` (the default) disables them.
    pub fn ops_token(mut self, token: Option<impl Into<String>>) -> Self {
        self.token = token.map(Into::into);
        self
    }

    /// The largest request body accepted, in bytes (default [`DEFAULT_MAX_BODY`]).
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The app behind the routes.
    pub fn app(&self) -> &App {
        &self.app
    }

    /// The whole router: the service's routes, the ops API and the JSON conventions.
    pub fn router(&self) -> Router {
        let ops = OpsApi::new(self.name.clone(), self.app.ops()).token(self.token.clone());
        crate::json_service(self.routes.clone().merge(ops.router()), self.max_body)
    }

    /// Serves on `listener` until Ctrl-C or SIGTERM, lets the requests in flight finish, then
    /// shuts the app down (its units of work in flight finish first).
    ///
    /// # Errors
    /// The listener failed, or the error a relay or processor had ended with.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> Result<(), BoxError> {
        self.serve_until(listener, crate::shutdown_signal()).await
    }

    /// As [`serve`](Self::serve), until `stop` completes.
    ///
    /// # Errors
    /// As [`serve`](Self::serve).
    pub async fn serve_until(
        self,
        listener: tokio::net::TcpListener,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), BoxError> {
        let address = listener.local_addr()?;
        tracing::info!(service = %self.name, %address, "listening");
        let served = crate::serve_until(listener, self.router(), stop).await;
        tracing::info!(service = %self.name, "stopping");
        // The app stops whatever the listener did; a listener error comes first.
        let stopped = self.app.shutdown().await;
        served?;
        Ok(stopped?)
    }
}
