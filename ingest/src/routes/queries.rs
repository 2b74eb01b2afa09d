//! Read-only queries over a client's images: the listing, one image's timeline, and stats.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use imgpipe_schemas::state::Status;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{IntoParams, PartialSchema, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::extract::{ApiQuery, Client, ImageIdPath};
use super::ownership::owned_image;
use super::page::{Cursor, PageSize};
use crate::db::{self, ListedImageRow, TimelineRow};
use crate::error::{database_unavailable, ErrorBody, IngestError};
use crate::state::AppState;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(timeline))
        .routes(routes!(stats))
}

#[derive(Debug, Serialize, ToSchema)]
struct Timeline {
    id: Uuid,
    events: Vec<TimelineEvent>,
    /// Pass as `cursor` for the next page; absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

// The document calls it `TimelineRow`, the name it had when the database row was served as is.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = TimelineRow)]
struct TimelineEvent {
    event_id: Uuid,
    /// `ImageUploaded`, `ImageProcessed`, `ImageFailed`, `ImageDeleted`, ...
    event_type: String,
    topic: String,
    partition: i32,
    offset: i64,
    #[serde(with = "time::serde::rfc3339")]
    occurred_at: OffsetDateTime,
    correlation_id: String,
    causation_id: Option<Uuid>,
}

impl From<TimelineRow> for TimelineEvent {
    fn from(row: TimelineRow) -> Self {
        Self {
            event_id: row.event_id,
            event_type: row.event_type,
            topic: row.topic,
            partition: row.partition,
            offset: row.offset,
            occurred_at: row.occurred_at,
            correlation_id: row.correlation_id,
            causation_id: row.causation_id,
        }
    }
}

const EVENTS_PAGE: PageSize = PageSize {
    default: 100,
    max: 500,
};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct TimelineQuery {
    /// Events per page, 1 to 500; default 100.
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// The previous page's `next_cursor`.
    #[param(value_type = Option<Cursor>, inline)]
    cursor: Option<String>,
}

/// The image's timeline: its events, oldest first, with where each sits in the log; keyset
/// paginated with an opaque cursor, like the listing.
#[utoipa::path(
    get,
    path = "/images/{id}/events",
    tag = "images",
    operation_id = "get_image_events",
    params(("id" = Uuid, Path, description = "The id the upload's 202 gave"), TimelineQuery),
    responses(
        (status = 200, description = "One page of the timeline", body = Timeline),
        (status = 400, description = "`invalid-image-id`, `invalid-query` (limit or cursor)", body = ErrorBody),
        (status = 401, description = "`missing-api-key`, `invalid-api-key`", body = ErrorBody),
        (status = 429, description = "`rate-limited`: over the client's reads per minute, or its address's requests per minute", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until a retry can pass"))),
        (status = 404, description = "`image-not-found` (also another client's image)", body = ErrorBody),
        (status = 503, description = "`database-unavailable`", body = ErrorBody),
    ),
)]
async fn timeline(
    State(state): State<AppState>,
    Client(client): Client,
    ImageIdPath(id): ImageIdPath,
    ApiQuery(query): ApiQuery<TimelineQuery>,
) -> Result<Json<Timeline>, IngestError> {
    let page = EVENTS_PAGE.request(query.limit, query.cursor.as_deref())?;
    let (image_id, _) = owned_image(&state, &client, id).await?;
    let rows = db::timeline(&state.pool, image_id, page.after(), page.fetch())
        .await
        .map_err(database_unavailable)?;
    let (rows, next_cursor) = page.page(rows, |row| Cursor {
        at: row.occurred_at,
        id: row.event_id,
    });
    Ok(Json(Timeline {
        id: image_id,
        events: rows.into_iter().map(TimelineEvent::from).collect(),
        next_cursor,
    }))
}

pub(super) const IMAGES_PAGE: PageSize = PageSize {
    default: 50,
    max: 200,
};

/// [`Status`] as the document states it: one of its names.
struct StatusName;

impl PartialSchema for StatusName {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .description(Some("An image's status, as the listing filters on it."))
            .schema_type(Type::String)
            .enum_values(Some(Status::ALL.map(Status::as_str)))
            .into()
    }
}

impl ToSchema for StatusName {}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only images in this status.
    #[param(value_type = Option<StatusName>, inline)]
    status: Option<Status>,
    /// Images per page, 1 to 200; default 50.
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// The previous page's `next_cursor`.
    #[param(value_type = Option<Cursor>, inline)]
    cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
struct Page {
    images: Vec<ListedImage>,
    /// Pass as `cursor` for the next page; absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
struct ListedImage {
    id: Uuid,
    #[schema(value_type = String)]
    status: Status,
    format: String,
    width: i32,
    height: i32,
    bytes: i64,
    /// A gallery's placeholder before the thumbnail loads; null until processed.
    dominant_color: Option<String>,
    blurhash: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    uploaded_at: OffsetDateTime,
}

impl From<ListedImageRow> for ListedImage {
    fn from(row: ListedImageRow) -> Self {
        Self {
            id: row.image_id,
            status: row.status,
            format: row.format,
            width: row.width,
            height: row.height,
            bytes: row.bytes,
            dominant_color: row.dominant_color,
            blurhash: row.blurhash,
            uploaded_at: row.uploaded_at,
        }
    }
}

/// The client's images, newest first, keyset paginated with an opaque cursor.
#[utoipa::path(
    get,
    path = "/images",
    tag = "images",
    operation_id = "list_images",
    params(ListQuery),
    responses(
        (status = 200, description = "One page", body = Page),
        (status = 400, description = "`invalid-query`", body = ErrorBody),
        (status = 401, description = "`missing-api-key`, `invalid-api-key`", body = ErrorBody),
        (status = 429, description = "`rate-limited`: over the client's reads per minute, or its address's requests per minute", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until a retry can pass"))),
        (status = 503, description = "`database-unavailable`", body = ErrorBody),
    ),
)]
async fn list(
    State(state): State<AppState>,
    Client(client): Client,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Page>, IngestError> {
    let page = IMAGES_PAGE.request(query.limit, query.cursor.as_deref())?;
    let rows = db::list(
        &state.pool,
        &client,
        query.status,
        page.after(),
        page.fetch(),
    )
    .await
    .map_err(database_unavailable)?;
    let (rows, next_cursor) = page.page(rows, |row| Cursor {
        at: row.uploaded_at,
        id: row.image_id,
    });
    Ok(Json(Page {
        images: rows.into_iter().map(ListedImage::from).collect(),
        next_cursor,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
struct Stats {
    /// Images per status (every status present, zero when none).
    counts: BTreeMap<&'static str, i64>,
    /// Seconds from upload to result; absent until an image has a result.
    #[serde(skip_serializing_if = "Option::is_none")]
    processing_seconds: Option<Percentiles>,
}

#[derive(Debug, Serialize, ToSchema)]
struct Percentiles {
    p50: f64,
    p95: f64,
    p99: f64,
}

/// The client's images by status, and upload-to-result percentiles.
#[utoipa::path(
    get,
    path = "/stats",
    tag = "images",
    operation_id = "get_stats",
    responses(
        (status = 200, description = "The client's stats", body = Stats),
        (status = 401, description = "`missing-api-key`, `invalid-api-key`", body = ErrorBody),
        (status = 429, description = "`rate-limited`: over the client's reads per minute, or its address's requests per minute", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until a retry can pass"))),
        (status = 503, description = "`database-unavailable`", body = ErrorBody),
    ),
)]
async fn stats(
    State(state): State<AppState>,
    Client(client): Client,
) -> Result<Json<Stats>, IngestError> {
    let mut counts: BTreeMap<&'static str, i64> = Status::ALL
        .iter()
        .map(|status| (status.as_str(), 0))
        .collect();
    for row in db::counts_by_status(&state.pool, &client)
        .await
        .map_err(database_unavailable)?
    {
        counts.insert(row.status.as_str(), row.count);
    }
    let processing_seconds = db::processing_seconds(&state.pool, &client)
        .await
        .map_err(database_unavailable)?
        .map(|(p50, p95, p99)| Percentiles { p50, p95, p99 });
    Ok(Json(Stats {
        counts,
        processing_seconds,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> OffsetDateTime {
        let nanos = 1_795_000_000_000_000_000 + seconds * 1_000_123_000;
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos)).unwrap()
    }

    fn id() -> Uuid {
        Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001)
    }

    /// The bodies are what they were when the rows were served as they are.
    #[test]
    fn listed_images_and_timeline_events_keep_their_rows_fields() {
        let listed = ListedImage::from(ListedImageRow {
            image_id: id(),
            status: Status::Ready,
            format: "png".into(),
            width: 1,
            height: 2,
            bytes: 3,
            dominant_color: None,
            blurhash: Some("LKO2".into()),
            uploaded_at: at(1),
        });
        assert_eq!(
            serde_json::to_string(&listed).unwrap(),
            r##"{"id":"01900000-0000-7000-8000-000000000001","status":"ready","format":"png","width":1,"height":2,"bytes":3,"dominant_color":null,"blurhash":"LKO2","uploaded_at":"2026-11-18T11:06:41.000123Z"}"##
        );
        let event = TimelineEvent::from(TimelineRow {
            event_id: id(),
            event_type: "ImageUploaded".into(),
            topic: "imgpipe.events".into(),
            partition: 2,
            offset: 77,
            occurred_at: at(2),
            correlation_id: "req-1".into(),
            causation_id: None,
        });
        assert_eq!(
            serde_json::to_string(&event).unwrap(),
            r##"{"event_id":"01900000-0000-7000-8000-000000000001","event_type":"ImageUploaded","topic":"imgpipe.events","partition":2,"offset":77,"occurred_at":"2026-11-18T11:06:42.000246Z","correlation_id":"req-1","causation_id":null}"##
        );
    }
}
