//! Read-only queries over a client's images: the listing, one image's timeline, and stats.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::extract::{ApiQuery, ImageIdPath};
use super::images::{database_unavailable, owned_image};
use super::AppState;
use crate::auth::Client;
use crate::db::{self, ListedImage, TimelineRow};
use crate::error::ErrorBody;
use crate::IngestError;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(timeline))
        .routes(routes!(stats))
}

#[derive(Debug, Serialize, ToSchema)]
struct Timeline {
    id: Uuid,
    events: Vec<TimelineRow>,
    /// Pass as `cursor` for the next page; absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

const DEFAULT_EVENTS_PAGE: i64 = 100;
const MAX_EVENTS_PAGE: i64 = 500;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct TimelineQuery {
    /// Events per page, 1 to 500; default 100.
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// The previous page's `next_cursor`.
    #[param(
        pattern = r"^-?[0-9]{1,16}_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
        min_length = 38,
        max_length = 54
    )]
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
    let limit = query.limit.unwrap_or(DEFAULT_EVENTS_PAGE);
    if !(1..=MAX_EVENTS_PAGE).contains(&limit) {
        return Err(IngestError::InvalidQuery(format!(
            "limit must be 1..={MAX_EVENTS_PAGE}"
        )));
    }
    let after = query.cursor.as_deref().map(cursor::decode).transpose()?;
    let (image_id, _) = owned_image(&state, &client, id).await?;
    // One extra row says whether there is a next page.
    let mut events = db::timeline(&state.pool, image_id, after, limit + 1)
        .await
        .map_err(database_unavailable)?;
    let next_cursor = if events.len() as i64 > limit {
        events.truncate(limit as usize);
        events
            .last()
            .map(|last| cursor::encode(last.occurred_at, last.event_id))
    } else {
        None
    };
    Ok(Json(Timeline {
        id: image_id,
        events,
        next_cursor,
    }))
}

const DEFAULT_PAGE: i64 = 50;
const MAX_PAGE: i64 = 200;

/// An image's status, as the listing filters on it.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
enum ImageStatusName {
    Uploaded,
    Processing,
    Ready,
    Failed,
    Deleted,
}

impl ImageStatusName {
    const ALL: [Self; 5] = [
        Self::Uploaded,
        Self::Processing,
        Self::Ready,
        Self::Failed,
        Self::Deleted,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Uploaded => "uploaded",
            Self::Processing => "processing",
            Self::Ready => "ready",
            Self::Failed => "failed",
            Self::Deleted => "deleted",
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only images in this status.
    #[param(inline)]
    status: Option<ImageStatusName>,
    /// Images per page, 1 to 200; default 50.
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// The previous page's `next_cursor`.
    #[param(
        pattern = r"^-?[0-9]{1,16}_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
        min_length = 38,
        max_length = 54
    )]
    cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
struct Page {
    images: Vec<ListedImage>,
    /// Pass as `cursor` for the next page; absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
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
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(IngestError::InvalidQuery(format!(
            "limit must be 1..={MAX_PAGE}"
        )));
    }
    let after = query.cursor.as_deref().map(cursor::decode).transpose()?;
    // One extra row says whether there is a next page.
    let mut images = db::list(
        &state.pool,
        &client,
        query.status.map(ImageStatusName::as_str),
        after,
        limit + 1,
    )
    .await
    .map_err(database_unavailable)?;
    let next_cursor = if images.len() as i64 > limit {
        images.truncate(limit as usize);
        images
            .last()
            .map(|last| cursor::encode(last.uploaded_at, last.image_id))
    } else {
        None
    };
    Ok(Json(Page {
        images,
        next_cursor,
    }))
}

/// The page cursor: the sort key (a time in microseconds and an id) of the last row shown,
/// `<micros>_<uuid>`; the listing's and the timeline's. Read strictly: what the document's
/// pattern admits, and nothing else.
mod cursor {
    use time::OffsetDateTime;
    use uuid::Uuid;

    use crate::IngestError;

    /// The most digits of the microseconds (year 2286 and before).
    const MAX_DIGITS: usize = 16;

    pub(super) fn encode(at: OffsetDateTime, id: Uuid) -> String {
        format!("{}_{id}", at.unix_timestamp_nanos() / 1_000)
    }

    pub(super) fn decode(text: &str) -> Result<(OffsetDateTime, Uuid), IngestError> {
        let invalid = || IngestError::InvalidQuery("cursor is not one this API gave out".into());
        let (micros, id_text) = text.split_once('_').ok_or_else(invalid)?;
        let digits = micros.strip_prefix('-').unwrap_or(micros);
        if digits.is_empty()
            || digits.len() > MAX_DIGITS
            || !digits.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(invalid());
        }
        let micros: i128 = micros.parse().map_err(|_| invalid())?;
        let at =
            OffsetDateTime::from_unix_timestamp_nanos(micros * 1_000).map_err(|_| invalid())?;
        let id = Uuid::try_parse(id_text).map_err(|_| invalid())?;
        // Only the lowercase hyphenated form the pattern states (`try_parse` takes others).
        if id.hyphenated().to_string() != id_text {
            return Err(invalid());
        }
        Ok((at, id))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn round_trips_and_rejects_forgeries() {
            let at = OffsetDateTime::from_unix_timestamp_nanos(1_795_000_000_123_456_000).unwrap();
            let id = Uuid::now_v7();
            assert_eq!(decode(&encode(at, id)).unwrap(), (at, id));
            for bad in [
                String::new(),
                "!!!".into(),
                "12:nope".into(),
                format!("_{id}"),
                format!("+12_{id}"),
                format!("12_{}", id.simple()),
                format!("12_{}", id.to_string().to_uppercase()),
                format!("12_{id}\n"),
                format!("12345678901234567_{id}"),
            ] {
                assert!(decode(&bad).is_err(), "{bad}");
            }
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
struct Stats {
    /// Images per status (every status present, zero when none).
    counts: std::collections::BTreeMap<&'static str, i64>,
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
    let mut counts: std::collections::BTreeMap<&'static str, i64> = ImageStatusName::ALL
        .iter()
        .map(|status| (status.as_str(), 0))
        .collect();
    for (status, count) in db::counts_by_status(&state.pool, &client)
        .await
        .map_err(database_unavailable)?
    {
        if let Some(slot) = ImageStatusName::ALL
            .iter()
            .map(|s| s.as_str())
            .find(|s| *s == status)
        {
            counts.insert(slot, count);
        }
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
