use std::sync::Arc;

use bytes::Bytes;
use imgpipe_infra::consume::{EventHandler, HandlerError, RecordPosition};
use imgpipe_infra::kafka::EventProducer;
use imgpipe_infra::storage::ObjectStore;
use imgpipe_schemas::{
    Event, ImageDeleted, ImageFailed, ImageProcessed, ImageUploaded, ObjectsDeleted, Payload,
    Producer, Variant,
};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::render::{self, Limits, RenderError, Rendered, VariantSpec};

pub(crate) struct VariantHandler {
    pub(crate) store: ObjectStore,
    pub(crate) events: EventProducer,
    pub(crate) spec: Arc<VariantSpec>,
    pub(crate) limits: Limits,
    /// Bounds concurrent CPU work to the cores.
    pub(crate) cpu: Arc<Semaphore>,
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
            Payload::ImageUploaded(uploaded) => self.process(event, uploaded).await,
            Payload::ImageDeleted(deleted) => self.remove_objects(event, deleted).await,
            // Results, audits and deletions are not the variant maker's to act on (yet).
            _ => Ok(()),
        }
    }
}

impl VariantHandler {
    async fn process(&self, event: &Event, uploaded: &ImageUploaded) -> Result<(), HandlerError> {
        let original = match self.store.get(&uploaded.original_key).await {
            Ok(bytes) => bytes,
            Err(error) if error.is_not_found() => {
                return self
                    .fail(
                        event,
                        "original-missing",
                        format!("{}: {error}", uploaded.original_key),
                    )
                    .await;
            }
            Err(error) => return Err(HandlerError::transient("storage", error)),
        };
        match self.render(original).await? {
            Ok(rendered) => self.store_and_announce(event, rendered).await,
            Err(error) => {
                tracing::info!(
                    image_id = %event.image_id, reason = error.reason_code(), error = %error,
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
        let storage = |e| HandlerError::transient("storage", e);
        let mut keys = vec![deleted.original_key.clone()];
        keys.extend(deleted.variant_keys.iter().cloned());
        keys.extend(
            self.store
                .list(&self.store.variants_prefix(event.image_id))
                .await
                .map_err(storage)?,
        );
        keys.sort();
        keys.dedup();
        let (mut removed, mut missing) = (Vec::new(), Vec::new());
        for key in keys {
            if self.store.exists(&key).await.map_err(storage)? {
                self.store.delete(&key).await.map_err(storage)?;
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

    async fn render(&self, original: Bytes) -> Result<Result<Rendered, RenderError>, HandlerError> {
        let _permit = self
            .cpu
            .acquire()
            .await
            .map_err(|e| HandlerError::transient("shutdown", e))?;
        let spec = Arc::clone(&self.spec);
        let limits = self.limits;
        match tokio::task::spawn_blocking(move || render::render(&original, &spec, limits)).await {
            Ok(result) => Ok(result),
            // A panic inside a codec on these bytes would recur on every attempt.
            Err(join_error) => Ok(Err(RenderError::Undecodable(format!(
                "decoder crashed: {join_error}"
            )))),
        }
    }

    async fn store_and_announce(
        &self,
        event: &Event,
        rendered: Rendered,
    ) -> Result<(), HandlerError> {
        let mut variants = Vec::with_capacity(rendered.variants.len());
        for variant in rendered.variants {
            let key =
                self.store
                    .variant_key(event.image_id, self.spec.version, &variant.name, "webp");
            let sha256 = hex::encode(Sha256::digest(&variant.webp));
            let bytes = variant.webp.len() as i64;
            self.store
                .put(&key, Bytes::from(variant.webp), "image/webp")
                .await
                .map_err(|e| HandlerError::transient("storage", e))?;
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
        let processed = ImageProcessed {
            spec_version: self.spec.version,
            original_width: rendered.width as i32,
            original_height: rendered.height as i32,
            variants,
            dominant_color: rendered.dominant_color,
            blurhash: Some(rendered.blurhash),
        };
        self.announce(event, processed).await
    }

    async fn fail(
        &self,
        event: &Event,
        reason_code: &str,
        message: String,
    ) -> Result<(), HandlerError> {
        let failed = ImageFailed {
            reason_code: reason_code.into(),
            message,
        };
        self.announce(event, failed).await
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
        self.events
            .publish(&result)
            .await
            .map_err(|e| HandlerError::transient("event-log", e))?;
        tracing::info!(
            image_id = %result.image_id, event_type = %result.event_type(),
            correlation_id = %result.correlation_id, "result published"
        );
        Ok(())
    }
}
