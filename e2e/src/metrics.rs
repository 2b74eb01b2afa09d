//! The services' `/metrics` pages, as the tests read them.

use crate::Pipeline;

impl Pipeline {
    /// The processor's `/metrics` page.
    pub async fn processor_metrics(&self) -> String {
        self.metrics_page(&self.processor_ops_url).await
    }

    /// The projector's `/metrics` page.
    pub async fn projector_metrics(&self) -> String {
        self.metrics_page(&self.projector_ops_url).await
    }

    /// The value of one series (name and labels, as rendered) on the processor's `/metrics`,
    /// 0 when it was never recorded.
    pub async fn processor_metric(&self, series: &str) -> f64 {
        series_value(&self.processor_metrics().await, series).unwrap_or(0.0)
    }

    async fn metrics_page(&self, ops_url: &str) -> String {
        self.http
            .get(format!("{ops_url}/metrics"))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .expect("the ops endpoint answers")
            .text()
            .await
            .expect("a /metrics page")
    }
}

/// A service's `/metrics` page at `ops_url`; `None` while it does not answer (a process that
/// is down or still starting).
pub async fn page(http: &reqwest::Client, ops_url: &str) -> Option<String> {
    http.get(format!("{ops_url}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()
}

/// The value of `series` (name and labels, as rendered) on a Prometheus text page.
pub fn series_value(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.trim().parse().expect("a number"))
}
