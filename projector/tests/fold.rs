//! The pure fold behind `GET /v1/images/{id}?as_of=` (`imgpipe_schemas::state`), its
//! whole-event form behind `imgpipe replay reprocess` (`ImageHistory`) and the projector's
//! `db::apply` make the same image of the same events, and the timeline keeps each event's
//! payload so the fold can be run from the read model. Against the real Postgres.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};

use imgpipe_infra::consume::RecordPosition;
use imgpipe_infra::{DatabaseConfig, FromEnv};
use imgpipe_projector::db;
use imgpipe_schemas::state::{ImageHistory, ImageState};
use imgpipe_schemas::{Event, EventType, ImageUploaded, Payload, Producer, Variant};
use sqlx::types::Json;
use sqlx::{PgPool, Row};
use time::OffsetDateTime;
use uuid::Uuid;

mod support;

use support::random_payload;

const IMAGES: usize = 60;

/// The `images` row and its variants, as the fold's state.
async fn projected(pool: &PgPool, image_id: Uuid) -> Option<ImageState> {
    let row = sqlx::query(
        "SELECT owner, original_key, status, format, bytes, sha256, width, height, spec_version,
                dominant_color, blurhash, animated, metadata, failure_code, failure_reason, uploaded_at,
                updated_at
         FROM images WHERE image_id = $1",
    )
    .bind(image_id)
    .fetch_optional(pool)
    .await
    .unwrap()?;
    let variants = sqlx::query(
        "SELECT name, object_key, format, width, height, bytes, sha256
         FROM variants WHERE image_id = $1 ORDER BY name",
    )
    .bind(image_id)
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(|v| Variant {
        name: v.get(0),
        key: v.get(1),
        format: v.get(2),
        width: v.get(3),
        height: v.get(4),
        bytes: v.get(5),
        sha256: v.get(6),
    })
    .collect();
    let status: String = row.get("status");
    let Json(metadata): Json<BTreeMap<String, String>> = row.get("metadata");
    let folded_status = [
        imgpipe_schemas::state::Status::Uploaded,
        imgpipe_schemas::state::Status::Processing,
        imgpipe_schemas::state::Status::Ready,
        imgpipe_schemas::state::Status::Failed,
        imgpipe_schemas::state::Status::Deleted,
    ]
    .into_iter()
    .find(|s| s.as_str() == status)
    .unwrap();
    Some(ImageState {
        owner: row.get("owner"),
        original_key: row.get("original_key"),
        status: folded_status,
        format: row.get("format"),
        bytes: row.get("bytes"),
        sha256: row.get("sha256"),
        width: row.get("width"),
        height: row.get("height"),
        spec_version: row.get("spec_version"),
        dominant_color: row.get("dominant_color"),
        blurhash: row.get("blurhash"),
        animated: row.get("animated"),
        metadata,
        failure_code: row.get("failure_code"),
        failure_reason: row.get("failure_reason"),
        uploaded_at: row.get("uploaded_at"),
        updated_at: row.get("updated_at"),
        variants,
    })
}

#[tokio::test]
async fn the_fold_and_the_projection_make_the_same_image_of_random_timelines() {
    let seed = std::env::var("IMGPIPE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("seed {seed} (IMGPIPE_TEST_SEED={seed} repeats this run)");
    let mut rng = fastrand::Rng::with_seed(seed);

    let mut config = DatabaseConfig::from_env().unwrap();
    config.schema = format!("t{}", Uuid::now_v7().simple());
    db::migrate(&config).await.unwrap();
    let pool = config.pool().unwrap();
    let producer = Producer {
        service: "test".into(),
        version: "0".into(),
    };
    let start = OffsetDateTime::from_unix_timestamp(1_795_000_000).unwrap();
    let mut offset = 0;
    let mut uploads_seen = 0;
    for _ in 0..IMAGES {
        let image_id = Uuid::now_v7();
        let mut uploads = 0;
        // Usually an upload first; sometimes events arrive for an image not yet uploaded.
        let mut events = Vec::new();
        let mut at = start;
        if rng.u8(0..5) > 0 {
            uploads += 1;
            events.push(Payload::from(ImageUploaded {
                owner: "client-0".into(),
                original_key: format!("originals/{image_id}"),
                format: "png".into(),
                bytes: 10,
                sha256: "cd".repeat(32),
                width: 10,
                height: 20,
                metadata: HashMap::new(),
            }));
        }
        for _ in 0..rng.usize(0..12) {
            events.push(random_payload(&mut rng, image_id, &mut uploads));
        }
        let mut applied = Vec::new();
        for payload in events {
            at += time::Duration::milliseconds(rng.i64(1..5_000));
            let mut event = Event::new(image_id, "req-fold", None, producer.clone(), payload);
            event.occurred_at = at;
            let position = RecordPosition {
                topic: "imgpipe.events".into(),
                partition: 0,
                offset,
            };
            offset += 1;
            let mut tx = pool.begin().await.unwrap();
            assert!(db::apply(&mut tx, &event, &position)
                .await
                .unwrap()
                .changed());
            tx.commit().await.unwrap();
            applied.push(event);
        }
        uploads_seen += usize::from(uploads > 0);

        let mut folded = ImageState::fold(applied.iter().map(|e| (e.occurred_at, &e.payload)));
        let types: Vec<&str> = applied.iter().map(|e| e.event_type().as_str()).collect();
        assert_eq!(
            ImageHistory::fold(&applied).map(|history| history.image),
            folded,
            "seed {seed}, image {image_id}: {types:?}"
        );
        if let Some(state) = folded.as_mut() {
            state.variants.sort_by(|a, b| a.name.cmp(&b.name));
        }
        assert_eq!(
            projected(&pool, image_id).await,
            folded,
            "seed {seed}, image {image_id}: {types:?}"
        );

        // The timeline keeps each payload as the fold reads it back.
        let stored = sqlx::query(
            r#"SELECT event_id, event_type, payload FROM image_events
               WHERE image_id = $1 ORDER BY "offset""#,
        )
        .bind(image_id)
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(stored.len(), applied.len());
        for (row, event) in stored.iter().zip(&applied) {
            assert_eq!(row.get::<Uuid, _>("event_id"), event.event_id);
            let event_type = EventType::from_name(row.get("event_type")).unwrap();
            let payload =
                Payload::from_json(event_type, row.get::<serde_json::Value, _>("payload")).unwrap();
            assert_eq!(payload, event.payload);
        }
    }
    assert!(uploads_seen > IMAGES / 2, "most timelines have an upload");

    sqlx::query(&format!("DROP SCHEMA \"{}\" CASCADE", config.schema))
        .execute(&pool)
        .await
        .unwrap();
}
