//! A service: an app, the HTTP routes over it and its ops API, served until a signal, then
//! stopped in order.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use cqrs_core::{App, BoxError};

use crate::OpsApi;

/// The largest request body a [`Service`] accepts unless told otherwise (bytes).
pub const DEFAULT_MAX_BODY: usize = 16 * 1024;

/// How long a [`Service`] lets the requests in flight finish after a stop signal, unless told
/// otherwise; then the app shuts down anyway.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(10);

/// A service: the app (its gateway, relays and processors) and the HTTP routes over it. Its
/// router is the service's routes, the ops API of the app ([`OpsApi`]) and the JSON
/// conventions ([`json_service`](crate::json_service)); the service's own routes must not
/// take the ops API's paths (`/health`, `/processors`, `/metrics`, `/dead-letters...`,
/// `/console...`): axum refuses overlapping routes.
///
/// Install the metrics recorder ([`prometheus`](crate::prometheus)) before building the app:
/// what the app does before it is installed is not counted.
///
/// ```no_run
/// # async fn run(app: cqrs_core::App, routes: axum::Router) -> Result<(), cqrs_core::BoxError> {
/// let service = cqrs_axum::Service::new("catalog", app, routes)
///     .ops_token(std::env::var("OPS_TOKEN").ok());
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3003").await?;
/// service.serve(listener).await // until Ctrl-C or SIGTERM; then the app stops
/// # }
/// ```
pub struct Service {
    name: String,
    app: App,
    routes: Router,
    token: Option<String>,
    max_body: usize,
    drain: Duration,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.name)
            .field("app", &self.app)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("max_body", &self.max_body)
            .field("drain", &self.drain)
            .finish_non_exhaustive()
    }
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
            drain: DEFAULT_DRAIN,
        }
    }

    /// How long the requests in flight may take to finish after a stop signal (default
    /// [`DEFAULT_DRAIN`]); then the app shuts down whatever they do.
    #[must_use]
    pub fn drain(mut self, drain: Duration) -> Self {
        self.drain = drain;
        self
    }

    /// The bearer token of the ops API's retries; `None` (the default) disables them.
    #[must_use]
    pub fn ops_token(mut self, token: Option<impl Into<String>>) -> Self {
        self.token = token.map(Into::into);
        self
    }

    /// The largest request body accepted, in bytes (default [`DEFAULT_MAX_BODY`]).
    #[must_use]
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
        // The signal starts the drain's clock: requests still running after it are dropped.
        let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
        let stop = async move {
            stop.await;
            let _ = stopped_tx.send(());
        };
        let serving = crate::serve_until(listener, self.router(), stop);
        let deadline = async {
            if stopped_rx.await.is_ok() {
                tokio::time::sleep(self.drain).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let served = tokio::select! {
            served = serving => served,
            () = deadline => {
                tracing::warn!(service = %self.name, drain = ?self.drain, "requests still running after the drain; stopping anyway");
                Ok(())
            }
        };
        tracing::info!(service = %self.name, "stopping");
        // The app stops whatever the listener did; a listener error comes first.
        let stopped = self.app.shutdown().await;
        served?;
        Ok(stopped?)
    }
}
