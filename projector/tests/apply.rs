//! Applying events to the read models, against the real Postgres: every event type, in order,
//! and the same event twice changes nothing.
#![allow(clippy::unwrap_used)]

use imgpipe_infra::consume::RecordPosition;
use imgpipe_infra::{DatabaseConfig, FromEnv};
use imgpipe_projector::db;
use imgpipe_schemas::{
    Event, ImageDeleted, ImageProcessed, ImageUploaded, ObjectsDeleted, OrphanRemoved, Payload,
    Producer, ReprocessRequested, Variant,
};
use sqlx::{PgPool, Row};
use uuid::Uuid;

async fn database() -> (DatabaseConfig, PgPool) {
    let mut config = DatabaseConfig::from_env().unwrap();
    config.schema = format!("t{}", Uuid::now_v7().simple());
    db::migrate(&config).await.unwrap();
    let pool = config.pool().unwrap();
    (config, pool)
}

fn event(image_id: Uuid, payload: impl Into<Payload>) -> Event {
    Event::new(
        image_id,
        "req-apply",
        None,
        Producer {
            service: "test".into(),
            version: "0".into(),
        },
        payload,
    )
}

async fn apply(pool: &PgPool, event: &Event, offset: i64) -> bool {
    apply_outcome(pool, event, offset).await.changed()
}

async fn apply_outcome(pool: &PgPool, event: &Event, offset: i64) -> db::Outcome {
    let position = RecordPosition {
        topic: "imgpipe.events".into(),
        partition: 0,
        offset,
    };
    let mut tx = pool.begin().await.unwrap();
    let outcome = db::apply(&mut tx, event, &position).await.unwrap();
    tx.commit().await.unwrap();
    outcome
}

/// A 300x200 PNG of client-a's, uploaded.
fn png_uploaded(id: Uuid) -> Event {
    event(
        id,
        ImageUploaded {
            owner: "client-a".into(),
            original_key: format!("originals/{id}"),
            format: "png".into(),
            bytes: 10,
            sha256: "ab".repeat(32),
            width: 300,
            height: 200,
            metadata: Default::default(),
        },
    )
}

async fn status(pool: &PgPool, image_id: Uuid) -> String {
    sqlx::query("SELECT status FROM images WHERE image_id = $1")
        .bind(image_id)
        .fetch_one(pool)
        .await
        .unwrap()
        .get(0)
}

async fn variant_count(pool: &PgPool, image_id: Uuid) -> i64 {
    sqlx::query("SELECT count(*) FROM variants WHERE image_id = $1")
        .bind(image_id)
        .fetch_one(pool)
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn an_image_lifecycle_projects_and_replays_idempotently() {
    let (config, pool) = database().await;
    let id = Uuid::now_v7();
    let variant = |name: &str| Variant {
        name: name.into(),
        key: format!("variants/{id}/v1/{name}.webp"),
        format: "webp".into(),
        width: 256,
        height: 160,
        bytes: 100,
        sha256: "00".repeat(32),
    };
    let events = [
        event(
            id,
            ImageUploaded {
                owner: "client-a".into(),
                original_key: format!("originals/{id}"),
                format: "jpeg".into(),
                bytes: 10,
                sha256: "ab".repeat(32),
                width: 2560,
                height: 1600,
                metadata: Default::default(),
            },
        ),
        event(
            id,
            ImageProcessed {
                spec_version: 1,
                original_width: 1600,
                original_height: 2560,
                variants: vec![variant("thumb"), variant("large")],
                dominant_color: Some("#4a6b8c".into()),
                blurhash: Some("LEHV6nWB2yk8pyo0adR*.7kCMdnj".into()),
                animated: false,
            },
        ),
        event(
            id,
            ReprocessRequested {
                requested_by: "operator".into(),
                reason: "test".into(),
                original_key: format!("originals/{id}"),
                format: "jpeg".into(),
            },
        ),
        event(
            id,
            ImageDeleted {
                requested_by: "client-a".into(),
                original_key: format!("originals/{id}"),
                variant_keys: vec![variant("thumb").key, variant("large").key],
            },
        ),
        event(
            id,
            ObjectsDeleted {
                keys: vec![variant("thumb").key],
                missing_keys: vec![variant("large").key],
            },
        ),
        event(
            id,
            OrphanRemoved {
                key: format!("originals/{id}"),
                bytes: 10,
                last_modified_micros: 0,
                reason: "no-event".into(),
            },
        ),
    ];
    let expected_status = [
        "uploaded",
        "ready",
        "processing",
        "deleted",
        "deleted",
        "deleted",
    ];
    let expected_variants = [0, 2, 2, 2, 0, 0];
    for (offset, event) in events.iter().enumerate() {
        assert!(
            apply(&pool, event, offset as i64).await,
            "{:?}",
            event.event_type()
        );
        assert_eq!(status(&pool, id).await, expected_status[offset]);
        assert_eq!(variant_count(&pool, id).await, expected_variants[offset]);
    }
    // The dimensions are the oriented ones once processed.
    let (width, height): (i32, i32) =
        sqlx::query_as("SELECT width, height FROM images WHERE image_id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((width, height), (1600, 2560));

    // Replaying the whole history changes nothing.
    for (offset, event) in events.iter().enumerate() {
        assert!(!apply(&pool, event, offset as i64).await);
    }
    assert_eq!(status(&pool, id).await, "deleted");
    let timeline: i64 = sqlx::query("SELECT count(*) FROM image_events WHERE image_id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(timeline, events.len() as i64);

    sqlx::query(&format!("DROP SCHEMA \"{}\" CASCADE", config.schema))
        .execute(&pool)
        .await
        .unwrap();
}

async fn descriptors(pool: &PgPool, image_id: Uuid) -> (Option<String>, Option<String>) {
    sqlx::query_as("SELECT dominant_color, blurhash FROM images WHERE image_id = $1")
        .bind(image_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn image_processed_stores_the_colour_descriptors() {
    let (config, pool) = database().await;
    let id = Uuid::now_v7();
    let uploaded = png_uploaded(id);
    let processed = |dominant_color: Option<&str>, blurhash: Option<&str>| {
        event(
            id,
            ImageProcessed {
                spec_version: 1,
                original_width: 300,
                original_height: 200,
                variants: Vec::new(),
                dominant_color: dominant_color.map(Into::into),
                blurhash: blurhash.map(Into::into),
                animated: false,
            },
        )
    };
    assert!(apply(&pool, &uploaded, 0).await);
    assert_eq!(descriptors(&pool, id).await, (None, None));

    let described = processed(Some("#c81e1e"), Some("L3N4Lk]TfQ]T|wjtfQjtfQfQfQfQ"));
    assert!(apply(&pool, &described, 1).await);
    let expected = (
        Some("#c81e1e".to_string()),
        Some("L3N4Lk]TfQ]T|wjtfQjtfQfQfQfQ".to_string()),
    );
    assert_eq!(descriptors(&pool, id).await, expected);
    // Applying it again changes nothing.
    assert!(!apply(&pool, &described, 1).await);
    assert_eq!(descriptors(&pool, id).await, expected);

    // A result written before schema v2 has no descriptors: the latest result is what the
    // image reads, so they are cleared rather than left from an older rendering.
    assert!(apply(&pool, &processed(None, None), 2).await);
    assert_eq!(descriptors(&pool, id).await, (None, None));
    assert_eq!(status(&pool, id).await, "ready");

    sqlx::query(&format!("DROP SCHEMA \"{}\" CASCADE", config.schema))
        .execute(&pool)
        .await
        .unwrap();
}

/// The first `ImageProcessed` of an uploaded image reports how long after the upload it turned
/// ready (the projector's upload-to-ready histogram); a later result, the same one again, and a
/// result for an unknown image do not.
#[tokio::test]
async fn only_the_first_result_of_an_upload_reports_its_upload_to_ready_time() {
    let (config, pool) = database().await;
    let id = Uuid::now_v7();
    let mut uploaded = png_uploaded(id);
    // Accepted three seconds ago.
    uploaded.occurred_at -= time::Duration::seconds(3);
    let processed = |image_id: Uuid| {
        event(
            image_id,
            ImageProcessed {
                spec_version: 1,
                original_width: 300,
                original_height: 200,
                variants: Vec::new(),
                dominant_color: None,
                blurhash: None,
                animated: false,
            },
        )
    };
    assert_eq!(
        apply_outcome(&pool, &uploaded, 0).await,
        db::Outcome::Changed
    );
    let first = processed(id);
    match apply_outcome(&pool, &first, 1).await {
        db::Outcome::FirstReady { after_upload } => assert!(
            (3.0..60.0).contains(&after_upload.as_secs_f64()),
            "ready {after_upload:?} after an upload three seconds ago"
        ),
        other => panic!("the first result made the image ready: {other:?}"),
    }
    assert_eq!(
        apply_outcome(&pool, &first, 1).await,
        db::Outcome::Duplicate
    );
    assert_eq!(
        apply_outcome(&pool, &processed(id), 2).await,
        db::Outcome::Changed
    );
    assert_eq!(
        apply_outcome(&pool, &processed(Uuid::now_v7()), 3).await,
        db::Outcome::Changed
    );

    sqlx::query(&format!("DROP SCHEMA \"{}\" CASCADE", config.schema))
        .execute(&pool)
        .await
        .unwrap();
}
