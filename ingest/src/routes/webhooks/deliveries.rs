//! An endpoint's deliveries: the attempts the delivering service recorded, and redelivering.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use imgpipe_schemas::WebhookRedeliveryRequested;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::super::as_of;
use super::super::envelope;
use super::super::extract::{ApiJson, ApiQuery, Client, WebhookIdPath};
use super::super::page::{Cursor, PageSize};
use super::{append_and_apply, micros, owned_endpoint, Webhooks};
use crate::db::webhooks::{self as db, AttemptRow};
use crate::error::{database_unavailable, ErrorBody, IngestError};
use crate::state::AppState;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(deliveries))
        .routes(routes!(redeliver))
}

const ATTEMPTS_PAGE: PageSize = PageSize {
    default: 50,
    max: 200,
};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct DeliveriesQuery {
    /// Attempts per page, 1 to 200; default 50.
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// The previous page's `next_cursor`.
    #[param(value_type = Option<Cursor>, inline)]
    cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
struct Deliveries {
    /// Attempts, newest first.
    items: Vec<Delivery>,
    /// Pass as `cursor` for the next page; absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// One attempt to deliver one message.
#[derive(Debug, Serialize, ToSchema)]
struct Delivery {
    attempt_id: Uuid,
    /// The `webhook-id` the receiver saw: the id of the event the message is about, the same
    /// on every attempt and redelivery.
    message_id: Uuid,
    /// `image.ready`, `image.failed` or `image.deleted`.
    message_type: String,
    image_id: Uuid,
    /// 1 for the first attempt of a delivery or of a redelivery.
    attempt: i32,
    redelivery: bool,
    /// Where it was sent.
    url: String,
    /// The receiver's status; null when no answer came.
    status_code: Option<i32>,
    duration_ms: i64,
    /// Why it failed (`timeout`, `connect`, `address-refused`, `tls`, `redirect`, `status`,
    /// `request`); null when delivered.
    error_class: Option<String>,
    /// When the next attempt is due; null when delivered or given up.
    #[serde(with = "time::serde::rfc3339::option")]
    next_attempt_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    attempted_at: OffsetDateTime,
}

impl From<AttemptRow> for Delivery {
    fn from(row: AttemptRow) -> Self {
        Self {
            attempt_id: row.event_id,
            message_id: row.message_id,
            message_type: row.message_type,
            image_id: row.image_id,
            attempt: row.attempt,
            redelivery: row.redelivery,
            url: row.url,
            status_code: row.status_code,
            duration_ms: row.duration_ms,
            error_class: row.error_class,
            next_attempt_at: row.next_attempt_at,
            attempted_at: row.attempted_at,
        }
    }
}

/// The endpoint's delivery attempts, newest first, keyset paginated with an opaque cursor.
#[utoipa::path(
    get,
    path = "/webhooks/{id}/deliveries",
    tag = "webhooks",
    operation_id = "list_webhook_deliveries",
    params(("id" = Uuid, Path, description = "The id the registration gave"), DeliveriesQuery),
    responses(
        (status = 200, description = "One page of attempts", body = Deliveries),
        (status = 400, description = "`invalid-webhook-id`, `invalid-query` (limit or cursor)", body = ErrorBody),
        (status = 401, description = "`missing-api-key`, `invalid-api-key`", body = ErrorBody),
        (status = 404, description = "`webhook-not-found` (also another client's, or a deleted one)", body = ErrorBody),
        (status = 429, description = "`rate-limited`: over the client's reads per minute, or its address's requests per minute", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until a retry can pass"))),
        (status = 503, description = "`webhooks-disabled`, `database-unavailable`", body = ErrorBody),
    ),
)]
async fn deliveries(
    State(state): State<AppState>,
    Client(client): Client,
    _: Webhooks,
    WebhookIdPath(id): WebhookIdPath,
    ApiQuery(query): ApiQuery<DeliveriesQuery>,
) -> Result<Json<Deliveries>, IngestError> {
    let page = ATTEMPTS_PAGE.request(query.limit, query.cursor.as_deref())?;
    owned_endpoint(&state, &client, id).await?;
    let rows = db::attempts(&state.pool, id, page.after(), page.fetch())
        .await
        .map_err(database_unavailable)?;
    let (rows, next_cursor) = page.page(rows, |row| Cursor {
        at: row.attempted_at,
        id: row.event_id,
    });
    Ok(Json(Deliveries {
        items: rows.into_iter().map(Delivery::from).collect(),
        next_cursor,
    }))
}

/// What to deliver again: exactly one of the two.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RedeliveryRequest {
    /// One message (a delivery's `message_id`) the endpoint had an attempt of.
    #[schema(value_type = Option<Uuid>)]
    message_id: Option<String>,
    /// Every message for the endpoint since this time (RFC 3339).
    #[schema(value_type = Option<String>, format = DateTime)]
    since: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
struct RedeliveryAccepted {
    endpoint_id: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_id: Option<Uuid>,
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    since: Option<OffsetDateTime>,
}

/// What a redelivery request asks for.
enum Redelivery {
    Message(Uuid),
    Since(OffsetDateTime),
}

impl RedeliveryRequest {
    fn read(self) -> Result<Redelivery, IngestError> {
        match (self.message_id, self.since) {
            (Some(message_id), None) => Uuid::parse_str(&message_id)
                .map(Redelivery::Message)
                .map_err(|_| {
                    IngestError::InvalidRedelivery(format!("{message_id:?} is not a uuid"))
                }),
            (None, Some(since)) => as_of::parse(&since).map(Redelivery::Since).map_err(|_| {
                IngestError::InvalidRedelivery(format!("{since:?} is not an RFC 3339 time"))
            }),
            (Some(_), Some(_)) => Err(IngestError::InvalidRedelivery("both are given".into())),
            (None, None) => Err(IngestError::InvalidRedelivery("neither is given".into())),
        }
    }
}

/// Delivers one message, or every message since a time, to the endpoint again (with the same
/// `webhook-id` as before).
///
/// Appends `WebhookRedeliveryRequested`, which the delivering service acts on; the attempts
/// appear among the deliveries, marked `redelivery`.
#[utoipa::path(
    post,
    path = "/webhooks/{id}/redeliver",
    tag = "webhooks",
    operation_id = "redeliver_webhook",
    params(("id" = Uuid, Path, description = "The id the registration gave")),
    request_body = RedeliveryRequest,
    responses(
        (status = 202, description = "Redelivery requested", body = RedeliveryAccepted),
        (status = 400, description = "`invalid-webhook-id`, `invalid-json`, `invalid-redelivery`", body = ErrorBody),
        (status = 401, description = "`missing-api-key`, `invalid-api-key`", body = ErrorBody),
        (status = 403, description = "`insufficient-scope`: a read-only key", body = ErrorBody),
        (status = 404, description = "`webhook-not-found` (also another client's, or a deleted one); `webhook-message-not-found`: the endpoint had no attempt of that message", body = ErrorBody),
        (status = 409, description = "`webhook-disabled`: enable the endpoint first", body = ErrorBody),
        (status = 413, description = "`payload-too-large`", body = ErrorBody),
        (status = 429, description = "`rate-limited`: over the address's requests per minute", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until a retry can pass"))),
        (status = 503, description = "`webhooks-disabled`, `database-unavailable`, `event-log-unavailable`", body = ErrorBody),
    ),
)]
async fn redeliver(
    State(state): State<AppState>,
    Client(client): Client,
    _: Webhooks,
    headers: HeaderMap,
    WebhookIdPath(id): WebhookIdPath,
    ApiJson(request): ApiJson<RedeliveryRequest>,
) -> Result<(StatusCode, Json<RedeliveryAccepted>), IngestError> {
    let redelivery = request.read()?;
    let endpoint = owned_endpoint(&state, &client, id).await?;
    if !endpoint.enabled {
        // The deliverer sends nothing to a disabled endpoint: say so rather than accept.
        return Err(IngestError::WebhookDisabled);
    }
    let (message_id, since) = match redelivery {
        Redelivery::Message(message_id) => {
            let delivered = db::has_attempt(&state.pool, id, message_id)
                .await
                .map_err(database_unavailable)?;
            if !delivered {
                return Err(IngestError::WebhookMessageNotFound);
            }
            (Some(message_id), None)
        }
        Redelivery::Since(since) => (None, Some(since)),
    };
    let event = envelope::event(
        &headers,
        id,
        WebhookRedeliveryRequested {
            endpoint_id: id.to_string(),
            requested_by: client.to_string(),
            message_id: message_id.map(|id| id.to_string()),
            since_micros: since.map(micros),
        },
    );
    append_and_apply(&state, None, &event).await?;
    tracing::info!(endpoint_id = %id, client = %client, "webhook redelivery requested");
    Ok((
        StatusCode::ACCEPTED,
        Json(RedeliveryAccepted {
            endpoint_id: id,
            message_id,
            since,
        }),
    ))
}
