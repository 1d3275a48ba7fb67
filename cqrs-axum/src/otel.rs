//! The framework's `tracing` spans exported with OpenTelemetry (feature `otel`): the command
//! span (with its correlation id), the append, the relay's publish and the processor's batch,
//! over OTLP/HTTP to a collector.
//!
//! ```no_run
//! use tracing_subscriber::layer::SubscriberExt as _;
//! use tracing_subscriber::util::SubscriberInitExt as _;
//!
//! # fn main() -> cqrs_core::Result<()> {
//! let otel = cqrs_axum::otel::Otel::new("catalog", "http://127.0.0.1:4318/v1/traces")?;
//! tracing_subscriber::registry().with(otel.layer()).init();
//! // ... run the service; then flush what is buffered:
//! otel.shutdown()?;
//! # Ok(()) }
//! ```

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::trace::{SdkTracerProvider, Tracer};
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetryLayer;

/// An OTLP exporter of one service's spans. Keep it while the service runs; `shutdown` flushes
/// the spans still buffered.
#[derive(Debug, Clone)]
pub struct Otel {
    provider: SdkTracerProvider,
}

impl Otel {
    /// Spans of service `service` exported in batches to `endpoint`, an OTLP/HTTP traces URL
    /// (a collector's `http://host:4318/v1/traces`).
    ///
    /// # Errors
    /// [`Error::Config`](cqrs_core::Error::Config) when the exporter cannot be built (a
    /// malformed endpoint).
    pub fn new(service: &str, endpoint: &str) -> cqrs_core::Result<Self> {
        let exporter = SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| cqrs_core::Error::Config(format!("OpenTelemetry exporter: {e}")))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                Resource::builder()
                    .with_service_name(service.to_owned())
                    .build(),
            )
            .build();
        Ok(Otel { provider })
    }

    /// The layer that hands `tracing` spans to the exporter, for a `tracing_subscriber`
    /// registry.
    pub fn layer<S>(&self) -> OpenTelemetryLayer<S, Tracer>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        tracing_opentelemetry::layer().with_tracer(self.provider.tracer("cqrs"))
    }

    /// Exports every span finished so far.
    ///
    /// # Errors
    /// [`Error::Backend`](cqrs_core::Error::Backend) when the collector does not take them.
    pub fn flush(&self) -> cqrs_core::Result<()> {
        self.provider.force_flush().map_err(otel_error)
    }

    /// Flushes and stops the exporter.
    ///
    /// # Errors
    /// As [`flush`](Self::flush).
    pub fn shutdown(&self) -> cqrs_core::Result<()> {
        self.provider.shutdown().map_err(otel_error)
    }
}

fn otel_error(e: opentelemetry_sdk::error::OTelSdkError) -> cqrs_core::Error {
    cqrs_core::Error::Backend {
        backend: "opentelemetry",
        message: e.to_string(),
        source: None,
    }
}
