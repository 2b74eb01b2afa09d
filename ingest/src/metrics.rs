//! Every metric ingest exports, named in one place, and the Prometheus endpoint.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use imgpipe_infra::metrics::MetricKind;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Requests answered, by route template, method and status.
pub const REQUESTS: &str = "imgpipe_ingest_requests_total";
/// Seconds from request to response, by route template and method.
pub const REQUEST_SECONDS: &str = "imgpipe_ingest_request_duration_seconds";
/// Bytes of accepted originals.
pub const UPLOAD_BYTES: &str = "imgpipe_ingest_upload_bytes_total";
/// Seconds the broker took to acknowledge an event.
pub const PRODUCE_SECONDS: &str = "imgpipe_ingest_produce_duration_seconds";
/// Error responses, by their `code` (the API's error codes: `rate-limited`,
/// `storage-unavailable`, ...); [`REQUESTS`] has only the status.
pub const ERRORS: &str = "imgpipe_ingest_errors_total";

/// Every metric above, for the check of the dashboards and alert rules. The durations have no
/// bucket bounds, so they render as summaries.
pub const ALL: &[(&str, MetricKind)] = &[
    (REQUESTS, MetricKind::Counter),
    (REQUEST_SECONDS, MetricKind::Summary),
    (UPLOAD_BYTES, MetricKind::Counter),
    (PRODUCE_SECONDS, MetricKind::Summary),
    (ERRORS, MetricKind::Counter),
];

/// The process-wide recorder (a process has one, even with several apps in a test binary).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new();
        match builder.install_recorder() {
            Ok(handle) => handle,
            // Another recorder is installed already; keep one that renders nothing rather
            // than refuse to start.
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        }
    })
}

/// `GET /metrics` in the Prometheus text format.
pub async fn render() -> Response {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle().render(),
    )
        .into_response()
}

/// Counts and times every request by its route template (not its raw path, which would make
/// one series per image id).
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(REQUESTS, "route" => route.clone(), "method" => method.clone(), "status" => status)
        .increment(1);
    metrics::histogram!(REQUEST_SECONDS, "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IngestError;

    #[test]
    fn error_responses_are_counted_by_code_under_the_documented_names() {
        let recorder = PrometheusBuilder::new().build_recorder();
        metrics::with_local_recorder(&recorder, || {
            let _ = IngestError::MissingApiKey.into_response();
            let _ = IngestError::MissingApiKey.into_response();
            metrics::counter!(REQUESTS, "route" => "/v1/images", "method" => "POST", "status" => "401")
                .increment(1);
            metrics::histogram!(REQUEST_SECONDS).record(0.01);
        });
        let text = recorder.handle().render();
        assert!(
            text.contains("imgpipe_ingest_errors_total{code=\"missing-api-key\"} 2"),
            "{text}"
        );
        let undeclared = imgpipe_infra::metrics::undeclared(&text, ALL);
        assert!(undeclared.is_empty(), "not in ALL: {undeclared:?}");
    }
}
