//! Every metric the projector exports, named in one place (the registry and `GET /metrics` are
//! `imgpipe_infra::metrics`).
//!
//! Each projector records into a registry of its own (not the process-wide recorder), so the
//! end-to-end tests, which run several services in one process, read their own numbers.

use std::sync::Arc;
use std::time::Duration;

use imgpipe_infra::metrics::MetricKind;
use metrics::Counter;
use metrics_exporter_prometheus::{PrometheusHandle, PrometheusRecorder};

/// Events that changed the read models, by `event_type`.
pub const EVENTS_APPLIED: &str = "imgpipe_projector_events_applied_total";
/// Events already in the read models (delivered again, or redriven), which changed nothing.
pub const EVENTS_DUPLICATE: &str = "imgpipe_projector_events_duplicate_total";
/// Records sent to the dead-letter topic, by error `class` (`undecodable-record`,
/// `database-rejected`); their position advances with the batch.
pub const RECORDS_DEAD_LETTERED: &str = "imgpipe_projector_records_dead_lettered_total";
/// Records per committed batch.
pub const BATCH_RECORDS: &str = "imgpipe_projector_batch_records";
/// Seconds from a batch's first record received to its transaction committed.
pub const BATCH_SECONDS: &str = "imgpipe_projector_batch_duration_seconds";
/// Seconds from an upload accepted (its `ImageUploaded` event) to the image first shown
/// `ready` by the read model (the batch that applied its `ImageProcessed` committed): the
/// whole pipeline as a client polling the API sees it.
pub const UPLOAD_TO_READY_SECONDS: &str = "imgpipe_projector_upload_to_ready_seconds";
/// Batches rolled back because the stored position was not the one expected (another
/// instance moved it, or a rebuild was swapped in); the projector then seeks to the stored one.
pub const POSITION_CONFLICTS: &str = "imgpipe_projector_position_conflicts_total";

/// Every metric above, for the check of the dashboards and alert rules (the consumer's health
/// metrics are `imgpipe_infra::consume::health::metric_names::ALL`).
pub const ALL: &[(&str, MetricKind)] = &[
    (EVENTS_APPLIED, MetricKind::Counter),
    (EVENTS_DUPLICATE, MetricKind::Counter),
    (RECORDS_DEAD_LETTERED, MetricKind::Counter),
    (BATCH_RECORDS, MetricKind::Histogram),
    (BATCH_SECONDS, MetricKind::Histogram),
    (POSITION_CONFLICTS, MetricKind::Counter),
    (UPLOAD_TO_READY_SECONDS, MetricKind::Histogram),
];

#[derive(Clone)]
pub struct ProjectorMetrics {
    recorder: Arc<PrometheusRecorder>,
    duplicates: Counter,
    conflicts: Counter,
}

impl Default for ProjectorMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ProjectorMetrics {
    pub fn new() -> Self {
        const SECONDS: &[f64] = &[
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
        ];
        const RECORDS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0];
        // Sub-second when idle (BENCHMARKS: p50 0.63 s), minutes when a backlog queues.
        const UPLOAD_TO_READY: &[f64] = &[
            0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
        ];
        let recorder = Arc::new(imgpipe_infra::metrics::recorder(&[
            (BATCH_SECONDS, SECONDS),
            (BATCH_RECORDS, RECORDS),
            (UPLOAD_TO_READY_SECONDS, UPLOAD_TO_READY),
        ]));
        let (duplicates, conflicts) = metrics::with_local_recorder(&*recorder, || {
            (
                metrics::counter!(EVENTS_DUPLICATE),
                metrics::counter!(POSITION_CONFLICTS),
            )
        });
        Self {
            recorder,
            duplicates,
            conflicts,
        }
    }

    /// The consumer's health (names in `imgpipe_infra::consume::health::metric_names`).
    pub(crate) fn consumer_health(&self, health: &imgpipe_infra::consume::health::HealthSnapshot) {
        metrics::with_local_recorder(&*self.recorder, || health.record(crate::GROUP));
    }

    pub fn handle(&self) -> PrometheusHandle {
        self.recorder.handle()
    }

    pub(crate) fn batch(&self, report: &crate::batch::BatchReport, took: Duration) {
        self.duplicates.increment(report.duplicates);
        metrics::with_local_recorder(&*self.recorder, || {
            for (event_type, count) in &report.applied {
                metrics::counter!(EVENTS_APPLIED, "event_type" => *event_type).increment(*count);
            }
            for (class, count) in &report.rejected {
                metrics::counter!(RECORDS_DEAD_LETTERED, "class" => *class).increment(*count);
            }
            metrics::histogram!(BATCH_RECORDS).record(report.records as f64);
            metrics::histogram!(BATCH_SECONDS).record(took.as_secs_f64());
            let upload_to_ready = metrics::histogram!(UPLOAD_TO_READY_SECONDS);
            for after in &report.first_ready_after_upload {
                upload_to_ready.record(after.as_secs_f64());
            }
        });
    }

    pub(crate) fn conflict(&self) {
        self.conflicts.increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::BatchReport;

    #[test]
    fn renders_what_was_recorded_under_the_documented_names() {
        let metrics = ProjectorMetrics::new();
        let mut report = BatchReport {
            records: 3,
            duplicates: 1,
            ..BatchReport::default()
        };
        report.applied.insert("ImageUploaded", 2);
        report.rejected.insert("undecodable-record", 1);
        report.first_ready_after_upload = vec![Duration::from_millis(700)];
        metrics.batch(&report, Duration::from_millis(3));
        metrics.conflict();
        let health =
            imgpipe_infra::consume::ConsumerHealth::new(std::time::Duration::from_secs(30));
        health.record_lag([(2, 5)]);
        metrics.consumer_health(&health.snapshot());
        let text = metrics.handle().render();
        for expected in [
            "imgpipe_projector_events_applied_total{event_type=\"ImageUploaded\"} 2",
            "imgpipe_projector_events_duplicate_total 1",
            "imgpipe_projector_records_dead_lettered_total{class=\"undecodable-record\"} 1",
            "imgpipe_projector_batch_records_bucket{le=\"5\"} 1",
            "imgpipe_projector_batch_duration_seconds_bucket{le=\"0.005\"} 1",
            "imgpipe_projector_position_conflicts_total 1",
            "imgpipe_projector_upload_to_ready_seconds_bucket{le=\"0.5\"} 0",
            "imgpipe_projector_upload_to_ready_seconds_bucket{le=\"1\"} 1",
            "imgpipe_consumer_lag{group=\"imgpipe-projector\",partition=\"2\"} 5",
        ] {
            assert!(text.contains(expected), "{expected} missing from:\n{text}");
        }
        let declared = [ALL, imgpipe_infra::consume::health::metric_names::ALL].concat();
        let undeclared = imgpipe_infra::metrics::undeclared(&text, &declared);
        assert!(undeclared.is_empty(), "not in ALL: {undeclared:?}");
    }
}
