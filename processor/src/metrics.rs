//! Every metric the processor exports, named in one place (the registry and `GET /metrics` are
//! `imgpipe_infra::metrics`).
//!
//! Each processor records into a registry of its own rather than the process-wide recorder:
//! the end-to-end tests run ingest and several processors in one process, and each pipeline's
//! numbers must be its own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use imgpipe_infra::breaker::BreakerState;
use imgpipe_infra::consume::health::HealthSnapshot;
use imgpipe_infra::metrics::MetricKind;
use imgpipe_schemas::headers::ErrorClass;
use imgpipe_schemas::ReasonCode;
use metrics::{Counter, Gauge};
use metrics_exporter_prometheus::{PrometheusHandle, PrometheusRecorder};

/// Images whose variants were stored and announced.
pub const IMAGES_PROCESSED: &str = "imgpipe_processor_images_processed_total";
/// Images announced as failed, by `reason` code (`undecodable`, `original-missing`, ...).
pub const IMAGES_FAILED: &str = "imgpipe_processor_images_failed_total";
/// Seconds per step of an image, by `stage`: download, render (waiting for a CPU slot
/// included), within it decode, resize and encode, then upload, announce.
pub const STAGE_SECONDS: &str = "imgpipe_processor_stage_duration_seconds";
/// Images being handled right now.
pub const IMAGES_IN_FLIGHT: &str = "imgpipe_processor_images_in_flight";
/// Object-store calls that failed other than with a missing object (S3 5xx, timeouts, refused
/// connections); the record is retried, or waits for the breaker once it opened.
pub const STORAGE_ERRORS: &str = "imgpipe_processor_storage_errors_total";
/// The object-store circuit breaker: 0 closed, 1 half-open, 2 open.
pub const STORAGE_BREAKER_STATE: &str = "imgpipe_processor_storage_breaker_state";
/// The breaker's state changes, by the state it changed `to` (closed, half-open, open).
pub const STORAGE_BREAKER_TRANSITIONS: &str = "imgpipe_processor_storage_breaker_transitions_total";
/// Records refused (dead-lettered) for naming an object that is not their image's own: forged
/// or corrupt records; any is worth a look.
pub const FOREIGN_OBJECT_RECORDS: &str = "imgpipe_processor_foreign_object_records_total";
/// Records copied to the dead-letter topic, by error `class` (`schemas::headers::ErrorClass`):
/// retries ran out (`storage`, `event-log`), or the record cannot be handled at all
/// (`undecodable-record`, `foreign-object`, `handler-panicked`). Each waits for a redrive.
pub const RECORDS_DEAD_LETTERED: &str = "imgpipe_processor_records_dead_lettered_total";

/// Every metric above, for the check of the dashboards and alert rules (the consumer's health
/// metrics are `imgpipe_infra::consume::health::metric_names::ALL`).
pub const ALL: &[(&str, MetricKind)] = &[
    (IMAGES_PROCESSED, MetricKind::Counter),
    (IMAGES_FAILED, MetricKind::Counter),
    (STAGE_SECONDS, MetricKind::Histogram),
    (IMAGES_IN_FLIGHT, MetricKind::Gauge),
    (STORAGE_ERRORS, MetricKind::Counter),
    (STORAGE_BREAKER_STATE, MetricKind::Gauge),
    (STORAGE_BREAKER_TRANSITIONS, MetricKind::Counter),
    (FOREIGN_OBJECT_RECORDS, MetricKind::Counter),
    (RECORDS_DEAD_LETTERED, MetricKind::Counter),
];

/// A step of handling an image, timed under [`STAGE_SECONDS`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stage {
    Download,
    Render,
    Decode,
    Resize,
    Encode,
    Upload,
    Announce,
}

impl Stage {
    fn label(self) -> &'static str {
        match self {
            Stage::Download => "download",
            Stage::Render => "render",
            Stage::Decode => "decode",
            Stage::Resize => "resize",
            Stage::Encode => "encode",
            Stage::Upload => "upload",
            Stage::Announce => "announce",
        }
    }
}

#[derive(Clone)]
pub(crate) struct ProcessorMetrics {
    recorder: Arc<PrometheusRecorder>,
    processed: Counter,
    storage_errors: Counter,
    in_flight: Gauge,
    breaker_state: Gauge,
}

impl ProcessorMetrics {
    pub(crate) fn new() -> Self {
        // Up to 10 minutes: a large image on a busy machine, or a stage waiting out retries.
        const STAGE_BUCKETS: &[f64] = &[
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 600.0,
        ];
        let recorder = Arc::new(imgpipe_infra::metrics::recorder(&[(
            STAGE_SECONDS,
            STAGE_BUCKETS,
        )]));
        let (processed, storage_errors, in_flight, breaker_state) =
            metrics::with_local_recorder(&*recorder, || {
                (
                    metrics::counter!(IMAGES_PROCESSED),
                    metrics::counter!(STORAGE_ERRORS),
                    metrics::gauge!(IMAGES_IN_FLIGHT),
                    metrics::gauge!(STORAGE_BREAKER_STATE),
                )
            });
        breaker_state.set(BreakerState::Closed.as_gauge());
        Self {
            recorder,
            processed,
            storage_errors,
            in_flight,
            breaker_state,
        }
    }

    pub(crate) fn handle(&self) -> PrometheusHandle {
        self.recorder.handle()
    }

    pub(crate) fn image_processed(&self) {
        self.processed.increment(1);
    }

    pub(crate) fn storage_error(&self) {
        self.storage_errors.increment(1);
    }

    pub(crate) fn foreign_object(&self) {
        metrics::with_local_recorder(&*self.recorder, || {
            metrics::counter!(FOREIGN_OBJECT_RECORDS).increment(1);
        });
    }

    pub(crate) fn dead_lettered(&self, class: ErrorClass) {
        metrics::with_local_recorder(&*self.recorder, || {
            metrics::counter!(RECORDS_DEAD_LETTERED, "class" => class.as_str()).increment(1);
        });
    }

    pub(crate) fn image_failed(&self, reason_code: ReasonCode) {
        let reason = reason_code.as_str();
        metrics::with_local_recorder(&*self.recorder, || {
            metrics::counter!(IMAGES_FAILED, "reason" => reason).increment(1);
        });
    }

    pub(crate) fn stage(&self, stage: Stage, took: Duration) {
        metrics::with_local_recorder(&*self.recorder, || {
            metrics::histogram!(STAGE_SECONDS, "stage" => stage.label()).record(took.as_secs_f64());
        });
    }

    /// Counts an image in flight until the guard is dropped (also when its future is).
    pub(crate) fn in_flight(&self) -> InFlight {
        self.in_flight.increment(1.0);
        InFlight(self.in_flight.clone())
    }

    pub(crate) fn breaker_transition(&self, to: BreakerState) {
        self.breaker_state.set(to.as_gauge());
        metrics::with_local_recorder(&*self.recorder, || {
            metrics::counter!(STORAGE_BREAKER_TRANSITIONS, "to" => to.as_str()).increment(1);
        });
    }
}

impl ProcessorMetrics {
    /// The consumer's health (names in `imgpipe_infra::consume::health::metric_names`).
    pub(crate) fn consumer_health(&self, health: &HealthSnapshot) {
        metrics::with_local_recorder(&*self.recorder, || health.record(crate::GROUP));
    }
}

pub(crate) struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Times a stage from creation to [`StageTimer::done`].
pub(crate) struct StageTimer<'a> {
    metrics: &'a ProcessorMetrics,
    stage: Stage,
    started: Instant,
}

impl<'a> StageTimer<'a> {
    pub(crate) fn start(metrics: &'a ProcessorMetrics, stage: Stage) -> Self {
        Self {
            metrics,
            stage,
            started: Instant::now(),
        }
    }

    pub(crate) fn done(self) {
        self.metrics.stage(self.stage, self.started.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_what_was_recorded_under_the_documented_names() {
        let metrics = ProcessorMetrics::new();
        metrics.image_processed();
        metrics.image_failed(ReasonCode::Undecodable);
        metrics.stage(Stage::Render, Duration::from_millis(30));
        let guard = metrics.in_flight();
        metrics.breaker_transition(BreakerState::Open);
        let health = imgpipe_infra::consume::ConsumerHealth::new(Duration::from_secs(30));
        health.record_lag([(3, 7)]);
        metrics.consumer_health(&health.snapshot());
        metrics.foreign_object();
        metrics.dead_lettered(ErrorClass::UndecodableRecord);
        let text = metrics.handle().render();
        for expected in [
            "imgpipe_processor_images_processed_total 1",
            "imgpipe_processor_images_failed_total{reason=\"undecodable\"} 1",
            "imgpipe_processor_stage_duration_seconds_bucket{stage=\"render\",le=\"0.05\"} 1",
            "imgpipe_processor_images_in_flight 1",
            "imgpipe_processor_storage_breaker_state 2",
            "imgpipe_processor_storage_breaker_transitions_total{to=\"open\"} 1",
            "imgpipe_consumer_lag{group=\"imgpipe-processor\",partition=\"3\"} 7",
            "imgpipe_processor_foreign_object_records_total 1",
            "imgpipe_processor_records_dead_lettered_total{class=\"undecodable-record\"} 1",
        ] {
            assert!(text.contains(expected), "{expected} missing from:\n{text}");
        }
        let declared = [ALL, imgpipe_infra::consume::health::metric_names::ALL].concat();
        let undeclared = imgpipe_infra::metrics::undeclared(&text, &declared);
        assert!(undeclared.is_empty(), "not in ALL: {undeclared:?}");
        drop(guard);
        assert!(metrics
            .handle()
            .render()
            .contains("imgpipe_processor_images_in_flight 0"));
    }
}
