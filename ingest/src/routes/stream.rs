//! `GET /v1/images/{id}/stream`: the image's status as server-sent events, so a page (the
//! console) or an app watches an upload turn `ready` without polling the API itself.
//!
//! Each stream polls the read model (one primary-key lookup, the same as `GET
//! /v1/images/{id}`, so it starts with `uploaded` right after the 202) every 500 ms while the
//! image is in progress and every 2 s once it has a result, and sends a `status` event when the
//! image changed. Polling rather than Postgres LISTEN/NOTIFY: NOTIFY would go into the
//! projector's exactly-once batches and its rebuilds, needs a connection outside the pool per
//! instance (which transaction-pooling PgBouncer does not allow), and loses notices while it
//! reconnects, so the state would be re-read anyway. The cost is bounded: at most
//! `STREAMS_IN_ALL` streams per instance, each at most two lookups a second.
//!
//! A stream ends with an `end` event: after `LIFETIME` (reconnect to go on), when ingest shuts
//! down, or when the read model stopped answering.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::stream::{self, Stream};
use imgpipe_schemas::state::Status;
use serde::Serialize;
use tokio::time::Instant;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::extract::{Client, ImageIdPath};
use super::images::current;
use super::ownership::owned_image;
use super::view::ImageStatus;
use crate::db;
use crate::error::{ErrorBody, IngestError};
use crate::slots::Slot;
use crate::state::AppState;

/// How often a stream looks while the image is still in progress, and once it has a result.
const POLL_IN_PROGRESS: Duration = Duration::from_millis(500);
const POLL_SETTLED: Duration = Duration::from_secs(2);
/// How long one stream lasts; the client reconnects for more.
const LIFETIME: Duration = Duration::from_secs(600);
/// A comment line this often keeps proxies from closing a quiet stream.
const HEARTBEAT: Duration = Duration::from_secs(15);
/// Failed lookups in a row after which the stream ends with `database-unavailable`.
const MAX_FAILED_POLLS: u32 = 20;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(stream))
}

/// One event of an image's status stream, as the `event:` and `data:` lines carry it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "event", content = "data")]
// Built as SSE lines, not serialized whole: this is the document's schema only.
#[allow(dead_code, clippy::large_enum_variant)]
enum ImageStreamEvent {
    /// `event: status`: the image as `GET /v1/images/{id}` answers it, sent first and then
    /// whenever it changes.
    #[serde(rename = "status")]
    Status(ImageStatus),
    /// `event: end`: the last event of the stream.
    #[serde(rename = "end")]
    End(StreamEnd),
}

/// Why a stream ended.
#[derive(Debug, Serialize, ToSchema)]
struct StreamEnd {
    /// `lifetime` (reconnect to go on), `shutdown` (ingest is stopping; reconnect), or
    /// `database-unavailable` (the read model did not answer; retry later).
    #[schema(value_type = String)]
    reason: &'static str,
}

/// The image's status as server-sent events: `status` first and on every change, `end` last.
///
/// `text/event-stream`: each event is an `event: <name>` line and a `data: <JSON>` line. A
/// `status` event's data is the image as `GET /v1/images/{id}` answers it; `end`'s is
/// `{"reason": "lifetime" | "shutdown" | "database-unavailable"}`. A stream lasts at most 10
/// minutes; comment lines keep it alive every 15 s. At most 8 streams per client are open at
/// once (429 `too-many-streams` beyond).
#[utoipa::path(
    get,
    path = "/images/{id}/stream",
    tag = "images",
    operation_id = "stream_image",
    params(("id" = Uuid, Path, description = "The id the upload's 202 gave")),
    responses(
        (status = 200, description = "The status stream", content((ImageStreamEvent = "text/event-stream"))),
        (status = 400, description = "`invalid-image-id`", body = ErrorBody),
        (status = 401, description = "`missing-api-key`, `invalid-api-key`", body = ErrorBody),
        (status = 404, description = "`image-not-found` (also another client's image)", body = ErrorBody),
        (status = 429, description = "`too-many-streams`: the client has 8 open; `rate-limited`: over the client's reads per minute, or its address's requests per minute", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until a retry can pass"))),
        (status = 503, description = "`server-busy` (the instance has its most streams open), `database-unavailable`", body = ErrorBody),
    ),
)]
async fn stream(
    State(state): State<AppState>,
    Client(client): Client,
    ImageIdPath(id): ImageIdPath,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, IngestError> {
    let (image_id, _) = owned_image(&state, &client, id).await?;
    let slot = state.rate_limits.streams_open.take(&client)?;
    let watch = Watch {
        state,
        image_id,
        _slot: slot,
        started: Instant::now(),
        last: None,
        failed_polls: 0,
        first: true,
        ended: false,
    };
    Ok(Sse::new(stream::unfold(watch, Watch::next))
        .keep_alive(KeepAlive::new().interval(HEARTBEAT)))
}

/// One stream's state between events.
struct Watch {
    state: AppState,
    image_id: Uuid,
    /// Held for the stream's life: dropping the stream frees the client's place.
    _slot: Slot,
    started: Instant,
    /// What the last `status` event said changed: (status, updated_at, spec version).
    last: Option<(Status, time::OffsetDateTime, Option<i32>)>,
    failed_polls: u32,
    first: bool,
    ended: bool,
}

impl Watch {
    /// The next event: waits for a change, the end of the stream's life, or shutdown.
    async fn next(mut self) -> Option<(Result<SseEvent, Infallible>, Self)> {
        if self.ended {
            return None;
        }
        loop {
            if !self.first {
                let settled = self.last.is_some_and(|(status, _, _)| {
                    matches!(status, Status::Ready | Status::Failed | Status::Deleted)
                });
                let wait = if settled {
                    POLL_SETTLED
                } else {
                    POLL_IN_PROGRESS
                };
                tokio::select! {
                    () = self.state.stopping.cancelled() => return Some(self.end("shutdown")),
                    () = tokio::time::sleep(wait) => {}
                }
            }
            self.first = false;
            if self.started.elapsed() >= LIFETIME {
                return Some(self.end("lifetime"));
            }
            match db::image(&self.state.pool, self.image_id).await {
                Ok(Some(image)) => {
                    self.failed_polls = 0;
                    let key = (image.status, image.updated_at, image.spec_version);
                    if self.last == Some(key) {
                        continue;
                    }
                    match current(&self.state, self.image_id, image).await {
                        Ok(status) => {
                            self.last = Some(key);
                            let event = SseEvent::default()
                                .event("status")
                                .json_data(&status)
                                .unwrap_or_default();
                            return Some((Ok(event), self));
                        }
                        Err(error) => {
                            tracing::warn!(image_id = %self.image_id, error = %error, "status stream: reading the image failed")
                        }
                    }
                }
                // Pruned from ingest's record of uploads before the projector had it: look again.
                Ok(None) => {}
                Err(error) => {
                    self.failed_polls += 1;
                    tracing::warn!(image_id = %self.image_id, error = %error, "status stream: the read model did not answer");
                }
            }
            if self.failed_polls >= MAX_FAILED_POLLS {
                return Some(self.end("database-unavailable"));
            }
        }
    }

    fn end(mut self, reason: &'static str) -> (Result<SseEvent, Infallible>, Self) {
        self.ended = true;
        let event = SseEvent::default()
            .event("end")
            .json_data(StreamEnd { reason })
            .unwrap_or_default();
        (Ok(event), self)
    }
}
