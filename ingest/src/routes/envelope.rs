//! The envelope of the events ingest appends: ingest as their producer, the request's id as
//! their correlation id.

use axum::http::HeaderMap;
use imgpipe_schemas::{Event, Payload, Producer};
use uuid::Uuid;

use super::request_id;

/// A new event about `image_id`, appended for the request with these headers.
pub(super) fn event(headers: &HeaderMap, image_id: Uuid, payload: impl Into<Payload>) -> Event {
    Event::new(
        image_id,
        correlation_id(headers, image_id),
        None,
        producer(),
        payload,
    )
}

fn producer() -> Producer {
    Producer {
        service: "imgpipe-ingest".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// The request id (the client's `X-Request-Id` or the one generated for it).
fn correlation_id(headers: &HeaderMap, fallback: Uuid) -> String {
    request_id::of(headers).map_or_else(|| fallback.to_string(), str::to_string)
}
