//! The one metrics setup of the workers: a Prometheus registry of the service's own (not the
//! process-wide recorder, so the end-to-end tests, which run several services in one process,
//! read their own numbers), its `GET /metrics`, and the upkeep that drains its histograms.
//! Metric names stay in each service's `metrics.rs`, each with an `ALL` list of them and
//! their [`MetricKind`], which the dashboards' and alert rules' check (`e2e/tests/
//! observability.rs`) reads, so a renamed metric fails the build rather than a dashboard.

use std::time::Duration;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use tokio_util::sync::CancellationToken;

/// What a metric is, which says the series it renders as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    /// With bucket bounds: `_bucket`, `_sum` and `_count`.
    Histogram,
    /// A histogram without bucket bounds renders as a summary: quantiles under its own name,
    /// and `_sum` and `_count`.
    Summary,
}

impl MetricKind {
    /// The word in a `# TYPE` line of the text format.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
            Self::Summary => "summary",
        }
    }

    /// Every series name a metric of this kind named `name` renders.
    pub fn series(self, name: &str) -> Vec<String> {
        let suffixes: &[&str] = match self {
            Self::Counter | Self::Gauge => &[""],
            Self::Histogram => &["_bucket", "_sum", "_count"],
            Self::Summary => &["", "_sum", "_count"],
        };
        suffixes.iter().map(|s| format!("{name}{s}")).collect()
    }
}

/// The metric families in a rendered `/metrics` page (its `# TYPE` lines) that `declared`
/// does not list with that kind: for each crate's test that its `ALL` list is complete.
pub fn undeclared(rendered: &str, declared: &[(&str, MetricKind)]) -> Vec<String> {
    rendered
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter(|family| {
            let mut words = family.split_whitespace();
            let (name, kind) = (words.next(), words.next());
            !declared
                .iter()
                .any(|(d, k)| Some(*d) == name && Some(k.as_str()) == kind)
        })
        .map(str::to_string)
        .collect()
}

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
