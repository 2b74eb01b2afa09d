//! The consume side: each image event that makes a message (`ImageProcessed`, `ImageFailed`,
//! `ImageDeleted`) becomes one scheduled delivery per subscribed endpoint of the image's owner,
//! and each `WebhookRedeliveryRequested` schedules the messages it names again. Scheduling is a
//! Postgres write, so the record's offset is stored only once its deliveries are durable; the
//! deliveries themselves happen in `deliver.rs`, never in the consume loop, so an endpoint that
//! is down holds up neither the partition nor other endpoints.

use imgpipe_infra::consume::{EventHandler, HandlerError, RecordPosition};
use imgpipe_schemas::headers::ErrorClass;
use imgpipe_schemas::{Event, Payload, WebhookRedeliveryRequested};
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::message::Message;
use crate::schedule;

pub(crate) struct ScheduleHandler {
    pub(crate) pool: PgPool,
}

/// The most messages one redelivery request schedules (the earliest first): the request is
/// handled inside the consume loop, so its work is bounded; a larger backlog takes another
/// request with a later `since`.
const MAX_REDELIVERY: i64 = 10_000;

/// A database error as the consume loop should take it: Postgres unreachable is an outage to
/// wait out (the consumer pauses, nothing is dead-lettered however long it lasts); anything
/// else is retried a few times, then dead-lettered.
fn database(error: sqlx::Error) -> HandlerError {
    let unreachable = matches!(
        error,
        sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
    );
    if unreachable {
        HandlerError::Unavailable {
            class: ErrorClass::Database,
            source: Box::new(error),
        }
    } else {
        HandlerError::Transient {
            class: ErrorClass::Database,
            source: Box::new(error),
        }
    }
}

impl EventHandler for ScheduleHandler {
    async fn handle(&self, event: &Event, _position: &RecordPosition) -> Result<(), HandlerError> {
        if let Payload::WebhookRedeliveryRequested(request) = &event.payload {
            return self.redeliver(event, request).await;
        }
        let Some(message) = Message::from_event(event) else {
            return Ok(());
        };
        let owner = schedule::owner_of(&self.pool, event.image_id)
            .await
            .map_err(database)?
            .ok_or_else(|| HandlerError::Transient {
                class: ErrorClass::OwnerUnknown,
                source: format!("no owner known for image {}", event.image_id).into(),
            })?;
        let endpoints =
            schedule::subscribed(&self.pool, &owner, &message.message_type, event.occurred_at)
                .await
                .map_err(database)?;
        if endpoints.is_empty() {
            return Ok(());
        }
        schedule::add(
            &self.pool,
            &endpoints,
            event.event_id,
            &event.correlation_id,
            &message,
        )
        .await
        .map_err(database)?;
        tracing::debug!(
            image_id = %event.image_id,
            message_type = %message.message_type,
            endpoints = endpoints.len(),
            "deliveries scheduled"
        );
        Ok(())
    }
}

impl ScheduleHandler {
    /// Schedules again each message the request names that the endpoint had, with its body as
    /// the timeline stored the event. A request for an endpoint that is gone, or for messages it
    /// never had, schedules nothing.
    async fn redeliver(
        &self,
        event: &Event,
        request: &WebhookRedeliveryRequested,
    ) -> Result<(), HandlerError> {
        let Ok(endpoint_id) = Uuid::parse_str(&request.endpoint_id) else {
            tracing::warn!(endpoint_id = %request.endpoint_id, "redelivery for a malformed endpoint id");
            return Ok(());
        };
        let message_id = match &request.message_id {
            None => None,
            Some(text) => match Uuid::parse_str(text) {
                Ok(id) => Some(id),
                Err(_) => return Ok(()),
            },
        };
        let since = request.since_micros.and_then(|micros| {
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000).ok()
        });
        let active = schedule::endpoint(&self.pool, endpoint_id)
            .await
            .map_err(database)?
            .is_some_and(|endpoint| endpoint.active());
        if !active {
            return Ok(());
        }
        let message_ids =
            schedule::past_messages(&self.pool, endpoint_id, message_id, since, MAX_REDELIVERY)
                .await
                .map_err(database)?;
        let stored = schedule::stored_events(&self.pool, &message_ids)
            .await
            .map_err(database)?;
        let messages: Vec<schedule::Redelivery> = stored
            .into_iter()
            .filter_map(
                |(message_id, image_id, occurred_at, correlation_id, payload)| {
                    Some(schedule::Redelivery {
                        message_id,
                        correlation_id,
                        message: Message::from_payload(image_id, occurred_at, &payload)?,
                    })
                },
            )
            .collect();
        let scheduled = messages.len();
        if scheduled > 0 {
            schedule::redeliver(&self.pool, endpoint_id, event.event_id, &messages)
                .await
                .map_err(database)?;
        }
        tracing::info!(
            %endpoint_id,
            requested_by = %request.requested_by,
            request_id = %event.event_id,
            scheduled,
            "redelivery scheduled"
        );
        Ok(())
    }
}
