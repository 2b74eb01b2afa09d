use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use imgpipe_infra::breaker::{BreakerError, BreakerState, CircuitBreaker};
use imgpipe_infra::consume::{EventHandler, HandlerError, RecordPosition};
use imgpipe_infra::kafka::EventProducer;
use imgpipe_infra::storage::ObjectStore;
use imgpipe_infra::InfraError;
use imgpipe_schemas::headers::ErrorClass;
use imgpipe_schemas::{
    Event, ImageDeleted, ImageFailed, ImageProcessed, ObjectsDeleted, Payload, Producer,
    ReasonCode, Variant,
};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::memory::MemoryBudget;
use crate::metrics::{ProcessorMetrics, Stage, StageTimer};
use crate::render::{self, Limits, RenderError, Rendered, VariantSpec};

pub(crate) struct VariantHandler {
    pub(crate) store: ObjectStore,
    /// Every object-store call goes through it, so an outage pauses consumption instead of
    /// spending attempts.
    pub(crate) store_breaker: CircuitBreaker,
    pub(crate) metrics: ProcessorMetrics,
    pub(crate) events: EventProducer,
    pub(crate) spec: Arc<VariantSpec>,
    pub(crate) limits: Limits,
    /// Bounds concurrent CPU work to the cores.
    pub(crate) cpu: Arc<Semaphore>,
    /// Bounds the memory concurrent renders hold, by their estimated peaks.
    pub(crate) memory: MemoryBudget,
}

/// Runs codec work on a blocking thread. A panic inside a codec on these bytes would recur on
/// every attempt, so it is the image's failure, not a retry.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, RenderError> + Send + 'static,
) -> Result<T, RenderError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(join_error) => Err(RenderError::DecoderCrashed(join_error)),
    }
}

/// Whether `key` lies under `prefix` without leaving it: no empty, `.` or `..` segment (a
/// file-backed store could resolve those to another image's directory) and no backslash.
fn is_under(key: &str, prefix: &str) -> bool {
    key.strip_prefix(prefix).is_some_and(|rest| {
        !rest.contains('\\')
            && rest
                .split('/')
                .all(|segment| !matches!(segment, "" | "." | ".."))
    })
}

pub(crate) fn producer() -> Producer {
    Producer {
        service: "imgpipe-processor".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    }
}

impl EventHandler for VariantHandler {
    async fn handle(&self, event: &Event, _position: &RecordPosition) -> Result<(), HandlerError> {
        match &event.payload {
            Payload::ImageUploaded(uploaded) => {
                let _in_flight = self.metrics.in_flight();
                self.check_original_key(event, &uploaded.original_key)?;
                self.process(event, &uploaded.original_key).await
            }
            // A replay: the same work as for the upload, with the spec this processor has now,
            // so the result carries the current spec version. The result's causation is the
            // request, which names the original (it may lie far back in the log).
            Payload::ReprocessRequested(request) => {
                let _in_flight = self.metrics.in_flight();
                self.check_original_key(event, &request.original_key)?;
                self.process(event, &request.original_key).await
            }
            Payload::ImageDeleted(deleted) => {
                self.check_deleted_keys(event, deleted)?;
                self.remove_objects(event, deleted).await
            }
            // Results, audits and webhook events are not the variant maker's to act on.
            _ => Ok(()),
        }
    }

    async fn until_available(&self) {
        self.store_breaker
            .wait_until_closed(|| self.store.ping())
            .await;
    }
}

impl VariantHandler {
    /// Makes an object-store call through the breaker. A missing object is the store's answer
    /// and passes through; a failure is transient while the breaker is closed, and unavailable
    /// (consumption pauses) once it opened, including when this very failure opened it.
    async fn storage<T>(
        &self,
        call: impl Future<Output = Result<T, InfraError>>,
    ) -> Result<Result<T, InfraError>, HandlerError> {
        match self
            .store_breaker
            .call(call, |error| !error.is_not_found())
            .await
        {
            Ok(value) => Ok(Ok(value)),
            Err(BreakerError::Failed(error)) if error.is_not_found() => Ok(Err(error)),
            Err(BreakerError::Failed(error)) => {
                self.metrics.storage_error();
                match self.store_breaker.state() {
                    BreakerState::Closed => {
                        Err(HandlerError::transient(ErrorClass::Storage, error))
                    }
                    BreakerState::Open | BreakerState::HalfOpen => {
                        Err(HandlerError::unavailable(ErrorClass::Storage, error))
                    }
                }
            }
            Err(BreakerError::Open) => Err(HandlerError::unavailable(
                ErrorClass::Storage,
                "circuit breaker open",
            )),
        }
    }

    /// Like [`VariantHandler::storage`], for calls where a missing object is a failure too.
    async fn storage_strict<T>(
        &self,
        call: impl Future<Output = Result<T, InfraError>>,
    ) -> Result<T, HandlerError> {
        self.storage(call)
            .await?
            .map_err(|error| HandlerError::transient(ErrorClass::Storage, error))
    }

    /// An upload or reprocess request may only name its own image's original: a forged record
    /// naming another image's must not make this image's variants from that image's pixels.
    fn check_original_key(&self, event: &Event, original_key: &str) -> Result<(), HandlerError> {
        let own = self.store.original_key(event.image_id);
        if original_key == own {
            return Ok(());
        }
        Err(self.foreign_object(event, original_key, &own))
    }

    /// A deletion may only name its own image's original and variants. One naming anything
    /// else is refused as a whole before anything is removed: it is forged or corrupt, and
    /// none of its keys can be trusted.
    fn check_deleted_keys(
        &self,
        event: &Event,
        deleted: &ImageDeleted,
    ) -> Result<(), HandlerError> {
        self.check_original_key(event, &deleted.original_key)?;
        let variants_prefix = self.store.variants_prefix(event.image_id);
        match deleted
            .variant_keys
            .iter()
            .find(|key| !is_under(key, &variants_prefix))
        {
            None => Ok(()),
            Some(foreign) => Err(self.foreign_object(event, foreign, &variants_prefix)),
        }
    }

    fn foreign_object(&self, event: &Event, key: &str, expected: &str) -> HandlerError {
        tracing::warn!(
            image_id = %event.image_id, event_type = %event.event_type(), key,
            "record names an object that is not its image's"
        );
        self.metrics.foreign_object();
        HandlerError::permanent(
            ErrorClass::ForeignObject,
            format!(
                "{} of image {} names {key:?}, which is not that image's own (expected {expected:?})",
                event.event_type(),
                event.image_id
            ),
        )
    }

    /// Makes the variants of the original at `original_key` and announces the result as a
    /// reaction to `event` (an upload or a reprocess request).
    async fn process(&self, event: &Event, original_key: &str) -> Result<(), HandlerError> {
        let download = StageTimer::start(&self.metrics, Stage::Download);
        let original = self.storage(self.store.get(original_key)).await?;
        download.done();
        let original = match original {
            Ok(bytes) => bytes,
            Err(error) => {
                return self
                    .fail(
                        event,
                        ReasonCode::OriginalMissing,
                        format!("{original_key}: {error}"),
                    )
                    .await;
            }
        };
        let render = StageTimer::start(&self.metrics, Stage::Render);
        let rendered = self.render(original).await?;
        render.done();
        match rendered {
            Ok(rendered) => {
                let timings = rendered.timings;
                self.metrics.stage(Stage::Decode, timings.decode);
                self.metrics.stage(Stage::Resize, timings.resize);
                self.metrics.stage(Stage::Encode, timings.encode);
                self.store_and_announce(event, rendered).await
            }
            Err(error) => {
                tracing::info!(
                    image_id = %event.image_id, reason = %error.reason_code(), error = %error,
                    "image cannot be processed"
                );
                self.fail(event, error.reason_code(), error.to_string())
                    .await
            }
        }
    }

    /// Removes the original, the variants the deletion named and any other object under the
    /// image's variant prefix, then announces what was removed and what was already gone.
    /// Idempotent: a redelivery finds everything gone and says so.
    async fn remove_objects(
        &self,
        event: &Event,
        deleted: &ImageDeleted,
    ) -> Result<(), HandlerError> {
        let mut keys = vec![deleted.original_key.clone()];
        keys.extend(deleted.variant_keys.iter().cloned());
        keys.extend(
            self.storage_strict(self.store.list(&self.store.variants_prefix(event.image_id)))
                .await?,
        );
        keys.sort();
        keys.dedup();
        let (mut removed, mut missing) = (Vec::new(), Vec::new());
        for key in keys {
            if self.storage_strict(self.store.exists(&key)).await? {
                self.storage_strict(self.store.delete(&key)).await?;
                removed.push(key);
            } else {
                missing.push(key);
            }
        }
        self.announce(
            event,
            ObjectsDeleted {
                keys: removed,
                missing_keys: missing,
            },
        )
        .await
    }

    /// Renders on a blocking thread once the render's estimated peak memory is free in the
    /// budget and a CPU slot is; the header is read first (without a slot) to know how much.
    async fn render(&self, original: Bytes) -> Result<Result<Rendered, RenderError>, HandlerError> {
        let probe = {
            let (original, spec, limits) = (original.clone(), Arc::clone(&self.spec), self.limits);
            blocking(move || render::probe(&original, &spec, limits)).await
        };
        let probe = match probe {
            Ok(probe) => probe,
            Err(error) => return Ok(Err(error)),
        };
        let _memory = self
            .memory
            .reserve(probe.peak_bytes)
            .await
            .map_err(|e| HandlerError::transient(ErrorClass::Shutdown, e))?;
        let _cpu = self
            .cpu
            .acquire()
            .await
            .map_err(|e| HandlerError::transient(ErrorClass::Shutdown, e))?;
        let spec = Arc::clone(&self.spec);
        let limits = self.limits;
        Ok(blocking(move || render::render(original, &spec, limits)).await)
    }

    async fn store_and_announce(
        &self,
        event: &Event,
        rendered: Rendered,
    ) -> Result<(), HandlerError> {
        let mut variants = Vec::with_capacity(rendered.variants.len());
        let upload = StageTimer::start(&self.metrics, Stage::Upload);
        for variant in rendered.variants {
            let key =
                self.store
                    .variant_key(event.image_id, self.spec.version, &variant.name, "webp");
            let sha256 = hex::encode(Sha256::digest(&variant.webp));
            let bytes = variant.webp.len() as i64;
            self.storage_strict(
                self.store
                    .put(&key, Bytes::from(variant.webp), "image/webp"),
            )
            .await?;
            variants.push(Variant {
                name: variant.name,
                key,
                format: "webp".into(),
                width: variant.width as i32,
                height: variant.height as i32,
                bytes,
                sha256,
            });
        }
        upload.done();
        let processed = ImageProcessed {
            spec_version: self.spec.version,
            original_width: rendered.width as i32,
            original_height: rendered.height as i32,
            variants,
            dominant_color: rendered.dominant_color,
            blurhash: Some(rendered.blurhash),
            animated: rendered.animated,
        };
        self.announce(event, processed).await?;
        self.metrics.image_processed();
        Ok(())
    }

    async fn fail(
        &self,
        event: &Event,
        reason_code: ReasonCode,
        message: String,
    ) -> Result<(), HandlerError> {
        let failed = ImageFailed {
            reason_code: reason_code.as_str().into(),
            message,
        };
        self.announce(event, failed).await?;
        self.metrics.image_failed(reason_code);
        Ok(())
    }

    async fn announce(
        &self,
        cause: &Event,
        payload: impl Into<Payload>,
    ) -> Result<(), HandlerError> {
        let result = Event::new(
            cause.image_id,
            cause.correlation_id.clone(),
            Some(cause.event_id),
            producer(),
            payload,
        );
        let announce = StageTimer::start(&self.metrics, Stage::Announce);
        self.events
            .publish(&result)
            .await
            .map_err(|e| HandlerError::transient(ErrorClass::EventLog, e))?;
        announce.done();
        tracing::info!(
            image_id = %result.image_id, event_type = %result.event_type(),
            correlation_id = %result.correlation_id, "result published"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::is_under;

    #[test]
    fn a_key_is_under_a_prefix_only_without_climbing_out_of_it() {
        let prefix = "ns/variants/0190a1b2-0000-7000-8000-000000000001/";
        assert!(is_under(&format!("{prefix}v1/thumb.webp"), prefix));
        for foreign in [
            "ns/variants/0190a1b2-0000-7000-8000-000000000002/v1/thumb.webp".to_string(),
            "ns/originals/0190a1b2-0000-7000-8000-000000000001".to_string(),
            format!("{prefix}../0190a1b2-0000-7000-8000-000000000002/v1/thumb.webp"),
            format!("{prefix}v1/./thumb.webp"),
            format!("{prefix}v1//thumb.webp"),
            format!("{prefix}v1\\..\\thumb.webp"),
            prefix.to_string(),
        ] {
            assert!(!is_under(&foreign, prefix), "{foreign}");
        }
    }
}
