//! `GET /metrics`: the framework's metrics ([`cqrs_core::metrics`]) in the Prometheus text
//! format, from a Prometheus recorder installed once per process.

use std::sync::OnceLock;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use cqrs_core::app::Ops;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::ApiError;

/// Bucket bounds of the framework's `_seconds` histograms: from 100 µs to 10 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// The process's Prometheus recorder: installed as the global `metrics` recorder on the first
/// call, the same handle after. Durations (`*_seconds`) are histograms with buckets from
/// 100 µs to 10 s.
///
/// # Errors
/// [`Error::Config`](cqrs_core::Error::Config) when another recorder was installed first:
/// give its handle to [`OpsApi::metrics`](crate::OpsApi::metrics) instead.
pub fn prometheus() -> cqrs_core::Result<PrometheusHandle> {
    let installed = HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .and_then(PrometheusBuilder::install_recorder)
            .map_err(|e| e.to_string())
    });
    installed
        .clone()
        .map_err(|e| cqrs_core::Error::Config(format!("no Prometheus recorder: {e}")))
}

/// Renders the metrics, after refreshing the gauges a health report sets (positions, lags).
pub(crate) async fn render(ops: &Ops, handle: Option<&PrometheusHandle>) -> Response {
    let Some(handle) = handle else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics_unavailable",
            "this service has no Prometheus recorder (another metrics recorder is installed)",
        )
        .into_response();
    };
    let _ = ops.health().await;
    handle.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response()
}
