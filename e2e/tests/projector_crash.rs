//! About 1,000 events (uploads, results, failures, reprocessing, deletions, orphan audits,
//! exact duplicates and late arrivals) with the projector SIGKILLed at random points and
//! restarted until it has caught up: the read model then equals, row for row, a projection of
//! the same topic made in one uninterrupted run, and the timeline holds every event id once.
//!
//! The projector runs as a process of its own so that it can be killed: this test executable
//! again, running `service_child` below (`imgpipe_e2e::service_process`). The events are
//! synthesized (valid for the contract, made with the schemas crate's types) and appended by
//! the same `EventProducer` ingest uses, keyed by image, so each image's events keep their
//! order on one partition. The seed is printed; `IMGPIPE_TEST_SEED=<seed>` repeats a run's
//! events and kill points.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use imgpipe_e2e::service_process::{ServiceOutput, ServiceProcess};
use imgpipe_infra::consume::RecordPosition;
use imgpipe_infra::kafka::EventProducer;
use imgpipe_infra::registry::EventCodec;
use imgpipe_infra::{kafka, topics, DatabaseConfig, FromEnv, KafkaConfig};
use imgpipe_schemas::{
    Event, ImageDeleted, ImageFailed, ImageProcessed, ImageUploaded, ObjectsDeleted, OrphanRemoved,
    Payload, Producer, ReprocessRequested, Variant,
};
use rdkafka::Message;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

const TARGET_EVENTS: usize = 1_000;
const KILLS: usize = 5;
/// The tables the projector keeps. Compared whole (`to_jsonb` of each row), so a column added
/// later is compared too.
const READ_MODELS: [(&str, &str); 3] = [
    ("images", "image_id"),
    ("variants", "image_id, name"),
    ("image_events", "event_id"),
];
/// Columns left out of the comparison: none. Every column is derived from the event and its
/// place in the log alone (times are the events' `occurred_at`, positions are the records'),
/// so a killed and restarted projector must write exactly what an uninterrupted one writes.
const EXCLUDED_COLUMNS: [&str; 0] = [];

/// The projector process of this test (see `service_process`); the test starts it itself.
#[test]
#[ignore = "the projector process of the crash test; it starts it itself"]
fn service_child() {
    imgpipe_e2e::service_process::run_service_from_env();
}

/// A projector process on `kafka`'s topics and `database`'s schema.
fn start_projector(kafka: &KafkaConfig, database: &DatabaseConfig) -> ServiceProcess {
    let env = [
        ("IMGPIPE_KAFKA_BROKERS", kafka.brokers.clone()),
        ("IMGPIPE_KAFKA_TOPIC_PREFIX", kafka.topic_prefix.clone()),
        ("IMGPIPE_DATABASE_URL", database.url.clone()),
        ("IMGPIPE_DATABASE_SCHEMA", database.schema.clone()),
        ("IMGPIPE_DATABASE_MAX_CONNECTIONS", "4".into()),
        ("IMGPIPE_PROJECTOR_OPS_ADDR", "127.0.0.1:0".into()),
        // Small batches: with the default (500) a run over ~900 events is two or three commits,
        // and a kill drawn at random could land after the last one every time (seen once: all
        // five kills at 896 of 896), leaving nothing mid-way to test.
        ("IMGPIPE_PROJECTOR_BATCH_MAX", "25".into()),
        ("IMGPIPE_LOG_FORMAT", "pretty".into()),
        ("RUST_LOG", "warn".into()),
    ];
    ServiceProcess::start(
        "projector",
        env.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        ServiceOutput::TestStderr,
    )
}

/// One image's events, in the order they are appended.
struct Life {
    image_id: Uuid,
    rng: fastrand::Rng,
    at: time::OffsetDateTime,
    events: Vec<Event>,
}

impl Life {
    fn push(&mut self, payload: impl Into<Payload>) {
        self.at += time::Duration::milliseconds(self.rng.i64(5..3_000));
        let mut event = Event::new(
            self.image_id,
            format!("req-{}", self.image_id),
            self.events.first().map(|e| e.event_id),
            Producer {
                service: "projector-crash-test".into(),
                version: "0".into(),
            },
            payload,
        );
        event.occurred_at = self.at;
        self.events.push(event);
    }

    fn variants(&self, spec: i32) -> Vec<Variant> {
        [("thumb", 256), ("medium", 1024), ("large", 2048)]
            .into_iter()
            .map(|(name, width)| Variant {
                name: name.into(),
                key: format!("variants/{}/v{spec}/{name}.webp", self.image_id),
                format: "webp".into(),
                width,
                height: width * 2 / 3,
                bytes: i64::from(width) * 31,
                sha256: format!("{:064x}", width * spec),
            })
            .collect()
    }

    fn processed(&self, spec: i32) -> ImageProcessed {
        ImageProcessed {
            spec_version: spec,
            original_width: 3000,
            original_height: 2000,
            variants: self.variants(spec),
            dominant_color: Some(format!("#0{spec}0{spec}0{spec}")),
            blurhash: (spec > 1).then(|| "LKO2?U%2Tw=w]~RBVZRi};RPxuwH".into()),
            animated: spec == 3,
        }
    }

    fn failed(&mut self) -> ImageFailed {
        let codes = ["undecodable", "encode-failed", "original-missing"];
        ImageFailed {
            reason_code: codes[self.rng.usize(..codes.len())].into(),
            message: format!("synthesized failure {}", self.rng.u16(..)),
        }
    }

    fn original_key(&self) -> String {
        format!("originals/{}", self.image_id)
    }
}

/// One image's life, drawn at random: mostly upload and a result, sometimes reprocessing,
/// deletion, a result arriving after the deletion, orphan audits, an event for an image never
/// uploaded, and exact duplicates (the same record appended again, as a producer retry does).
fn life(rng: &mut fastrand::Rng, start: time::OffsetDateTime) -> Life {
    let mut life = Life {
        image_id: Uuid::now_v7(),
        rng: fastrand::Rng::with_seed(rng.u64(..)),
        at: start + time::Duration::milliseconds(rng.i64(0..60_000)),
        events: Vec::new(),
    };
    let r = &mut life.rng.clone();
    if r.u8(..100) < 4 {
        // Results for an image whose upload is not in the log.
        let processed = life.processed(1);
        life.push(processed);
        return life;
    }
    life.push(ImageUploaded {
        owner: format!("client-{}", r.u8(0..3)),
        original_key: life.original_key(),
        format: ["jpeg", "png", "webp"][r.usize(..3)].into(),
        bytes: r.i64(1_000..5_000_000),
        sha256: format!("{:064x}", r.u64(..)),
        width: r.i32(1..6000),
        height: r.i32(1..6000),
        metadata: if r.bool() {
            HashMap::from([("album".into(), format!("a{}", r.u8(..)))])
        } else {
            HashMap::new()
        },
    });
    let mut spec = 1;
    let mut ready = false;
    match r.u8(..100) {
        0..=74 => {
            life.push(life.processed(spec));
            ready = true;
        }
        75..=89 => {
            let failed = life.failed();
            life.push(failed);
        }
        _ => {} // still processing when the log ends
    }
    // Up to three reprocessing rounds (a spec change each), each ending processed or failed.
    while spec < 4 && r.bool() {
        spec += 1;
        life.push(ReprocessRequested {
            requested_by: "ops".into(),
            reason: "spec change".into(),
            original_key: life.original_key(),
            format: "jpeg".into(),
        });
        if r.u8(..100) < 80 {
            life.push(life.processed(spec));
            ready = true;
        } else {
            let failed = life.failed();
            life.push(failed);
        }
    }
    if r.bool() {
        let variant_keys: Vec<String> = if ready {
            life.variants(spec).into_iter().map(|v| v.key).collect()
        } else {
            Vec::new()
        };
        life.push(ImageDeleted {
            requested_by: "client-0".into(),
            original_key: life.original_key(),
            variant_keys: variant_keys.clone(),
        });
        match r.u8(..100) {
            // A result that was in flight when the deletion was appended.
            0..=29 => life.push(life.processed(spec)),
            30..=39 => {
                let failed = life.failed();
                life.push(failed);
            }
            _ => {}
        }
        let (keys, missing_keys) = variant_keys.split_at(variant_keys.len().min(2));
        life.push(ObjectsDeleted {
            keys: [vec![life.original_key()], keys.to_vec()].concat(),
            missing_keys: missing_keys.to_vec(),
        });
    }
    for _ in 0..r.usize(0..2) {
        life.push(OrphanRemoved {
            key: format!("variants/{}/v9/stray.webp", life.image_id),
            bytes: r.i64(1..10_000),
            last_modified_micros: r.i64(0..1_800_000_000_000_000),
            reason: "no-event".into(),
        });
    }
    // Exact duplicates: the same event (same id, same bytes) again, right after or later.
    let duplicates = match r.u8(..100) {
        0..=49 => 0,
        50..=84 => 1,
        _ => 2,
    };
    for _ in 0..duplicates {
        let n = life.events.len();
        let copy = life.events[r.usize(..n)].clone();
        let at = r.usize(1..=n);
        life.events
            .insert(at.max(life.position_of(&copy) + 1), copy);
    }
    life
}

impl Life {
    fn position_of(&self, event: &Event) -> usize {
        self.events
            .iter()
            .position(|e| e.event_id == event.event_id)
            .unwrap_or(0)
    }
}

/// Every record of the topic, from offset 0 to the end it has now, in log order per partition.
async fn read_topic(kafka: &KafkaConfig) -> Vec<(RecordPosition, Event)> {
    let topic = kafka.topics().events;
    imgpipe_e2e::read_topic(kafka, &topic)
        .await
        .unwrap()
        .iter()
        .map(|message| {
            let event = imgpipe_schemas::decode(message.payload().unwrap()).unwrap();
            let position = RecordPosition {
                topic: topic.clone(),
                partition: message.partition(),
                offset: message.offset(),
            };
            (position, event)
        })
        .collect()
}

/// Each read-model table's rows as JSON objects, keyed by the table's primary key.
async fn tables(pool: &PgPool, schema: &str) -> BTreeMap<&'static str, Vec<Value>> {
    let mut tables = BTreeMap::new();
    for (table, key) in READ_MODELS {
        let rows: Vec<(Value,)> = sqlx::query_as(&format!(
            "SELECT to_jsonb(t) FROM \"{schema}\".{table} t ORDER BY {key}"
        ))
        .fetch_all(pool)
        .await
        .unwrap();
        let rows = rows
            .into_iter()
            .map(|(mut row,)| {
                for column in EXCLUDED_COLUMNS {
                    row.as_object_mut().unwrap().remove(column);
                }
                row
            })
            .collect();
        tables.insert(table, rows);
    }
    tables
}

async fn timeline_rows(pool: &PgPool, schema: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM \"{schema}\".image_events"))
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_projector_killed_at_random_points_ends_with_the_read_model_of_an_uninterrupted_run() {
    let seed = std::env::var("IMGPIPE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("seed {seed} (IMGPIPE_TEST_SEED={seed} repeats the events and kill points)");
    let mut rng = fastrand::Rng::with_seed(seed);

    imgpipe_infra::telemetry::init(&imgpipe_infra::telemetry::LogConfig {
        format: "pretty".into(),
    });
    let namespace = format!("t{}", Uuid::now_v7().simple());
    let mut kafka = KafkaConfig::from_env().unwrap();
    kafka.topic_prefix = format!("{namespace}.");
    kafka::ensure_topics(&kafka, &topics::bundled().unwrap())
        .await
        .expect("creating topics (is the stack up?)");
    let mut crashed = DatabaseConfig::from_env().unwrap();
    crashed.schema = namespace.clone();
    crashed.max_connections = 2;
    let mut reference = crashed.clone();
    reference.schema = format!("{namespace}_reference");
    for database in [&crashed, &reference] {
        imgpipe_projector::db::migrate(database).await.unwrap();
    }

    // The events, each image's in order, the images interleaved at random.
    let start = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    let mut lives: Vec<VecDeque<Event>> = Vec::new();
    let mut total = 0;
    while total < TARGET_EVENTS {
        let life = life(&mut rng, start);
        total += life.events.len();
        lives.push(life.events.into());
    }
    let mut log = Vec::with_capacity(total);
    while !lives.is_empty() {
        let pick = rng.usize(..lives.len());
        log.push(lives[pick].pop_front().unwrap());
        if lives[pick].is_empty() {
            lives.swap_remove(pick);
        }
    }
    let distinct: BTreeSet<Uuid> = log.iter().map(|e| e.event_id).collect();
    let images: BTreeSet<Uuid> = log.iter().map(|e| e.image_id).collect();
    let mut by_type: BTreeMap<&str, usize> = BTreeMap::new();
    for event in &log {
        *by_type.entry(event.event_type().as_str()).or_default() += 1;
    }
    eprintln!(
        "{} events ({} distinct) over {} images: {by_type:?}",
        log.len(),
        distinct.len(),
        images.len()
    );
    assert!(log.len() > distinct.len(), "the log has exact duplicates");
    let producer =
        EventProducer::new(&kafka, "projector-crash-test", EventCodec::single_object()).unwrap();
    for event in &log {
        producer.publish(event).await.unwrap();
    }
    let distinct_count = distinct.len() as i64;

    // Kill points: when the timeline holds a randomly drawn number of rows, plus a random
    // delay, so kills land mid-batch, mid-transaction and between commits.
    let pool = crashed.pool().unwrap();
    let mut thresholds: Vec<i64> = (0..KILLS).map(|_| rng.i64(1..distinct_count)).collect();
    thresholds.sort_unstable();
    let mut kills_mid_way = 0;
    let started = Instant::now();
    for (n, threshold) in thresholds.iter().enumerate() {
        let mut process = start_projector(&kafka, &crashed);
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let rows = timeline_rows(&pool, &crashed.schema).await;
            if rows >= *threshold {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "run {n}: stuck at {rows} of {distinct_count} (seed {seed})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(0..150))).await;
        process.kill();
        let rows = timeline_rows(&pool, &crashed.schema).await;
        eprintln!("kill {n}: at {rows} of {distinct_count} events");
        if rows < distinct_count {
            kills_mid_way += 1;
        }
        // Restart once the killed member's session (10 s) has lapsed: Tansu 0.6 may give a
        // member that rejoins sooner no partitions for minutes (see processor_crash.rs).
        tokio::time::sleep(Duration::from_secs(12)).await;
    }
    assert!(kills_mid_way > 0, "no kill cut a run short (seed {seed})");

    let mut process = start_projector(&kafka, &crashed);
    let deadline = Instant::now() + Duration::from_secs(300);
    while timeline_rows(&pool, &crashed.schema).await < distinct_count {
        assert!(Instant::now() < deadline, "not caught up (seed {seed})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing it may still hold can change the read model: an event changes `images` or
    // `variants` only in the transaction that adds its id to the timeline, and every id is
    // there.
    process.kill();
    eprintln!(
        "caught up after {KILLS} kills ({kills_mid_way} mid-way) in {:?}",
        started.elapsed()
    );

    // The reference: the same topic from offset 0 into a fresh schema, in one run of the
    // projector's own `apply`, no kills. Not `Projector::run`: its consumer group is the one
    // the killed runs committed for, so it would start at their end rather than at 0.
    let records = read_topic(&kafka).await;
    assert_eq!(
        records.len(),
        log.len(),
        "the topic holds every appended record"
    );
    let reference_pool = reference.pool().unwrap();
    for (position, event) in &records {
        let mut tx = reference_pool.begin().await.unwrap();
        imgpipe_projector::db::apply(&mut tx, event, position)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }

    let projected = tables(&pool, &crashed.schema).await;
    let expected = tables(&pool, &reference.schema).await;
    for (table, _) in READ_MODELS {
        let (got, want) = (&projected[table], &expected[table]);
        let first_difference = got.iter().zip(want).position(|(g, w)| g != w);
        assert!(
            got.len() == want.len() && first_difference.is_none(),
            "{table}: {} rows, reference {}; first difference at {first_difference:?}: {:?} vs {:?} (seed {seed})",
            got.len(),
            want.len(),
            first_difference.map(|i| &got[i]),
            first_difference.map(|i| &want[i]),
        );
    }
    let projected_images = projected["images"].len();
    assert!(
        projected_images > 100,
        "images projected: {projected_images}"
    );

    // The timeline: every event id once, exactly the ones appended.
    let (rows, unique): (i64, i64) = sqlx::query_as(&format!(
        "SELECT count(*), count(DISTINCT event_id) FROM \"{}\".image_events",
        crashed.schema
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(rows, unique, "duplicate event ids in the timeline");
    let ids: Vec<(Uuid,)> = sqlx::query_as(&format!(
        "SELECT event_id FROM \"{}\".image_events",
        crashed.schema
    ))
    .fetch_all(&pool)
    .await
    .unwrap();
    let ids: BTreeSet<Uuid> = ids.into_iter().map(|(id,)| id).collect();
    assert_eq!(ids, distinct);

    for schema in [&crashed.schema, &reference.schema] {
        sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .execute(&pool)
            .await
            .unwrap();
    }
}
