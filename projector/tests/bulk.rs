//! A rebuild's bulk apply (`ApplyMode::Bulk`, `db::bulk`) and the live projector's one event
//! at a time make the same tables of the same log: random timelines of every event type,
//! interleaved over partitions, with events appended twice (next to each other and far
//! apart), a record that does not decode and one Postgres refuses, cut into batches of random
//! sizes. Against the real Postgres.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};

use imgpipe_infra::registry::EventCodec;
use imgpipe_infra::{DatabaseConfig, FromEnv};
use imgpipe_projector::batch::{Applier, ApplyMode, BatchOutcome, Rejects};
use imgpipe_projector::positions::PositionMap;
use imgpipe_projector::{db, BatchReport};
use imgpipe_schemas::{Event, ImageUploaded, Payload, Producer};
use rdkafka::message::OwnedMessage;
use rdkafka::Timestamp;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

mod support;

use support::random_payload;

const TOPIC: &str = "imgpipe.events";
const IMAGES: usize = 150;
const PARTITIONS: i32 = 3;

async fn database() -> (DatabaseConfig, PgPool) {
    let mut config = DatabaseConfig::from_env().unwrap();
    config.schema = format!("t{}", Uuid::now_v7().simple());
    db::migrate(&config).await.unwrap();
    let pool = config.pool().unwrap();
    (config, pool)
}

/// Each image's events in order; the images' timelines interleaved at random, some events
/// appended again. Every record is on its image's partition, as the producer keys them.
fn log(rng: &mut fastrand::Rng) -> Vec<(i32, Vec<u8>)> {
    let producer = Producer {
        service: "test".into(),
        version: "0".into(),
    };
    let start = OffsetDateTime::from_unix_timestamp(1_795_000_000).unwrap();
    let mut lives: Vec<(i32, Vec<Event>)> = Vec::new();
    for n in 0..IMAGES {
        let image_id = Uuid::now_v7();
        let mut uploads = 0;
        let mut payloads = Vec::new();
        if rng.u8(0..6) > 0 {
            uploads += 1;
            payloads.push(random_upload(image_id, &HashMap::new()));
        }
        for _ in 0..rng.usize(0..10) {
            payloads.push(random_payload(rng, image_id, &mut uploads));
        }
        let mut at = start;
        let mut events: Vec<Event> = Vec::new();
        for payload in payloads {
            at += time::Duration::milliseconds(rng.i64(1..5_000));
            let mut event = Event::new(image_id, "req-bulk", None, producer.clone(), payload);
            event.occurred_at = at;
            events.push(event);
        }
        // Some events again: redelivered right away, or redriven after later ones.
        for i in (0..events.len()).rev() {
            if rng.u8(0..8) == 0 {
                let copy = events[i].clone();
                events.insert(rng.usize(i + 1..=events.len()), copy);
            }
        }
        lives.push(((n as i32) % PARTITIONS, events));
    }
    let mut records = Vec::new();
    let mut cursors = vec![0; lives.len()];
    while let Some(pick) = pending(&lives, &cursors, rng) {
        let (partition, events) = &lives[pick];
        records.push((
            *partition,
            imgpipe_schemas::encode(&events[cursors[pick]]).unwrap(),
        ));
        cursors[pick] += 1;
    }
    // Postgres refuses a NUL character in jsonb (SQLSTATE 22P05): its batch falls back to
    // one event at a time. And a record that is no event at all.
    let poison = Uuid::now_v7();
    let metadata = HashMap::from([("album".to_string(), "nul\u{0}byte".to_string())]);
    let poison = Event::new(
        poison,
        "req-bulk",
        None,
        producer,
        random_upload(poison, &metadata),
    );
    let at = rng.usize(..records.len());
    records.insert(at, (0, imgpipe_schemas::encode(&poison).unwrap()));
    let at = rng.usize(..records.len());
    records.insert(at, (1, b"not an event".to_vec()));
    records
}

fn random_upload(image_id: Uuid, metadata: &HashMap<String, String>) -> Payload {
    ImageUploaded {
        owner: "client-0".into(),
        original_key: format!("originals/{image_id}"),
        format: "png".into(),
        bytes: 10,
        sha256: "cd".repeat(32),
        width: 10,
        height: 20,
        metadata: metadata.clone(),
    }
    .into()
}

/// A random image that still has events to append.
fn pending(
    lives: &[(i32, Vec<Event>)],
    cursors: &[usize],
    rng: &mut fastrand::Rng,
) -> Option<usize> {
    let open: Vec<usize> = (0..lives.len())
        .filter(|&i| cursors[i] < lives[i].1.len())
        .collect();
    (!open.is_empty()).then(|| open[rng.usize(..open.len())])
}

/// The records with their offsets in their partitions.
fn messages(log: &[(i32, Vec<u8>)]) -> Vec<OwnedMessage> {
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    log.iter()
        .map(|(partition, payload)| {
            let offset = next.entry(*partition).or_default();
            *offset += 1;
            OwnedMessage::new(
                Some(payload.clone()),
                None,
                TOPIC.into(),
                Timestamp::NotAvailable,
                *partition,
                *offset - 1,
                None,
            )
        })
        .collect()
}

/// Applies `records` in batches of up to `batch_max`, as the rebuild does; the sum of the
/// batches' reports.
async fn apply(
    pool: &PgPool,
    mode: ApplyMode,
    records: &[OwnedMessage],
    rng: &mut fastrand::Rng,
) -> BatchReport {
    let applier = Applier {
        pool: pool.clone(),
        codec: EventCodec::single_object(),
        rejects: Rejects::Count,
        topic: TOPIC.into(),
        mode,
    };
    let mut total = BatchReport::default();
    let mut positions = PositionMap::new();
    let mut rest = records;
    while !rest.is_empty() {
        let (batch, after) = rest.split_at(rng.usize(1..=rest.len().min(300)));
        match applier.apply(batch, &positions).await.unwrap() {
            BatchOutcome::Committed(report) => {
                positions.extend(&report.positions);
                total.add(&report);
            }
            BatchOutcome::Conflict => panic!("unexpected position conflict"),
        }
        rest = after;
    }
    total
}

/// Every read-model row, as text, in a stable order.
async fn snapshot(pool: &PgPool) -> Vec<String> {
    let mut rows = Vec::new();
    for table in ["images", "variants", "image_events", "projection_positions"] {
        let column = if table == "projection_positions" {
            "(topic, partition, next_offset)::text"
        } else {
            "t::text"
        };
        let mut lines: Vec<String> = sqlx::query_scalar(&format!("SELECT {column} FROM {table} t"))
            .fetch_all(pool)
            .await
            .unwrap();
        lines.sort();
        rows.extend(lines.into_iter().map(|line| format!("{table} {line}")));
    }
    rows
}

#[tokio::test]
async fn bulk_and_one_event_at_a_time_make_the_same_tables() {
    let seed = std::env::var("IMGPIPE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("seed {seed} (IMGPIPE_TEST_SEED={seed} repeats this run)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let records = messages(&log(&mut rng));

    let (per_event_config, per_event) = database().await;
    let (bulk_config, bulk) = database().await;
    let one = apply(&per_event, ApplyMode::PerEvent, &records, &mut rng).await;
    let many = apply(&bulk, ApplyMode::Bulk, &records, &mut rng).await;

    let (expected, actual) = (snapshot(&per_event).await, snapshot(&bulk).await);
    assert!(
        expected.iter().any(|r| r.starts_with("variants ")),
        "seed {seed}: some image has variants"
    );
    assert_eq!(actual.len(), expected.len(), "seed {seed}");
    for (a, e) in actual.iter().zip(&expected) {
        assert_eq!(a, e, "seed {seed}");
    }
    assert_eq!(many.records, one.records, "seed {seed}");
    assert_eq!(many.applied, one.applied, "seed {seed}");
    assert_eq!(many.duplicates, one.duplicates, "seed {seed}");
    assert!(one.duplicates > 0, "seed {seed}: the log has duplicates");
    assert_eq!(many.rejected, one.rejected, "seed {seed}");
    assert_eq!(
        one.rejected.values().sum::<u64>(),
        2,
        "seed {seed}: the poison record and the undecodable one, and nothing else"
    );

    for (config, pool) in [(per_event_config, per_event), (bulk_config, bulk)] {
        sqlx::query(&format!("DROP SCHEMA \"{}\" CASCADE", config.schema))
            .execute(&pool)
            .await
            .unwrap();
    }
}
