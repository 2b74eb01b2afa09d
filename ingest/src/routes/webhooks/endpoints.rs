//! The endpoints themselves: register, list, get, update, delete, rotate the secret.

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use imgpipe_schemas::{
    WebhookEndpointCreated, WebhookEndpointDeleted, WebhookEndpointUpdated, WebhookSecretRotated,
};
use imgpipe_webhooks::signature::SigningSecret;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::super::envelope;
use super::super::extract::{ApiJson, Client, WebhookIdPath};
use super::{
    append_and_apply, checked_url, event_types, micros, names, owned_endpoint,
    WebhookEventTypeName, Webhooks, MAX_ENDPOINTS_PER_CLIENT,
};
use crate::db::webhooks::{self as db, EndpointRow};
use crate::error::{database_unavailable, ErrorBody, IngestError};
use crate::state::AppState;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get, update, delete))
        .routes(routes!(rotate_secret))
}

/// A new endpoint.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewWebhook {
    /// Where deliveries are POSTed: https (http only where the deployment allows it), no user
    /// name or password, and a host that is not a private, loopback, link-local or metadata
    /// address.
    #[schema(format = "uri", max_length = 2048)]
    url: String,
    /// The messages to deliver; repeats are dropped.
    #[schema(value_type = Vec<WebhookEventTypeName>, min_items = 1)]
    event_types: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
struct CreatedWebhook {
    id: Uuid,
    url: String,
    #[schema(value_type = Vec<WebhookEventTypeName>)]
    event_types: Vec<&'static str>,
    enabled: bool,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    /// The signing secret (`whsec_` + base64): shown only in this answer. Deliveries carry
    /// `webhook-signature`, its HMAC-SHA256 (Standard Webhooks).
    secret: String,
}

/// An endpoint as the API shows it; never its secret.
#[derive(Debug, Serialize, ToSchema)]
struct WebhookEndpoint {
    id: Uuid,
    url: String,
    #[schema(value_type = Vec<WebhookEventTypeName>)]
    event_types: Vec<&'static str>,
    enabled: bool,
    /// Why the delivering service disabled it (`failing`); null when enabled or disabled by
    /// its owner.
    disabled_reason: Option<String>,
    /// The first failed attempt since the last delivered one; null while healthy.
    #[serde(with = "time::serde::rfc3339::option")]
    failing_since: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    last_delivered_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    updated_at: OffsetDateTime,
}

impl From<EndpointRow> for WebhookEndpoint {
    fn from(row: EndpointRow) -> Self {
        Self {
            id: row.endpoint_id,
            url: row.url,
            event_types: names(&row.event_types.0),
            enabled: row.enabled,
            disabled_reason: row.disabled_reason,
            failing_since: row.failing_since,
            last_delivered_at: row.last_delivered_at,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
struct WebhookList {
    /// The client's endpoints, newest first.
    items: Vec<WebhookEndpoint>,
}

/// Registers an endpoint and answers its signing secret, once.
///
/// Appends `WebhookEndpointCreated` (the secret sealed with the deployment's key). A client
/// has at most 20 endpoints.
#[utoipa::path(
    post,
    path = "/webhooks",
    tag = "webhooks",
    operation_id = "create_webhook",
    request_body = NewWebhook,
    responses(
        (status = 201, description = "Registered", body = CreatedWebhook,
            headers(("Location" = String, description = "The endpoint's path"))),
        (status = 400, description = "`invalid-json`, `invalid-webhook-url`, `webhook-url-insecure`, `webhook-address-refused`, `invalid-event-types`", body = ErrorBody),
        (status = 401, description = "`missing-api-key`, `invalid-api-key`", body = ErrorBody),
        (status = 403, description = "`insufficient-scope`: a read-only key", body = ErrorBody),
        (status = 409, description = "`too-many-webhooks`", body = ErrorBody),
        (status = 413, description = "`payload-too-large`", body = ErrorBody),
        (status = 429, description = "`rate-limited`: over the address's requests per minute", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until a retry can pass"))),
        (status = 503, description = "`webhooks-disabled`, `database-unavailable`, `event-log-unavailable`", body = ErrorBody),
    ),
)]
async fn create(
    State(state): State<AppState>,
    Client(client): Client,
    webhooks: Webhooks,
    headers: HeaderMap,
    ApiJson(new): ApiJson<NewWebhook>,
) -> Result<Response, IngestError> {
    let url = checked_url(&webhooks.policy, &new.url)?;
    let event_types = names(&event_types(&new.event_types)?);
    let mut tx = state.pool.begin().await.map_err(database_unavailable)?;
    let live = db::lock_and_count_live(&mut tx, &client)
        .await
        .map_err(database_unavailable)?;
    if live >= MAX_ENDPOINTS_PER_CLIENT as i64 {
        return Err(IngestError::TooManyWebhooks {
            limit: MAX_ENDPOINTS_PER_CLIENT,
        });
    }
    let endpoint_id = Uuid::now_v7();
    let secret = SigningSecret::generate();
    let event = envelope::event(
        &headers,
        endpoint_id,
        WebhookEndpointCreated {
            endpoint_id: endpoint_id.to_string(),
            owner: client.to_string(),
            url: url.clone(),
            event_types: event_types.iter().map(|name| name.to_string()).collect(),
            sealed_secret: webhooks.sealer.seal(&secret),
        },
    );
    append_and_apply(&state, Some(tx), &event).await?;
    tracing::info!(endpoint_id = %endpoint_id, client = %client, "webhook endpoint registered");
    let created = CreatedWebhook {
        id: endpoint_id,
        url,
        event_types,
        enabled: true,
        created_at: event.occurred_at,
        secret: secret.to_whsec(),
    };
    let location = format!("/v1/webhooks/{endpoint_id}");
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(created),
    )
        .into_response())
}

/// The client's endpoints, newest first (deleted ones are gone).
#[utoipa::path(
    get,
    path = "/webhooks",
    tag = "webhooks",
    operation_id = "list_webhooks",
    responses(
        (status = 200, description = "The endpoints", body = WebhookList),
        (status = 401, description = "`missing-api-key`, `invalid-api-key`", body = ErrorBody),
        (status = 429, description = "`rate-limited`: over the client's reads per minute, or its address's requests per minute", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until a retry can pass"))),
        (status = 503, description = "`webhooks-disabled`, `database-unavailable`", body = ErrorBody),
    ),
)]
async fn list(
    State(state): State<AppState>,
    Client(client): Client,
    _: Webhooks,
) -> Result<Json<WebhookList>, IngestError> {
    let rows = db::endpoints(&state.pool, &client)
        .await
        .map_err(database_unavailable)?;
    Ok(Json(WebhookList {
        items: rows.into_iter().map(WebhookEndpoint::from).collect(),
    }))
}

/// One endpoint.
#[utoipa::path(
    get,
    path = "/webhooks/{id}",
    tag = "webhooks",
    operation_id = "get_webhook",
    params(("id" = Uuid, Path, description = "The id the registration gave")),
    responses(
        (status = 200, description = "The endpoint", body = WebhookEndpoint),
        (status = 400, description = "`invalid-webhook-id`", body = ErrorBody),
        (status = 401, description = "`missing-api-key`, `invalid-api-key`", body = ErrorBody),
        (status = 404, description = "`webhook-not-found` (also another client's, or a deleted one)", body = ErrorBody),
        (status = 429, description = "`rate-limited`: over the client's reads per minute, or its address's requests per minute", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until a retry can pass"))),
        (status = 503, description = "`webhooks-disabled`, `database-unavailable`", body = ErrorBody),
    ),
)]
async fn get(
    State(state): State<AppState>,
    Client(client): Client,
    _: Webhooks,
    WebhookIdPath(id): WebhookIdPath,
) -> Result<Json<WebhookEndpoint>, IngestError> {
    let endpoint = owned_endpoint(&state, &client, id).await?;
    Ok(Json(endpoint.into()))
}

/// A change to an endpoint; absent (or null) fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct WebhookUpdate {
    #[schema(format = "uri", max_length = 2048)]
    url: Option<String>,
    #[schema(value_type = Option<Vec<WebhookEventTypeName>>, min_items = 1)]
    event_types: Option<Vec<String>>,
    /// false: nothing is delivered to it until it is enabled again; true also clears the
    /// delivering service's disabling and its failures so far.
    enabled: Option<bool>,
}

/// Updates an endpoint: its URL, its event types, enabled or not.
///
/// Appends `WebhookEndpointUpdated` and answers the endpoint as it now is.
#[utoipa::path(
    patch,
    path = "/webhooks/{id}",
    tag = "webhooks",
    operation_id = "update_webhook",
    params(("id" = Uuid, Path, description = "The id the registration gave")),
    request_body = WebhookUpdate,
    responses(
        (status = 200, description = "The endpoint as updated", body = WebhookEndpoint),
        (status = 400, description = "`invalid-webhook-id`, `invalid-json`, `empty-webhook-update`, `invalid-webhook-url`, `webhook-url-insecure`, `webhook-address-refused`, `invalid-event-types`", body = ErrorBody),
        (status = 401, description = "`missing-api-key`, `invalid-api-key`", body = ErrorBody),
        (status = 403, description = "`insufficient-scope`: a read-only key", body = ErrorBody),
        (status = 404, description = "`webhook-not-found` (also another client's, or a deleted one)", body = ErrorBody),
        (status = 413, description = "`payload-too-large`", body = ErrorBody),
        (status = 429, description = "`rate-limited`: over the address's requests per minute", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until a retry can pass"))),
        (status = 503, description = "`webhooks-disabled`, `database-unavailable`, `event-log-unavailable`", body = ErrorBody),
    ),
)]
async fn update(
    State(state): State<AppState>,
    Client(client): Client,
    webhooks: Webhooks,
    headers: HeaderMap,
    WebhookIdPath(id): WebhookIdPath,
    ApiJson(update): ApiJson<WebhookUpdate>,
) -> Result<Json<WebhookEndpoint>, IngestError> {
    // The body is checked before the endpoint is looked up: 400 whether or not it exists.
    if update.url.is_none() && update.event_types.is_none() && update.enabled.is_none() {
        return Err(IngestError::EmptyWebhookUpdate);
    }
    let url = update
        .url
        .as_deref()
        .map(|url| checked_url(&webhooks.policy, url))
        .transpose()?;
    let event_types = update
        .event_types
        .as_deref()
        .map(event_types)
        .transpose()?
        .map(|words| names(&words).into_iter().map(str::to_string).collect());
    owned_endpoint(&state, &client, id).await?;
    let event = envelope::event(
        &headers,
        id,
        WebhookEndpointUpdated {
            endpoint_id: id.to_string(),
            requested_by: client.to_string(),
            url,
            event_types,
            enabled: update.enabled,
        },
    );
    append_and_apply(&state, None, &event).await?;
    tracing::info!(endpoint_id = %id, client = %client, "webhook endpoint updated");
    // Deleted by another request in between: gone, as for any later read.
    let endpoint = owned_endpoint(&state, &client, id).await?;
    Ok(Json(endpoint.into()))
}

/// Deletes an endpoint: nothing more is delivered to it, and it reads 404 from now on.
///
/// Appends `WebhookEndpointDeleted`.
#[utoipa::path(
    delete,
    path = "/webhooks/{id}",
    tag = "webhooks",
    operation_id = "delete_webhook",
    params(("id" = Uuid, Path, description = "The id the registration gave")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "`invalid-webhook-id`", body = ErrorBody),
        (status = 401, description = "`missing-api-key`, `invalid-api-key`", body = ErrorBody),
        (status = 403, description = "`insufficient-scope`: a read-only key", body = ErrorBody),
        (status = 404, description = "`webhook-not-found` (also another client's, or a deleted one)", body = ErrorBody),
        (status = 429, description = "`rate-limited`: over the client's deletes per minute, or its address's requests per minute", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until a retry can pass"))),
        (status = 503, description = "`webhooks-disabled`, `database-unavailable`, `event-log-unavailable`", body = ErrorBody),
    ),
)]
async fn delete(
    State(state): State<AppState>,
    Client(client): Client,
    _: Webhooks,
    headers: HeaderMap,
    WebhookIdPath(id): WebhookIdPath,
) -> Result<StatusCode, IngestError> {
    owned_endpoint(&state, &client, id).await?;
    let event = envelope::event(
        &headers,
        id,
        WebhookEndpointDeleted {
            endpoint_id: id.to_string(),
            requested_by: client.to_string(),
        },
    );
    append_and_apply(&state, None, &event).await?;
    tracing::info!(endpoint_id = %id, client = %client, "webhook endpoint deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// How long the previous secret also signs after a rotation, unless the request says.
const DEFAULT_OVERLAP_SECONDS: u32 = 24 * 3600;
/// The longest overlap a request may ask for (a week).
const MAX_OVERLAP_SECONDS: u32 = 7 * 24 * 3600;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SecretRotation {
    /// How long the previous secret also signs deliveries, so receivers can switch over:
    /// 0 to 604800 seconds; default 86400 (a day).
    // Read as a number, so `60.0` (an integer, to JSON Schema) is 60 too.
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 604800)]
    overlap_seconds: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
struct RotatedSecret {
    /// The new signing secret (`whsec_` + base64): shown only in this answer.
    secret: String,
    /// Until when deliveries are also signed with the previous secret (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    previous_secret_valid_until: OffsetDateTime,
}

/// Replaces the endpoint's signing secret; during the overlap deliveries carry a signature by
/// each, the new and the previous.
///
/// Appends `WebhookSecretRotated`. The body is optional (none, or null, is the default overlap).
#[utoipa::path(
    post,
    path = "/webhooks/{id}/rotate-secret",
    tag = "webhooks",
    operation_id = "rotate_webhook_secret",
    params(("id" = Uuid, Path, description = "The id the registration gave")),
    request_body(content = Option<SecretRotation>, description = "Optional"),
    responses(
        (status = 200, description = "The new secret", body = RotatedSecret),
        (status = 400, description = "`invalid-webhook-id`, `invalid-json`, `invalid-overlap`", body = ErrorBody),
        (status = 401, description = "`missing-api-key`, `invalid-api-key`", body = ErrorBody),
        (status = 403, description = "`insufficient-scope`: a read-only key", body = ErrorBody),
        (status = 404, description = "`webhook-not-found` (also another client's, or a deleted one)", body = ErrorBody),
        (status = 409, description = "`rotation-in-progress`: the previous secret still signs; rotate with overlap_seconds 0 to replace both now", body = ErrorBody),
        (status = 413, description = "`payload-too-large`", body = ErrorBody),
        (status = 429, description = "`rate-limited`: over the address's requests per minute", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until a retry can pass"))),
        (status = 503, description = "`webhooks-disabled`, `database-unavailable`, `event-log-unavailable`", body = ErrorBody),
    ),
)]
async fn rotate_secret(
    State(state): State<AppState>,
    Client(client): Client,
    webhooks: Webhooks,
    headers: HeaderMap,
    WebhookIdPath(id): WebhookIdPath,
    // No body, a JSON null and `{}` all ask for the default.
    rotation: Option<ApiJson<Option<SecretRotation>>>,
) -> Result<Json<RotatedSecret>, IngestError> {
    let overlap = rotation
        .and_then(|ApiJson(rotation)| rotation)
        .and_then(|rotation| rotation.overlap_seconds)
        .unwrap_or(f64::from(DEFAULT_OVERLAP_SECONDS));
    if overlap.fract() != 0.0 || !(0.0..=f64::from(MAX_OVERLAP_SECONDS)).contains(&overlap) {
        return Err(IngestError::InvalidOverlap {
            max: MAX_OVERLAP_SECONDS,
        });
    }
    // A whole number of seconds within a week.
    let overlap = overlap as i64;
    let endpoint = owned_endpoint(&state, &client, id).await?;
    // A second rotation with an overlap while the first's runs would cut the first's short
    // (one previous secret is kept); one with no overlap replaces both at once, on purpose.
    if let Some(until) = endpoint.previous_valid_until {
        if overlap > 0 && until > OffsetDateTime::now_utc() {
            return Err(IngestError::RotationInProgress {
                until: until.format(&Rfc3339).unwrap_or_default(),
            });
        }
    }
    let secret = SigningSecret::generate();
    // In whole microseconds, as the event carries it.
    let valid_until = OffsetDateTime::now_utc() + time::Duration::seconds(overlap);
    let valid_until = valid_until
        .replace_nanosecond(valid_until.nanosecond() / 1_000 * 1_000)
        .unwrap_or(valid_until);
    let event = envelope::event(
        &headers,
        id,
        WebhookSecretRotated {
            endpoint_id: id.to_string(),
            requested_by: client.to_string(),
            sealed_secret: webhooks.sealer.seal(&secret),
            previous_valid_until_micros: micros(valid_until),
        },
    );
    append_and_apply(&state, None, &event).await?;
    tracing::info!(endpoint_id = %id, client = %client, overlap_secs = overlap, "webhook secret rotated");
    Ok(Json(RotatedSecret {
        secret: secret.to_whsec(),
        previous_secret_valid_until: valid_until,
    }))
}
