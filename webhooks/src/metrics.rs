//! Every metric the delivering service exports, named in one place (the registry and
//! `GET /metrics` are `imgpipe_infra::metrics`).

use std::sync::Arc;
use std::time::Duration;

use imgpipe_infra::consume::health::HealthSnapshot;
use imgpipe_infra::metrics::MetricKind;
use imgpipe_schemas::headers::ErrorClass;
use metrics::Gauge;
use metrics_exporter_prometheus::{PrometheusHandle, PrometheusRecorder};

/// Delivery attempts, by `outcome`: `delivered`, `failed` (a retry is scheduled), `exhausted`
/// (the last retry failed; given up).
pub const ATTEMPTS: &str = "imgpipe_webhooks_attempts_total";
/// Seconds per attempt (connect to last byte read), by `outcome`.
pub const ATTEMPT_SECONDS: &str = "imgpipe_webhooks_attempt_duration_seconds";
/// Scheduled deliveries dropped without an attempt because their endpoint was disabled or
/// deleted meanwhile.
pub const DROPPED: &str = "imgpipe_webhooks_deliveries_dropped_total";
/// Endpoints the service disabled after failing for longer than allowed.
pub const ENDPOINTS_DISABLED: &str = "imgpipe_webhooks_endpoints_disabled_total";
/// Deliveries due now and not yet attempted (the backlog).
pub const DUE: &str = "imgpipe_webhooks_deliveries_due";
/// Attempts not made because the endpoint's signing secret cannot be opened (the sealing key
/// changed): an operator's fix; the delivery is given up when the schedule is spent.
pub const SECRETS_UNREADABLE: &str = "imgpipe_webhooks_secrets_unreadable_total";
/// Records copied to the dead-letter topic, by error `class`.
pub const RECORDS_DEAD_LETTERED: &str = "imgpipe_webhooks_records_dead_lettered_total";

/// Every metric above (the consumer's health metrics are
/// `imgpipe_infra::consume::health::metric_names::ALL`).
pub const ALL: &[(&str, MetricKind)] = &[
    (ATTEMPTS, MetricKind::Counter),
    (ATTEMPT_SECONDS, MetricKind::Histogram),
    (DROPPED, MetricKind::Counter),
    (ENDPOINTS_DISABLED, MetricKind::Counter),
    (DUE, MetricKind::Gauge),
    (SECRETS_UNREADABLE, MetricKind::Counter),
    (RECORDS_DEAD_LETTERED, MetricKind::Counter),
];

/// How an attempt ended, for [`ATTEMPTS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Delivered,
    Failed,
    Exhausted,
}

impl DeliveryOutcome {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Failed => "failed",
            Self::Exhausted => "exhausted",
        }
    }
}

#[derive(Clone)]
pub(crate) struct WebhookMetrics {
    recorder: Arc<PrometheusRecorder>,
    due: Gauge,
}

impl WebhookMetrics {
    pub(crate) fn new() -> Self {
        // Up to the longest timeout an operator would set.
        const BUCKETS: &[f64] = &[
            0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0,
        ];
        let recorder = Arc::new(imgpipe_infra::metrics::recorder(&[(
            ATTEMPT_SECONDS,
            BUCKETS,
        )]));
        let due = metrics::with_local_recorder(&*recorder, || metrics::gauge!(DUE));
        Self { recorder, due }
    }

    pub(crate) fn handle(&self) -> PrometheusHandle {
        self.recorder.handle()
    }

    pub(crate) fn attempt(&self, outcome: DeliveryOutcome, took: Duration) {
        let label = outcome.as_str();
        metrics::with_local_recorder(&*self.recorder, || {
            metrics::counter!(ATTEMPTS, "outcome" => label).increment(1);
            metrics::histogram!(ATTEMPT_SECONDS, "outcome" => label).record(took.as_secs_f64());
        });
    }

    pub(crate) fn dropped(&self) {
        metrics::with_local_recorder(&*self.recorder, || {
            metrics::counter!(DROPPED).increment(1);
        });
    }

    pub(crate) fn endpoint_disabled(&self) {
        metrics::with_local_recorder(&*self.recorder, || {
            metrics::counter!(ENDPOINTS_DISABLED).increment(1);
        });
    }

    pub(crate) fn secret_unreadable(&self) {
        metrics::with_local_recorder(&*self.recorder, || {
            metrics::counter!(SECRETS_UNREADABLE).increment(1);
        });
    }

    pub(crate) fn due(&self, count: i64) {
        self.due.set(count as f64);
    }

    pub(crate) fn dead_lettered(&self, class: ErrorClass) {
        metrics::with_local_recorder(&*self.recorder, || {
            metrics::counter!(RECORDS_DEAD_LETTERED, "class" => class.as_str()).increment(1);
        });
    }

    /// The consumer's health (names in `imgpipe_infra::consume::health::metric_names`).
    pub(crate) fn consumer_health(&self, health: &HealthSnapshot) {
        metrics::with_local_recorder(&*self.recorder, || health.record(crate::GROUP));
    }
}
