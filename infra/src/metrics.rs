//! The one metrics setup of the workers: a Prometheus registry of the service's own (not the
//! process-wide recorder, so the end-to-end tests, which run several services in one process,
//! read their own numbers), its `GET /metrics`, and the upkeep that drains its histograms.
//! Metric names stay in each service's `metrics.rs`.

use std::time::Duration;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use tokio_util::sync::CancellationToken;

/// How often histograms are drained between scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// A registry of the service's own, with the given bucket bounds per histogram name.
pub fn recorder(buckets: &[(&str, &[f64])]) -> PrometheusRecorder {
    buckets
        .iter()
        .try_fold(PrometheusBuilder::new(), |builder, (name, bounds)| {
            builder.set_buckets_for_metric(Matcher::Full((*name).to_string()), bounds)
        })
        .map(PrometheusBuilder::build_recorder)
        // Only an empty bucket list is refused; summaries are the fallback.
        .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder())
}

/// `GET /metrics` in the Prometheus text format, for the ops router.
pub fn router(handle: PrometheusHandle) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let body = handle.render();
            async move { ([(CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response() }
        }),
    )
}

/// Drains the histograms every few seconds until `shutdown`: they buffer samples until then,
/// and without scrapes that would grow without bound.
pub async fn upkeep(handle: PrometheusHandle, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(UPKEEP_INTERVAL);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticks.tick() => handle.run_upkeep(),
        }
    }
}
