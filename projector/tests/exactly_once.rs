//! Batches against the real Postgres: the read-model changes and the positions commit
//! together, a batch delivered again or against a moved position changes nothing, a poison
//! record is rejected without blocking its batch, and of two writers racing on one position
//! exactly one wins.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use imgpipe_infra::registry::EventCodec;
use imgpipe_infra::{DatabaseConfig, FromEnv};
use imgpipe_projector::batch::{Applier, ApplyMode, BatchOutcome, Rejects};
use imgpipe_projector::positions::{self, PositionMap};
use imgpipe_projector::{db, rebuild};
use imgpipe_schemas::{Event, ImageProcessed, ImageUploaded, Payload, Producer, Variant};
use rdkafka::message::OwnedMessage;
use rdkafka::Timestamp;
use sqlx::PgPool;
use uuid::Uuid;

const TOPIC: &str = "imgpipe.events";

async fn database() -> (DatabaseConfig, PgPool) {
    let mut config = DatabaseConfig::from_env().unwrap();
    config.schema = format!("t{}", Uuid::now_v7().simple());
    db::migrate(&config).await.unwrap();
    let pool = config.pool().unwrap();
    (config, pool)
}

async fn drop_schema(config: &DatabaseConfig, pool: &PgPool) {
    sqlx::query(&format!("DROP SCHEMA \"{}\" CASCADE", config.schema))
        .execute(pool)
        .await
        .unwrap();
}

fn event(image_id: Uuid, payload: impl Into<Payload>) -> Event {
    Event::new(
        image_id,
        "req-batch",
        None,
        Producer {
            service: "test".into(),
            version: "0".into(),
        },
        payload,
    )
}

fn uploaded(id: Uuid, metadata: HashMap<String, String>) -> Event {
    event(
        id,
        ImageUploaded {
            owner: "client-a".into(),
            original_key: format!("originals/{id}"),
            format: "jpeg".into(),
            bytes: 10,
            sha256: "ab".repeat(32),
            width: 640,
            height: 480,
            metadata,
        },
    )
}

fn processed(id: Uuid) -> Event {
    event(
        id,
        ImageProcessed {
            spec_version: 1,
            original_width: 640,
            original_height: 480,
            variants: vec![Variant {
                name: "thumb".into(),
                key: format!("variants/{id}/v1/thumb.webp"),
                format: "webp".into(),
                width: 256,
                height: 192,
                bytes: 100,
                sha256: "00".repeat(32),
            }],
            dominant_color: Some("#102030".into()),
            blurhash: None,
            animated: false,
        },
    )
}

fn record(partition: i32, offset: i64, payload: Vec<u8>) -> OwnedMessage {
    OwnedMessage::new(
        Some(payload),
        None,
        TOPIC.into(),
        Timestamp::NotAvailable,
        partition,
        offset,
        None,
    )
}

fn encoded(partition: i32, offset: i64, event: &Event) -> OwnedMessage {
    record(partition, offset, imgpipe_schemas::encode(event).unwrap())
}

fn applier(pool: &PgPool) -> Applier {
    Applier {
        pool: pool.clone(),
        codec: EventCodec::single_object(),
        rejects: Rejects::Count,
        topic: TOPIC.into(),
        mode: ApplyMode::PerEvent,
    }
}

/// Every read-model row, as text, in a stable order.
async fn snapshot(pool: &PgPool) -> Vec<String> {
    let mut rows = Vec::new();
    for table in ["images", "variants", "image_events"] {
        let mut lines: Vec<String> = sqlx::query_scalar(&format!("SELECT t::text FROM {table} t"))
            .fetch_all(pool)
            .await
            .unwrap();
        lines.sort();
        rows.extend(lines.into_iter().map(|line| format!("{table} {line}")));
    }
    rows
}

fn committed(outcome: BatchOutcome) -> imgpipe_projector::BatchReport {
    match outcome {
        BatchOutcome::Committed(report) => report,
        BatchOutcome::Conflict => panic!("unexpected position conflict"),
    }
}

#[tokio::test]
async fn a_batch_applies_once_and_again_changes_nothing() {
    let (config, pool) = database().await;
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    // Postgres refuses a NUL character in jsonb (SQLSTATE 22P05): a poison record.
    let poison = uploaded(
        Uuid::now_v7(),
        HashMap::from([("album".to_string(), "nul\u{0}byte".to_string())]),
    );
    let (up_a, done_a, up_b) = (
        uploaded(a, HashMap::new()),
        processed(a),
        uploaded(b, HashMap::new()),
    );
    let records = vec![
        encoded(0, 0, &up_a),
        encoded(1, 0, &up_b),
        encoded(0, 1, &done_a),
        record(0, 2, b"not an event".to_vec()),
        encoded(1, 1, &poison),
    ];
    let applier = applier(&pool);

    let report = committed(applier.apply(&records, &PositionMap::new()).await.unwrap());
    assert_eq!(report.records, 5);
    assert_eq!(report.positions, PositionMap::from([(0, 3), (1, 2)]));
    assert_eq!(report.applied.get("ImageUploaded"), Some(&2));
    assert_eq!(report.applied.get("ImageProcessed"), Some(&1));
    assert_eq!(report.rejected.get("undecodable-record"), Some(&1));
    assert_eq!(report.rejected.get("database-rejected"), Some(&1));
    assert_eq!(
        positions::load(&pool, TOPIC).await.unwrap(),
        report.positions
    );
    let state = snapshot(&pool).await;
    assert_eq!(state.iter().filter(|r| r.starts_with("images ")).count(), 2);
    assert!(state
        .iter()
        .any(|r| r.starts_with("images ") && r.contains("ready")));

    // Delivered again by a consumer that believes nothing was applied: the positions moved,
    // so the batch is refused whole.
    assert!(matches!(
        applier.apply(&records, &PositionMap::new()).await.unwrap(),
        BatchOutcome::Conflict
    ));
    // At a stale position (the first two records only): refused as well.
    assert!(matches!(
        applier
            .apply(&records, &PositionMap::from([(0, 1), (1, 2)]))
            .await
            .unwrap(),
        BatchOutcome::Conflict
    ));
    // Delivered again after a seek to the stored positions: all below them, nothing to do.
    let again = committed(applier.apply(&records, &report.positions).await.unwrap());
    assert_eq!(again.records, 0);
    // The same events later in the log (a redrive, say): applied late, they change nothing
    // but the position.
    let late = vec![
        encoded(0, 3, &up_a),
        encoded(0, 4, &done_a),
        encoded(1, 2, &up_b),
    ];
    let late = committed(applier.apply(&late, &report.positions).await.unwrap());
    assert_eq!(late.duplicates, 3);
    assert!(late.applied.is_empty());
    assert_eq!(late.positions, PositionMap::from([(0, 5), (1, 3)]));
    assert_eq!(snapshot(&pool).await, state);
    assert_eq!(positions::load(&pool, TOPIC).await.unwrap(), late.positions);

    drop_schema(&config, &pool).await;
}

#[tokio::test]
async fn of_two_writers_racing_on_a_position_exactly_one_commits() {
    let (config, pool) = database().await;
    let records: Vec<OwnedMessage> = (0..20)
        .map(|offset| encoded(0, offset, &uploaded(Uuid::now_v7(), HashMap::new())))
        .collect();
    let first = applier(&pool);
    let second = applier(&pool);
    let start = PositionMap::new();
    let (one, two) = tokio::join!(
        first.apply(&records, &start),
        second.apply(&records, &start)
    );
    let outcomes = [one.unwrap(), two.unwrap()];
    let wins = outcomes
        .iter()
        .filter(|o| matches!(o, BatchOutcome::Committed(_)))
        .count();
    assert_eq!(wins, 1, "{outcomes:?}");
    let images: i64 = sqlx::query_scalar("SELECT count(*) FROM images")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(images, 20);
    assert_eq!(
        positions::load(&pool, TOPIC).await.unwrap(),
        PositionMap::from([(0, 20)])
    );
    drop_schema(&config, &pool).await;
}

#[tokio::test]
async fn every_table_is_either_rebuilt_or_kept() {
    let (config, pool) = database().await;
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT tablename::text FROM pg_tables WHERE schemaname = $1")
            .bind(&config.schema)
            .fetch_all(&pool)
            .await
            .unwrap();
    for table in &tables {
        assert!(
            rebuild::PROJECTIONS.contains(&table.as_str())
                || rebuild::KEPT.contains(&table.as_str())
                || table == "_sqlx_migrations",
            "table {table} is neither a projection nor kept state: classify it in \
             projector/src/rebuild/mod.rs"
        );
    }
    for table in rebuild::PROJECTIONS.iter().chain(rebuild::KEPT) {
        assert!(tables.iter().any(|t| t == table), "{table} is not migrated");
    }
    drop_schema(&config, &pool).await;
}
