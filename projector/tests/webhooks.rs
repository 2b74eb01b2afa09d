//! The webhook read models against the real Postgres: an endpoint's events in order and out of
//! order (ingest applies its own at once, the projector again later), attempts and the
//! endpoint's failing time, duplicates, and a malformed endpoint id refused as data.
#![allow(clippy::unwrap_used)]

use imgpipe_infra::consume::RecordPosition;
use imgpipe_infra::{DatabaseConfig, FromEnv};
use imgpipe_projector::db;
use imgpipe_schemas::{
    Event, Payload, Producer, WebhookDeliveryAttempted, WebhookEndpointCreated,
    WebhookEndpointDeleted, WebhookEndpointDisabled, WebhookEndpointUpdated,
    WebhookRedeliveryRequested, WebhookSecretRotated,
};
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

async fn database() -> PgPool {
    let mut config = DatabaseConfig::from_env().unwrap();
    config.schema = format!("t{}", Uuid::now_v7().simple());
    db::migrate(&config).await.unwrap();
    config.pool().unwrap()
}

fn event(key: Uuid, payload: impl Into<Payload>) -> Event {
    let producer = Producer {
        service: "test".into(),
        version: "0".into(),
    };
    Event::new(key, "req-webhooks", None, producer, payload)
}

async fn apply(pool: &PgPool, event: &Event) -> Result<db::Outcome, sqlx::Error> {
    let position = RecordPosition {
        topic: "imgpipe.events".into(),
        partition: 0,
        offset: 0,
    };
    let mut tx = pool.begin().await?;
    let outcome = db::apply(&mut tx, event, &position).await?;
    tx.commit().await?;
    Ok(outcome)
}

fn created(endpoint: Uuid) -> Event {
    event(
        endpoint,
        WebhookEndpointCreated {
            endpoint_id: endpoint.to_string(),
            owner: "client-a".into(),
            url: "https://hooks.example.com/a".into(),
            event_types: vec!["image.ready".into()],
            sealed_secret: "v1.first".into(),
        },
    )
}

fn updated(endpoint: Uuid, enabled: Option<bool>, url: Option<&str>) -> Event {
    event(
        endpoint,
        WebhookEndpointUpdated {
            endpoint_id: endpoint.to_string(),
            requested_by: "client-a".into(),
            url: url.map(str::to_string),
            event_types: None,
            enabled,
        },
    )
}

fn attempt(endpoint: Uuid, error_class: Option<&str>) -> Event {
    event(
        Uuid::now_v7(),
        WebhookDeliveryAttempted {
            endpoint_id: endpoint.to_string(),
            message_id: Uuid::now_v7().to_string(),
            message_type: "image.ready".into(),
            attempt: 1,
            redelivery: false,
            url: "https://hooks.example.com/a".into(),
            status_code: Some(if error_class.is_some() { 503 } else { 200 }),
            duration_ms: 12,
            error_class: error_class.map(str::to_string),
            next_attempt_micros: None,
        },
    )
}

#[derive(Debug, PartialEq, sqlx::FromRow)]
struct Row {
    url: String,
    enabled: bool,
    deleted: bool,
    disabled_reason: Option<String>,
    sealed_secret: String,
    previous_sealed_secret: Option<String>,
    failing_since: Option<OffsetDateTime>,
}

async fn row(pool: &PgPool, endpoint: Uuid) -> Row {
    sqlx::query_as(
        "SELECT url, enabled, deleted, disabled_reason, sealed_secret, previous_sealed_secret,
                failing_since
         FROM webhook_endpoints WHERE endpoint_id = $1",
    )
    .bind(endpoint)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn an_endpoints_events_leave_it_as_the_log_orders_them_whoever_applies_them_when() {
    let pool = database().await;
    let endpoint = Uuid::now_v7();
    let create = created(endpoint);
    let disable = updated(endpoint, Some(false), None);
    let move_url = updated(endpoint, None, Some("https://hooks.example.com/b"));
    assert!(apply(&pool, &create).await.unwrap().changed());
    // Ingest applied the newer change first; the projector's older one comes after.
    assert!(apply(&pool, &move_url).await.unwrap().changed());
    assert!(apply(&pool, &disable).await.unwrap().changed());
    let now = row(&pool, endpoint).await;
    assert_eq!(now.url, "https://hooks.example.com/b");
    assert!(
        now.enabled,
        "the older disable must not undo the newer state"
    );
    // Applying any of them again changes nothing.
    for again in [&create, &move_url, &disable] {
        assert!(!apply(&pool, again).await.unwrap().changed());
    }

    let rotate = event(
        endpoint,
        WebhookSecretRotated {
            endpoint_id: endpoint.to_string(),
            requested_by: "client-a".into(),
            sealed_secret: "v1.second".into(),
            previous_valid_until_micros: 1_900_000_000_000_000,
        },
    );
    apply(&pool, &rotate).await.unwrap();
    let now = row(&pool, endpoint).await;
    assert_eq!(now.sealed_secret, "v1.second");
    assert_eq!(now.previous_sealed_secret.as_deref(), Some("v1.first"));

    let disabled = event(
        endpoint,
        WebhookEndpointDisabled {
            endpoint_id: endpoint.to_string(),
            reason: "failing".into(),
            failing_since_micros: 1,
        },
    );
    apply(&pool, &disabled).await.unwrap();
    let now = row(&pool, endpoint).await;
    assert!(!now.enabled);
    assert_eq!(now.disabled_reason.as_deref(), Some("failing"));
    // The owner enabling it again clears the reason.
    apply(&pool, &updated(endpoint, Some(true), None))
        .await
        .unwrap();
    let now = row(&pool, endpoint).await;
    assert!(now.enabled);
    assert_eq!(now.disabled_reason, None);

    let deleted = event(
        endpoint,
        WebhookEndpointDeleted {
            endpoint_id: endpoint.to_string(),
            requested_by: "client-a".into(),
        },
    );
    apply(&pool, &deleted).await.unwrap();
    apply(&pool, &updated(endpoint, Some(true), None))
        .await
        .unwrap();
    let now = row(&pool, endpoint).await;
    assert!(now.deleted && !now.enabled, "deleting is final");

    // A redelivery request is an audit record of the endpoint's.
    let redeliver = event(
        endpoint,
        WebhookRedeliveryRequested {
            endpoint_id: endpoint.to_string(),
            requested_by: "ops".into(),
            message_id: None,
            since_micros: Some(0),
        },
    );
    assert!(apply(&pool, &redeliver).await.unwrap().changed());
    let recorded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_events WHERE endpoint_id = $1")
            .bind(endpoint)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(recorded, 9);
}

#[tokio::test]
async fn failed_attempts_start_the_failing_time_and_a_delivery_ends_it() {
    let pool = database().await;
    let endpoint = Uuid::now_v7();
    apply(&pool, &created(endpoint)).await.unwrap();
    let failed = attempt(endpoint, Some("timeout"));
    assert!(apply(&pool, &failed).await.unwrap().changed());
    assert!(
        !apply(&pool, &failed).await.unwrap().changed(),
        "a duplicate"
    );
    apply(&pool, &attempt(endpoint, Some("status")))
        .await
        .unwrap();
    assert_eq!(
        row(&pool, endpoint).await.failing_since,
        Some(failed.occurred_at)
    );
    let delivered = attempt(endpoint, None);
    apply(&pool, &delivered).await.unwrap();
    assert_eq!(row(&pool, endpoint).await.failing_since, None);
    // A failure older than the delivery, applied late (another partition), starts nothing.
    apply(&pool, &failed_before(&delivered, endpoint))
        .await
        .unwrap();
    assert_eq!(row(&pool, endpoint).await.failing_since, None);
    // Nor does one from before the owner enabled the endpoint again.
    let failing = attempt(endpoint, Some("timeout"));
    apply(&pool, &failing).await.unwrap();
    assert_eq!(
        row(&pool, endpoint).await.failing_since,
        Some(failing.occurred_at)
    );
    let enable = updated(endpoint, Some(true), None);
    apply(&pool, &enable).await.unwrap();
    assert_eq!(row(&pool, endpoint).await.failing_since, None);
    // (Between the delivery and the re-enable, so only the re-enable can rule it out.)
    let mut late = attempt(endpoint, Some("connect"));
    late.occurred_at = failing.occurred_at;
    apply(&pool, &late).await.unwrap();
    assert_eq!(
        row(&pool, endpoint).await.failing_since,
        None,
        "a failure from before the re-enable, applied late, starts nothing"
    );
    let attempts: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_attempts WHERE endpoint_id = $1")
            .bind(endpoint)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(attempts, 6);
}

fn failed_before(delivered: &Event, endpoint: Uuid) -> Event {
    let mut late = attempt(endpoint, Some("connect"));
    late.occurred_at = delivered.occurred_at - time::Duration::seconds(5);
    late
}

#[tokio::test]
async fn an_endpoint_id_that_is_not_a_uuid_is_refused_as_data() {
    let pool = database().await;
    let mut bad = created(Uuid::now_v7());
    if let Payload::WebhookEndpointCreated(created) = &mut bad.payload {
        created.endpoint_id = "not-a-uuid".into();
    }
    let error = apply(&pool, &bad).await.unwrap_err();
    let code = error.as_database_error().and_then(|e| e.code()).unwrap();
    assert!(
        code.starts_with("22"),
        "SQLSTATE {code}: the projector dead-letters class 22"
    );
}
