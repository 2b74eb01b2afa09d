//! Webhook endpoints: `/v1/webhooks` (register, list), `/v1/webhooks/{id}` (get, update,
//! delete), `/v1/webhooks/{id}/rotate-secret` in `endpoints.rs`; `/v1/webhooks/{id}/deliveries`
//! and `/v1/webhooks/{id}/redeliver` in `deliveries.rs`.
//!
//! Every change is an event on the events topic keyed by the endpoint's id (the read model is
//! rebuilt from the log like the images'), appended before the answer and then applied to the
//! read model at once with the projector's own `apply`, so the client reads its change back
//! right away; the projector applies it again later and finds it a duplicate. A client sees
//! only its own endpoints: another client's is the same 404 as a missing or deleted one.

mod deliveries;
mod endpoints;

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use imgpipe_schemas::{Event, WebhookEventType};
use imgpipe_webhooks::secret::SecretSealer;
use imgpipe_webhooks::target::{AddressPolicy, TargetRefused, MAX_URL_LEN};
use sqlx::{Postgres, Transaction};
use time::OffsetDateTime;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use uuid::Uuid;

use super::extract::json_body_limit;
use crate::db::webhooks::{self as db, EndpointRow};
use crate::error::{database_unavailable, IngestError};
use crate::state::AppState;

pub(super) fn router() -> OpenApiRouter<AppState> {
    endpoints::router()
        .merge(deliveries::router())
        .layer(json_body_limit())
}

/// The most live (not deleted) endpoints one client may have.
const MAX_ENDPOINTS_PER_CLIENT: usize = 20;

/// The webhook settings, for a route that needs webhooks on: 503 `webhooks-disabled` when the
/// deployment has no sealing key. Taken after the `Client`, so a request without a valid key
/// is still 401.
pub(super) struct Webhooks {
    sealer: Arc<SecretSealer>,
    policy: Arc<AddressPolicy>,
}

impl FromRequestParts<AppState> for Webhooks {
    type Rejection = IngestError;

    async fn from_request_parts(_: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let sealer = state
            .webhooks
            .sealer
            .clone()
            .ok_or(IngestError::WebhooksDisabled)?;
        Ok(Self {
            sealer,
            policy: Arc::clone(&state.webhooks.policy),
        })
    }
}

/// The endpoint, if it exists, is not deleted and belongs to the client; otherwise 404
/// `webhook-not-found`, the same for all three.
async fn owned_endpoint(
    state: &AppState,
    client: &str,
    endpoint_id: Uuid,
) -> Result<EndpointRow, IngestError> {
    db::endpoint(&state.pool, endpoint_id)
        .await
        .map_err(database_unavailable)?
        .filter(|endpoint| endpoint.owner == client)
        .ok_or(IngestError::WebhookNotFound)
}

/// A URL an endpoint may have, as it is stored and called: parsed and normalised (so what was
/// checked is what is called), refused with the code of `TargetRefused`'s reason.
fn checked_url(policy: &AddressPolicy, url: &str) -> Result<String, IngestError> {
    let normalised = policy.check_url(url)?.to_string();
    // Normalising can lengthen a URL (an internationalised host becomes punycode).
    if normalised.len() > MAX_URL_LEN {
        return Err(TargetRefused::Malformed.into());
    }
    Ok(normalised)
}

/// The requested event types as words: at least one, each known; repeats are dropped and the
/// list is kept in the words' order.
fn event_types(requested: &[String]) -> Result<Vec<WebhookEventType>, IngestError> {
    if requested.is_empty() {
        return Err(IngestError::InvalidEventTypes("the list is empty".into()));
    }
    let words = requested
        .iter()
        .map(|text| {
            text.parse::<WebhookEventType>()
                .map_err(|_| IngestError::InvalidEventTypes(format!("{text:?} is not one")))
        })
        .collect::<Result<BTreeSet<_>, _>>()?;
    Ok(words.into_iter().collect())
}

/// The words as the event and the API carry them.
fn names(event_types: &[WebhookEventType]) -> Vec<&'static str> {
    event_types.iter().map(|word| word.as_str()).collect()
}

/// Appends an endpoint's event (answering 503 `event-log-unavailable` when the broker does not
/// acknowledge it), then applies it to the read model at once, in `tx` when the caller holds
/// one. The append is what counts: if applying fails, the projector applies the event later,
/// so that is logged and not answered as a failure (a client told 503 would retry a change
/// that was made, and a new endpoint's secret is shown only in this answer).
async fn append_and_apply(
    state: &AppState,
    tx: Option<Transaction<'static, Postgres>>,
    event: &Event,
) -> Result<(), IngestError> {
    state
        .events
        .publish(event)
        .await
        .map_err(IngestError::EventLogUnavailable)?;
    let applied = async {
        let mut tx = match tx {
            Some(tx) => tx,
            None => state.pool.begin().await?,
        };
        imgpipe_projector::db::webhooks::apply(&mut tx, event).await?;
        tx.commit().await
    }
    .await;
    if let Err(error) = applied {
        tracing::warn!(
            event_id = %event.event_id,
            endpoint_id = %event.image_id,
            error = %error,
            "webhook event appended but not applied at once; the projector applies it"
        );
    }
    Ok(())
}

/// A time as the events carry it: Unix microseconds (any `OffsetDateTime` is within range).
fn micros(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX)
}

/// [`WebhookEventType`] as the document states it: one of its words.
struct WebhookEventTypeName;

impl PartialSchema for WebhookEventTypeName {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .description(Some("A message a webhook endpoint can subscribe to."))
            .schema_type(Type::String)
            .enum_values(Some(WebhookEventType::ALL.map(WebhookEventType::as_str)))
            .into()
    }
}

impl ToSchema for WebhookEventTypeName {}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(result: Result<impl std::fmt::Debug, IngestError>) -> &'static str {
        result.unwrap_err().code()
    }

    #[test]
    fn urls_are_https_unless_http_is_allowed() {
        let production = AddressPolicy::new(false, Vec::new());
        assert_eq!(
            code(checked_url(&production, "http://example.com/hook")),
            "webhook-url-insecure"
        );
        assert_eq!(
            checked_url(&production, "https://Example.COM/hook?a=1").unwrap(),
            "https://example.com/hook?a=1"
        );
        let development = AddressPolicy::new(true, Vec::new());
        assert_eq!(
            checked_url(&development, "http://example.com").unwrap(),
            "http://example.com/"
        );
        assert_eq!(
            code(checked_url(&development, "ftp://example.com/")),
            "webhook-url-insecure"
        );
    }

    #[test]
    fn refused_urls_have_their_codes() {
        let policy = AddressPolicy::new(true, Vec::new());
        for (url, expected) in [
            ("not a url", "invalid-webhook-url"),
            ("https://user:pw@example.com/", "invalid-webhook-url"),
            ("https://169.254.169.254/", "webhook-address-refused"),
            ("http://10.0.0.1/", "webhook-address-refused"),
            ("http://[::ffff:127.0.0.2]/", "webhook-address-refused"),
        ] {
            assert_eq!(code(checked_url(&policy, url)), expected, "{url}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert_eq!(code(checked_url(&policy, &long)), "invalid-webhook-url");
    }

    #[test]
    fn event_types_are_known_words_without_repeats() {
        let texts = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            event_types(&texts(&["image.deleted", "image.ready", "image.deleted"])).unwrap(),
            [WebhookEventType::Ready, WebhookEventType::Deleted]
        );
        for bad in [
            &[][..],
            &["image.ready", "image.uploaded"],
            &["IMAGE.READY"],
        ] {
            assert_eq!(
                code(event_types(&texts(bad))),
                "invalid-event-types",
                "{bad:?}"
            );
        }
    }
}
