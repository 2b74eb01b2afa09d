//! The schedule's rules against the real Postgres (`IMGPIPE_DATABASE_URL`, a schema of the
//! test's own): one claim per endpoint, claims that never overlap, a claim's outcome voided by a
//! redelivery, a redelivery request applied once, and a message attempted before not scheduled
//! again.
#![allow(clippy::unwrap_used)]

use imgpipe_infra::{DatabaseConfig, FromEnv};

use super::*;

async fn database() -> PgPool {
    let mut config = DatabaseConfig::from_env().unwrap();
    config.schema = format!("t{}", Uuid::now_v7().simple());
    imgpipe_projector::db::migrate(&config).await.unwrap();
    config.pool().unwrap()
}

fn message(image_id: Uuid) -> Message {
    Message {
        message_type: "image.ready".into(),
        image_id,
        occurred_at: OffsetDateTime::now_utc(),
        status: "ready".into(),
        variants: Vec::new(),
        failure: None,
    }
}

const LEASE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_claim_takes_one_delivery_per_endpoint_and_never_one_already_claimed() {
    let pool = database().await;
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    for _ in 0..3 {
        let message_id = Uuid::now_v7();
        add(&pool, &[a, b], message_id, "req", &message(Uuid::now_v7()))
            .await
            .unwrap();
    }
    let first = claim(&pool, &[], 10, LEASE).await.unwrap();
    let mut endpoints: Vec<Uuid> = first.iter().map(|due| due.endpoint_id).collect();
    endpoints.sort();
    let mut expected = vec![a, b];
    expected.sort();
    assert_eq!(endpoints, expected, "one per endpoint per claim");
    // A busy endpoint is skipped; what is claimed is not claimed again.
    let second = claim(&pool, &[a], 10, LEASE).await.unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].endpoint_id, b);
    assert!(first
        .iter()
        .all(|due| due.message_id != second[0].message_id));
    // Two claims at once take different rows.
    let (x, y) = tokio::join!(claim(&pool, &[], 10, LEASE), claim(&pool, &[], 10, LEASE));
    let (x, y) = (x.unwrap(), y.unwrap());
    for due in &x {
        assert!(y.iter().all(
            |other| other.message_id != due.message_id || other.endpoint_id != due.endpoint_id
        ));
    }
}

#[tokio::test]
async fn a_redelivery_voids_the_running_claim_and_a_request_applies_once() {
    let pool = database().await;
    let endpoint = Uuid::now_v7();
    let message_id = Uuid::now_v7();
    let body = message(Uuid::now_v7());
    add(&pool, &[endpoint], message_id, "req", &body)
        .await
        .unwrap();
    let claimed = claim(&pool, &[], 10, LEASE).await.unwrap().remove(0);
    // A redelivery arrives while the attempt runs.
    let request = Uuid::now_v7();
    let again = [Redelivery {
        message_id,
        correlation_id: "req".into(),
        message: body.clone(),
    }];
    redeliver(&pool, endpoint, request, &again).await.unwrap();
    // The running attempt ends: its outcome no longer applies to the row.
    assert!(
        !remove(&pool, &claimed).await.unwrap(),
        "voided by the redelivery"
    );
    let later = OffsetDateTime::now_utc() + Duration::from_secs(3600);
    assert!(!retry_at(&pool, &claimed, 2, later).await.unwrap());
    // The redelivery's own attempt is due now, attempt 1, marked.
    let redelivered = claim(&pool, &[], 10, LEASE).await.unwrap().remove(0);
    assert_eq!((redelivered.attempt, redelivered.redelivery), (1, true));
    assert!(retry_at(&pool, &redelivered, 2, later).await.unwrap());
    // The same request consumed again resets nothing; a new one does.
    redeliver(&pool, endpoint, request, &again).await.unwrap();
    assert!(
        claim(&pool, &[], 10, LEASE).await.unwrap().is_empty(),
        "still due later"
    );
    redeliver(&pool, endpoint, Uuid::now_v7(), &again)
        .await
        .unwrap();
    assert_eq!(claim(&pool, &[], 10, LEASE).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_message_attempted_before_is_not_scheduled_again() {
    let pool = database().await;
    let endpoint = Uuid::now_v7();
    let message_id = Uuid::now_v7();
    let image_id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO webhook_attempts
             (event_id, endpoint_id, message_id, message_type, image_id, attempt, redelivery, url,
              duration_ms, attempted_at)
         VALUES ($1, $2, $3, 'image.ready', $4, 1, false, 'https://x/', 1, now())",
    )
    .bind(Uuid::now_v7())
    .bind(endpoint)
    .bind(message_id)
    .bind(image_id)
    .execute(&pool)
    .await
    .unwrap();
    // Its record consumed again (a crash before the offset was stored) schedules nothing.
    add(&pool, &[endpoint], message_id, "req", &message(image_id))
        .await
        .unwrap();
    assert_eq!(due_count(&pool).await.unwrap(), 0);
}
