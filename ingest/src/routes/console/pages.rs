//! The console's pages (maud: markup checked at compile time, every value escaped). Plain HTML
//! forms and links, so every page works without JavaScript; landmarks, labels and visible focus
//! for keyboard and screen-reader use; one column under 40em wide (360 px phones).

use std::collections::BTreeMap;

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use imgpipe_schemas::state::Status;
use maud::{html, Markup, DOCTYPE};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

use super::session::ConsoleClient;
use crate::db::{ListedImageRow, TimelineRow, VariantSize};
use crate::error::IngestError;
use crate::routes::view::ImageStatus;

pub(super) fn layout(title: &str, session: Option<&ConsoleClient>, body: Markup) -> Html<String> {
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · imgpipe" }
                link rel="stylesheet" href="/console/console.css";
            }
            body {
                a class="skip" href="#main" { "Skip to content" }
                header {
                    nav aria-label="Console" {
                        a href="/console" class="brand" { "imgpipe" }
                        @if let Some(session) = session {
                            a href="/console" { "Images" }
                            a href="/console/upload" { "Upload" }
                            @if session.scope.is_admin() {
                                a href="/console/operator" { "Operator" }
                                a href="/console/operator/dead-letters" { "Dead letters" }
                            }
                            span class="who" { "Signed in as " strong { (session.client) } }
                            form method="post" action="/console/sign-out" class="inline" {
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main id="main" { (body) }
            }
        }
    };
    Html(page.into_string())
}

pub(super) fn sign_in(next: &str, error: Option<&str>) -> Html<String> {
    layout(
        "Sign in",
        None,
        html! {
            h1 { "Sign in" }
            @if let Some(error) = error {
                p class="error" role="alert" { (error) }
            }
            form method="post" action="/console/sign-in" class="stack" {
                input type="hidden" name="next" value=(next);
                label for="key" { "API key" }
                input id="key" name="key" type="password" autocomplete="current-password" required autofocus;
                button type="submit" { "Sign in" }
            }
            p class="hint" {
                "The key stays in this browser's session cookie (HttpOnly) and is checked on "
                "every page like the API's Bearer header."
            }
        },
    )
}

pub(super) fn upload(session: &ConsoleClient) -> Html<String> {
    layout(
        "Upload",
        Some(session),
        html! {
            h1 { "Upload" }
            noscript { p class="error" { "Uploading from this page needs JavaScript; the API (POST /v1/images) does not." } }
            div id="drop" class="drop" tabindex="0" role="region" aria-label="Drop images here" {
                p { "Drop images here, or " }
                label for="files" class="button" { "choose files" }
                input id="files" type="file" multiple accept="image/*";
            }
            ul id="uploads" class="uploads" aria-live="polite" {}
            script src="/console/console.js" defer {}
        },
    )
}

/// A dependency is down: the page says so (the cause goes to the log).
pub(super) fn unavailable(error: IngestError) -> Response {
    tracing::error!(error = %error, "console page: a dependency is unavailable");
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "The service cannot answer right now; try again shortly.",
    )
}

pub(super) fn problem(status: StatusCode, message: &str) -> Response {
    let page = layout(
        status.canonical_reason().unwrap_or("Problem"),
        None,
        html! {
            h1 { (status.canonical_reason().unwrap_or("Problem")) }
            p role="alert" { (message) }
            p { a href="/console" { "Back to the images" } }
        },
    );
    (status, page).into_response()
}

/// One page of the gallery.
#[derive(Clone, Copy)]
pub(super) struct Gallery<'a> {
    pub(super) rows: &'a [ListedImageRow],
    /// The page's images' variants, by image.
    pub(super) variants: &'a [VariantSize],
    /// Each image's smallest variant's URL.
    pub(super) thumbs: &'a BTreeMap<Uuid, String>,
    pub(super) status: Option<Status>,
    pub(super) next_cursor: Option<&'a str>,
}

pub(super) fn gallery(session: &ConsoleClient, gallery: &Gallery<'_>) -> Html<String> {
    let Gallery {
        rows,
        variants,
        thumbs,
        status,
        next_cursor,
    } = *gallery;
    let chosen = status.map(Status::as_str).unwrap_or("");
    layout(
        "Images",
        Some(session),
        html! {
            h1 { "Images" }
            form method="get" action="/console" class="filter" {
                label for="status" { "Status" }
                select id="status" name="status" {
                    option value="" selected[chosen.is_empty()] { "any" }
                    @for word in Status::ALL {
                        option value=(word.as_str()) selected[chosen == word.as_str()] { (word.as_str()) }
                    }
                }
                button type="submit" { "Show" }
            }
            @if rows.is_empty() {
                p { "No images here yet." }
            } @else {
                ul class="gallery" {
                    @for row in rows {
                        li {
                            a href={ "/console/images/" (row.image_id) } {
                                span class="swatch" style={ "background:" (swatch(row.dominant_color.as_deref())) } aria-hidden="true" {
                                    @if let Some(hash) = &row.blurhash {
                                        img src={ "/console/placeholder.bmp?hash=" (encode_query(hash)) } alt="" loading="lazy";
                                    }
                                    @if let Some(url) = thumbs.get(&row.image_id) {
                                        img class="thumb" src=(url) alt="" loading="lazy";
                                    }
                                }
                                span class={ "status " (row.status.as_str()) } { (row.status.as_str()) }
                                span class="meta" {
                                    (row.format) " · " (row.width) "×" (row.height) " · " (kib(row.bytes))
                                }
                                @let sizes = variants.iter().filter(|v| v.image_id == row.image_id);
                                span class="variants-of" {
                                    @for variant in sizes {
                                        span { (variant.name) " " (variant.width) "×" (variant.height) " " (kib(variant.bytes)) }
                                    }
                                }
                                span class="id" { (row.image_id) }
                            }
                        }
                    }
                }
            }
            @if let Some(cursor) = next_cursor {
                p { a rel="next" href={ "/console?status=" (chosen) "&cursor=" (cursor) } { "Older images" } }
            }
        },
    )
}

pub(super) fn image(
    session: &ConsoleClient,
    image: &ImageStatus,
    timeline: &[TimelineRow],
    as_of: Option<OffsetDateTime>,
) -> Html<String> {
    let id = image.id;
    let fields = &image.image;
    let status = fields.status.as_str();
    let picked = as_of
        // A datetime-local value: the RFC 3339 text without its fraction and zone.
        .and_then(|at| at.format(&Rfc3339).ok())
        .and_then(|text| text.get(..19).map(str::to_string))
        .unwrap_or_default();
    let time = |at: OffsetDateTime| at.format(&Rfc3339).unwrap_or_default();
    let facts: Vec<(&str, Option<String>)> = vec![
        ("format", Some(fields.format.clone())),
        ("width", Some(fields.width.to_string())),
        ("height", Some(fields.height.to_string())),
        ("bytes", Some(fields.bytes.to_string())),
        ("sha256", Some(fields.sha256.clone())),
        ("spec_version", fields.spec_version.map(|v| v.to_string())),
        ("dominant_color", fields.dominant_color.clone()),
        ("blurhash", fields.blurhash.clone()),
        ("animated", Some(fields.animated.to_string())),
        ("uploaded_at", Some(time(fields.uploaded_at))),
        ("updated_at", Some(time(fields.updated_at))),
    ];
    layout(
        "Image",
        Some(session),
        html! {
            h1 { "Image " code { (id) } }
            form method="get" action={ "/console/images/" (id) } class="filter" {
                label for="as_of" { "As of (UTC)" }
                input id="as_of" name="as_of" type="datetime-local" step="1" value=(picked);
                button type="submit" { "Show" }
                @if as_of.is_some() { a href={ "/console/images/" (id) } { "now" } }
            }
            @if let Some(at) = as_of {
                p class="hint" { "As it was at " (at) ", folded from its timeline; later events are marked below." }
            }
            p { span class={ "status " (status) } { (status) } }
            @if let Some(failure) = &image.failure {
                p class="error" { "Failed: " code { (failure.code) } " " (failure.reason) }
            }
            dl class="facts" {
                @for (name, value) in &facts {
                    @if let Some(value) = value {
                        dt { (name) }
                        dd { (value) }
                    }
                }
                @for (key, value) in &fields.metadata {
                    dt { "metadata." (key) }
                    dd { (value) }
                }
            }
            h2 { "Variants" }
            @if image.variants.is_empty() {
                p { "None yet." }
            } @else {
                ul class="variants" {
                    @for variant in &image.variants {
                        li {
                            @match &variant.url {
                                Some(url) => a href=(url) { (variant.stored.name) },
                                None => span { (variant.stored.name) },
                            }
                            " " (variant.stored.width) "×" (variant.stored.height) ", " (kib(variant.stored.bytes))
                        }
                    }
                }
            }
            h2 { "Timeline" }
            div class="scroll" {
                table class="timeline" {
                    thead { tr { th scope="col" { "time" } th scope="col" { "event" } th scope="col" { "topic / partition / offset" } th scope="col" { "correlation" } th scope="col" { "causation" } } }
                    tbody {
                        @for row in timeline {
                            tr class=[as_of.filter(|at| row.occurred_at > *at).map(|_| "later")] {
                                td { (row.occurred_at) }
                                td { (row.event_type) }
                                td { (row.topic) " / " (row.partition) " / " (row.offset) }
                                td { code { (row.correlation_id) } }
                                td { code { (row.causation_id.map(|id| id.to_string()).unwrap_or_default()) } }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// A `#rrggbb` from the read model, or a neutral grey (never anything else into the style).
fn swatch(color: Option<&str>) -> &str {
    match color {
        Some(c)
            if c.len() == 7
                && c.starts_with('#')
                && c[1..].bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            c
        }
        _ => "#888888",
    }
}

/// A query value with everything but unreserved characters percent-encoded (a BlurHash has
/// `#`, `+`, `%` and other characters a URL would misread).
fn encode_query(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub(super) fn kib(bytes: i64) -> String {
    format!("{:.1} KiB", bytes as f64 / 1024.0)
}
