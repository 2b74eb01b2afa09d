//! `/console`: a small web console served by ingest itself (issue #17). Server-rendered HTML
//! (maud) that works without JavaScript, styled by one embedded stylesheet, no third-party
//! asset: signing in with an API key, the gallery of the client's images (newest first, by
//! status, cursor-paginated, with each one's dominant colour and BlurHash), an image's page (its
//! metadata, variants with their URLs, and its timeline with every event's position and ids),
//! the upload page (the one that needs JavaScript), and the operator pages (`operator.rs`,
//! scope=admin).
//! The pages read through the same queries as the API; they are not part of `/v1` and its
//! document.

mod bridge;
mod operator;
mod operator_pages;
mod pages;
mod placeholder;
mod session;

pub(super) use bridge::PREFIX as API_PREFIX;

use axum::extract::{Form, Path, State};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, SET_COOKIE,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use imgpipe_schemas::state::Status;
use serde::Deserialize;

use self::session::{safe_next, same_origin, sign_in_cookie, sign_out_cookie, ConsoleClient};
use super::images::current;
use super::ownership::owned_image;
use super::page::Cursor;
use super::queries::IMAGES_PAGE;
use crate::db;
use crate::error::IngestError;
use crate::state::AppState;

/// The most timeline events an image's page shows.
const TIMELINE_ROWS: i64 = 500;
/// Images per gallery page.
const GALLERY_PAGE: i64 = 24;

const STYLESHEET: &str = include_str!("console.css");
const SCRIPT: &str = include_str!("console.js");

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/console", get(gallery))
        .route("/console/sign-in", get(sign_in_page).post(sign_in))
        .route("/console/sign-out", post(sign_out))
        .route("/console/images/{id}", get(image_page))
        .route("/console/upload", get(upload_page))
        .route("/console/console.css", get(stylesheet))
        .route("/console/placeholder.bmp", get(placeholder::placeholder))
        .route("/console/console.js", get(script))
        .merge(bridge::router())
        .merge(operator::router())
        .layer(axum::middleware::map_response(security_headers))
}

/// Every console answer: no framing, no sniffing, no referrer outside, scripts and styles only
/// from here (images also from the object store's presigned URLs).
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
             img-src 'self' data: http: https:; connect-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    response
}

async fn stylesheet() -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "text/css; charset=utf-8"),
            (CACHE_CONTROL, "public, max-age=300"),
        ],
        STYLESHEET,
    )
}

async fn script() -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (CACHE_CONTROL, "public, max-age=300"),
        ],
        SCRIPT,
    )
}

/// Uploading several files at once, each with its progress and then its live status (the
/// script, through the bridge); without JavaScript the page says so.
async fn upload_page(session: ConsoleClient) -> Response {
    pages::upload(&session).into_response()
}

#[derive(Debug, Deserialize)]
struct SignInQuery {
    next: Option<String>,
}

async fn sign_in_page(axum::extract::Query(query): axum::extract::Query<SignInQuery>) -> Response {
    pages::sign_in(safe_next(query.next.as_deref()), None).into_response()
}

#[derive(Deserialize)]
struct SignInForm {
    key: String,
    next: Option<String>,
}

/// Checks the key like the API's Bearer header, and keeps it in the session cookie.
async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<SignInForm>,
) -> Response {
    if !same_origin(&headers) {
        return pages::problem(
            StatusCode::FORBIDDEN,
            "This form was sent from another site.",
        )
        .into_response();
    }
    let next = safe_next(form.next.as_deref()).to_string();
    let key = form.key.trim();
    if key.is_empty() || key.len() > 512 || state.api_keys.grant_for(key).is_none() {
        return (
            StatusCode::UNAUTHORIZED,
            pages::sign_in(&next, Some("That key is not one this deployment knows.")),
        )
            .into_response();
    }
    let secure = headers
        .get("x-forwarded-proto")
        .is_some_and(|proto| proto.as_bytes().eq_ignore_ascii_case(b"https"));
    let mut response = Redirect::to(&next).into_response();
    if let Ok(cookie) = HeaderValue::from_str(&sign_in_cookie(key, secure)) {
        response.headers_mut().insert(SET_COOKIE, cookie);
    }
    response
}

async fn sign_out(headers: HeaderMap) -> Response {
    if !same_origin(&headers) {
        return pages::problem(
            StatusCode::FORBIDDEN,
            "This form was sent from another site.",
        )
        .into_response();
    }
    let mut response = Redirect::to("/console/sign-in").into_response();
    if let Ok(cookie) = HeaderValue::from_str(&sign_out_cookie()) {
        response.headers_mut().insert(SET_COOKIE, cookie);
    }
    response
}

#[derive(Debug, Deserialize)]
struct GalleryQuery {
    status: Option<String>,
    cursor: Option<String>,
}

/// The client's images, newest first; `status` filters, `cursor` pages.
async fn gallery(
    State(state): State<AppState>,
    session: ConsoleClient,
    axum::extract::Query(query): axum::extract::Query<GalleryQuery>,
) -> Response {
    // An empty status is the form's "any".
    let status = match query.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(text) => match text.parse::<Status>() {
            Ok(status) => Some(status),
            Err(_) => {
                return pages::problem(StatusCode::BAD_REQUEST, "No such status.").into_response()
            }
        },
    };
    let page = match IMAGES_PAGE.request(Some(GALLERY_PAGE), query.cursor.as_deref()) {
        Ok(page) => page,
        Err(_) => {
            return pages::problem(StatusCode::BAD_REQUEST, "That page link is not valid.")
                .into_response()
        }
    };
    let rows = match db::list(
        &state.pool,
        &session.client,
        status,
        page.after(),
        page.fetch(),
    )
    .await
    {
        Ok(rows) => rows,
        Err(error) => return pages::unavailable(IngestError::DatabaseUnavailable(error)),
    };
    let (rows, next_cursor) = page.page(rows, |row| Cursor {
        at: row.uploaded_at,
        id: row.image_id,
    });
    let ids: Vec<_> = rows.iter().map(|row| row.image_id).collect();
    let variants = match db::variant_sizes(&state.pool, &ids).await {
        Ok(variants) => variants,
        Err(error) => return pages::unavailable(IngestError::DatabaseUnavailable(error)),
    };
    // Each card shows its smallest variant over the BlurHash (a presigned URL: the browser
    // fetches it from the object store without the key).
    let ttl = std::time::Duration::from_secs(state.settings.presign_ttl_secs);
    let mut thumbs = std::collections::BTreeMap::new();
    for variant in &variants {
        if thumbs.contains_key(&variant.image_id) {
            continue;
        }
        match state.store.presigned_get(&variant.key, ttl).await {
            Ok(url) => thumbs.insert(variant.image_id, url),
            Err(error) => return pages::unavailable(IngestError::StorageUnavailable(error)),
        };
    }
    let gallery = pages::Gallery {
        rows: &rows,
        variants: &variants,
        thumbs: &thumbs,
        status,
        next_cursor: next_cursor.as_deref(),
    };
    pages::gallery(&session, &gallery).into_response()
}

#[derive(Debug, Deserialize)]
struct ImageQuery {
    /// An RFC 3339 time, or a `datetime-local` value (`2026-11-30T07:52`, read as UTC).
    as_of: Option<String>,
}

/// One image: metadata, variants with their URLs, the timeline; with `as_of`, the image as it
/// was then (the same fold as `GET /v1/images/{id}?as_of=`) and the later events marked.
async fn image_page(
    State(state): State<AppState>,
    session: ConsoleClient,
    Path(id): Path<String>,
    axum::extract::Query(query): axum::extract::Query<ImageQuery>,
) -> Response {
    let as_of = match query.as_of.as_deref().filter(|t| !t.is_empty()) {
        None => None,
        // A datetime-local value comes with or without seconds, and without a zone.
        Some(text) => match super::as_of::parse(text)
            .or_else(|_| super::as_of::parse(&format!("{text}Z")))
            .or_else(|_| super::as_of::parse(&format!("{text}:00Z")))
        {
            Ok(at) => Some(at),
            Err(_) => {
                return pages::problem(StatusCode::BAD_REQUEST, "That time is not one to read.")
                    .into_response()
            }
        },
    };
    let (image_id, image) = match owned_image(&state, &session.client, id).await {
        Ok(found) => found,
        Err(IngestError::ImageNotFound | IngestError::InvalidImageId(_)) => {
            return pages::problem(StatusCode::NOT_FOUND, "No such image.").into_response()
        }
        Err(error) => return pages::unavailable(error),
    };
    let timeline = match db::timeline(&state.pool, image_id, None, TIMELINE_ROWS).await {
        Ok(rows) => rows,
        Err(error) => return pages::unavailable(IngestError::DatabaseUnavailable(error)),
    };
    let status = match as_of {
        None => current(&state, image_id, image).await,
        Some(at) => super::as_of::image_at(&state, image_id, at).await,
    };
    let status = match status {
        Ok(status) => status,
        Err(IngestError::NotYetUploaded(_)) => {
            return pages::problem(
                StatusCode::NOT_FOUND,
                "The image was not uploaded yet then.",
            )
            .into_response()
        }
        Err(IngestError::AsOfUnavailable(_)) => {
            return pages::problem(
                StatusCode::CONFLICT,
                "This image's events up to then were projected before the timeline kept them.",
            )
            .into_response()
        }
        Err(error) => return pages::unavailable(error),
    };
    // The API's own answer, so the page shows what `GET /v1/images/{id}` says.
    pages::image(&session, &status, &timeline, as_of).into_response()
}
