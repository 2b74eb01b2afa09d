//! `imgpipe replay webhooks`: deliver an endpoint's messages again.
//!
//! Like a reprocess, a redelivery is an event, not a seek: the command appends one
//! `WebhookRedeliveryRequested` (keyed by the endpoint's id) naming the endpoint and either one
//! message or every message since a time; the delivering service schedules each such message
//! the endpoint had an attempt for again, from attempt 1, with the same `webhook-id`. The log
//! records who asked, and `GET /v1/webhooks/{id}/deliveries` shows the new attempts marked as
//! redeliveries. The same request as `POST /v1/webhooks/{id}/redeliver`.

use imgpipe_infra::kafka::EventProducer;
use imgpipe_infra::registry::{EventCodec, RegistryConfig};
use imgpipe_infra::KafkaConfig;
use imgpipe_schemas::{Event, Producer, WebhookRedeliveryRequested};
use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::AdminError;

/// What to deliver again.
#[derive(Debug, Clone)]
pub enum Redelivery {
    /// One message, by its `webhook-id`.
    Message(Uuid),
    /// Every message first attempted at or after this time.
    Since(OffsetDateTime),
}

/// Appends the request; answers the appended event.
pub async fn request(
    config: &KafkaConfig,
    registry: &RegistryConfig,
    endpoint_id: Uuid,
    what: &Redelivery,
    requested_by: &str,
) -> Result<Event, AdminError> {
    let topic = config.topics().events;
    let events = EventProducer::new(
        config,
        "imgpipe-replay",
        EventCodec::connect(registry, &topic).await?,
    )?;
    let (message_id, since_micros) = match what {
        Redelivery::Message(id) => (Some(id.to_string()), None),
        Redelivery::Since(at) => (None, Some((at.unix_timestamp_nanos() / 1_000) as i64)),
    };
    let event = Event::new(
        endpoint_id,
        format!("replay-webhooks-{}", Uuid::now_v7()),
        None,
        Producer {
            service: "imgpipe-admin".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        },
        WebhookRedeliveryRequested {
            endpoint_id: endpoint_id.to_string(),
            requested_by: requested_by.to_string(),
            message_id,
            since_micros,
        },
    );
    events.publish(&event).await?;
    Ok(event)
}

/// `main.rs`'s entry: the request from the environment's settings, and one line (or JSON) on
/// stdout saying what was appended.
pub async fn run(
    endpoint_id: Uuid,
    what: Redelivery,
    requested_by: String,
    json: bool,
) -> Result<(), AdminError> {
    use imgpipe_infra::FromEnv;
    let config = KafkaConfig::from_env()?;
    let event = request(
        &config,
        &RegistryConfig::from_env()?,
        endpoint_id,
        &what,
        &requested_by,
    )
    .await?;
    let scope = match &what {
        Redelivery::Message(id) => format!("message {id}"),
        Redelivery::Since(at) => format!("every message since {at}"),
    };
    if json {
        println!(
            "{}",
            json!({"request_id": event.event_id, "endpoint_id": endpoint_id, "scope": scope})
        );
    } else {
        println!(
            "redelivery of {scope} to endpoint {endpoint_id} requested (event {}); \
             GET /v1/webhooks/{endpoint_id}/deliveries shows the attempts",
            event.event_id
        );
    }
    Ok(())
}
