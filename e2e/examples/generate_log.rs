//! Appends a synthetic events log to the events topic of the deployment the `IMGPIPE_*`
//! environment names: what `scripts/bench-replay` rebuilds and replays. Each image lives a
//! realistic life, with the ids the services would give it:
//!
//! - `ImageUploaded` (ingest; a request id as correlation), then its result with the upload as
//!   causation: `ImageProcessed` for most, `ImageFailed` for some, none yet for a few;
//! - for half of the processed ones a `ReprocessRequested` (imgpipe replay; the run's
//!   `replay-<uuid>` correlation, the upload as causation) and its new `ImageProcessed` (the
//!   request as causation), and for some of those an `OrphanRemoved` per variant of the old
//!   spec (the orphan sweep);
//! - for a quarter an `ImageDeleted` (ingest; a new request) and its `ObjectsDeleted`;
//! - a few `OrphanRemoved` of originals no upload announced (an image id with nothing else);
//! - about 1% of the events appended a second time (as a redrive would), later in the log.
//!
//! That is about 3.9 events per image. Images' lives are interleaved (a few thousand under way
//! at a time) with one clock for `occurred_at`, so each image's events are in order and apart
//! in the log. Appended through the services' `EventProducer` and `EventCodec`, keyed by image
//! id, with up to `--in-flight` appends awaiting their acknowledgement.
//!
//! `--events N` (default 1,000,000) records; a topic that already holds at least N records is
//! reused as it is (one with fewer is an error: use a fresh namespace). Either way the
//! partitions' ends are printed on stdout, one `partition next-offset` line each; the rate on
//! stderr.
//!
//! `--into-postgres` appends nothing: it measures what a rebuild does with the log apart from
//! fetching it. Each batch of 2,000 events is encoded as the log holds them (on 6 partitions,
//! keyed by image) and handed to the projector's `Applier` in bulk mode, as `imgpipe rebuild`
//! does: decoding, the positions, the timeline and the read models in one transaction, in the
//! schema `IMGPIPE_DATABASE_SCHEMA` names (migrated first; use a fresh one). It prints the
//! events/s of the applies alone (making the events is not timed) and the peak RSS.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::stream::{FuturesUnordered, StreamExt};
use imgpipe_infra::kafka::EventProducer;
use imgpipe_infra::log_reader::LogReader;
use imgpipe_infra::registry::{EventCodec, RegistryConfig};
use imgpipe_infra::{DatabaseConfig, FromEnv, KafkaConfig};
use imgpipe_projector::batch::{Applier, ApplyMode, BatchOutcome, Rejects};
use imgpipe_projector::positions::PositionMap;
use imgpipe_schemas::{
    Event, ImageDeleted, ImageFailed, ImageProcessed, ImageUploaded, ObjectsDeleted, OrphanRemoved,
    Payload, Producer, ReprocessRequested, Variant,
};
use rdkafka::message::{OwnedMessage, Timestamp};
use rdkafka::Message;
use time::OffsetDateTime;
use uuid::Uuid;

/// Images whose lives are under way at once: how far apart one image's events are in the log.
const LIVES_AT_ONCE: usize = 4096;
const VARIANTS: [(&str, i32); 3] = [("thumb", 256), ("medium", 1024), ("large", 2048)];

struct Args {
    events: u64,
    seed: u64,
    in_flight: usize,
    into_postgres: bool,
}

/// Records per applied batch with `--into-postgres`: the size of the rebuild's batches.
const BATCH: usize = 2_000;
/// Partitions of the events topic (redpanda/topics.conf).
const PARTITIONS: u128 = 6;

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        events: 1_000_000,
        seed: 19,
        in_flight: 20_000,
        into_postgres: false,
    };
    let mut given = std::env::args().skip(1);
    while let Some(flag) = given.next() {
        if flag == "--into-postgres" {
            args.into_postgres = true;
            continue;
        }
        let value = given
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--events" => args.events = value.replace([',', '_'], "").parse()?,
            "--seed" => args.seed = value.parse()?,
            "--in-flight" => args.in_flight = value.parse()?,
            _ => bail!(
                "unknown option {flag} (--events N, --seed S, --in-flight K, --into-postgres)"
            ),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let kafka = KafkaConfig::from_env()?;
    if args.into_postgres {
        return apply_directly(&kafka.topics().events, &args).await;
    }
    let topic = kafka.topics().events;
    let log = LogReader::new(
        &kafka,
        "imgpipe-generate-log",
        "imgpipe-generate-log",
        &topic,
    )?;
    let held = log.ends().await?.records();
    if held >= args.events as i64 {
        eprintln!("{topic} holds {held} records already: reusing them");
    } else if held > 0 {
        bail!(
            "{topic} holds {held} records, fewer than {}: use a fresh namespace",
            args.events
        );
    } else {
        let codec = EventCodec::connect(&RegistryConfig::from_env()?, &topic).await?;
        let producer = EventProducer::new(&kafka, "imgpipe-generate-log", codec)?;
        append(&producer, &args).await?;
    }
    for (partition, span) in log.ends().await?.iter() {
        println!("{partition} {}", span.high);
    }
    Ok(())
}

/// Appends `args.events` events, at most `args.in_flight` unacknowledged at a time.
async fn append(producer: &EventProducer, args: &Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut world = World::new(args.seed, args.events);
    let mut pending = FuturesUnordered::new();
    let mut appended = 0u64;
    // An image's events are handed to the producer in order, and librdkafka keeps the order of
    // one partition's records (idempotence: also across its retries).
    while let Some(event) = world.next_event() {
        while pending.len() >= args.in_flight {
            acknowledged(pending.next().await)?;
            appended += 1;
        }
        pending.push(async move { producer.publish(&event).await });
        if world.emitted % 100_000 == 0 {
            eprintln!(
                "  {} events handed over, {appended} acknowledged",
                world.emitted
            );
        }
    }
    while let Some(result) = pending.next().await {
        acknowledged(Some(result))?;
        appended += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "appended {appended} events of {} images in {seconds:.1} s ({:.0} events/s)",
        world.images,
        appended as f64 / seconds
    );
    Ok(())
}

/// `--into-postgres`: the events applied as a rebuild applies the log, without the broker.
async fn apply_directly(topic: &str, args: &Args) -> anyhow::Result<()> {
    let database = DatabaseConfig::from_env()?;
    imgpipe_projector::db::migrate(&database).await?;
    let applier = Applier {
        pool: database.pool()?,
        codec: EventCodec::reader(&RegistryConfig::default()),
        rejects: Rejects::Count,
        topic: topic.to_string(),
        mode: ApplyMode::Bulk,
    };
    let mut world = World::new(args.seed, args.events);
    let mut next_offset = [0i64; PARTITIONS as usize];
    let mut positions = PositionMap::new();
    let mut applying = Duration::ZERO;
    let mut applied = 0u64;
    loop {
        let mut batch = Vec::with_capacity(BATCH);
        while batch.len() < BATCH {
            let Some(event) = world.next_event() else {
                break;
            };
            batch.push(as_logged(&event, topic, &mut next_offset)?);
        }
        if batch.is_empty() {
            break;
        }
        let started = Instant::now();
        match applier.apply(&batch, &positions).await? {
            BatchOutcome::Committed(_) => {}
            BatchOutcome::Conflict => bail!("the positions moved under the benchmark"),
        }
        applying += started.elapsed();
        for record in &batch {
            positions.insert(record.partition(), record.offset() + 1);
        }
        applied += batch.len() as u64;
        if applied % 100_000 < BATCH as u64 {
            eprintln!("  {applied} events applied");
        }
    }
    let seconds = applying.as_secs_f64();
    println!(
        "applied {applied} events of {} images in {seconds:.1} s ({:.0} events/s), peak RSS {} MiB",
        world.images,
        applied as f64 / seconds,
        peak_rss_kib().unwrap_or(0) / 1024
    );
    Ok(())
}

/// `event` as the log holds it: encoded, keyed by image, on its image's partition at the next
/// offset there.
fn as_logged(event: &Event, topic: &str, next_offset: &mut [i64]) -> anyhow::Result<OwnedMessage> {
    let partition = (event.image_id.as_u128() % PARTITIONS) as usize;
    let offset = next_offset[partition];
    next_offset[partition] += 1;
    Ok(OwnedMessage::new(
        Some(imgpipe_schemas::encode(event)?),
        Some(event.image_id.to_string().into_bytes()),
        topic.to_string(),
        Timestamp::now(),
        partition as i32,
        offset,
        None,
    ))
}

/// This process's peak resident set (VmHWM), in KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn acknowledged<T>(result: Option<Result<T, imgpipe_infra::InfraError>>) -> anyhow::Result<()> {
    result.context("no append in flight")?.context("append")?;
    Ok(())
}

/// The images whose lives are under way, and the clock.
struct World {
    rng: fastrand::Rng,
    lives: Vec<VecDeque<Event>>,
    clock: OffsetDateTime,
    /// One `imgpipe replay reprocess` run's correlation id for all the requests.
    replay_run: String,
    orphan_run: String,
    budget: u64,
    emitted: u64,
    images: u64,
}

impl World {
    fn new(seed: u64, budget: u64) -> Self {
        // Whole seconds, so each `occurred_at` (whole milliseconds on) round-trips Avro's micros.
        let now = OffsetDateTime::now_utc().unix_timestamp();
        Self {
            rng: fastrand::Rng::with_seed(seed),
            lives: Vec::new(),
            clock: OffsetDateTime::from_unix_timestamp(now - budget as i64 / 1000 - 60)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH),
            replay_run: format!("replay-{}", Uuid::now_v7()),
            orphan_run: format!("orphans-{}", Uuid::now_v7()),
            budget,
            emitted: 0,
            images: 0,
        }
    }

    /// The next event of a random life under way (a new life when there are too few).
    fn next_event(&mut self) -> Option<Event> {
        if self.emitted >= self.budget {
            return None;
        }
        while self.lives.len() < LIVES_AT_ONCE {
            let life = self.life();
            self.lives.push(life);
            self.images += 1;
        }
        let pick = self.rng.usize(..self.lives.len());
        let mut event = self.lives[pick].pop_front()?;
        if self.lives[pick].is_empty() {
            self.lives.swap_remove(pick);
        } else if self.rng.u8(..100) == 0 {
            // Appended again later, as a redrive puts a dead letter back.
            let at = self.rng.usize(1..=self.lives[pick].len());
            self.lives[pick].insert(at, event.clone());
        }
        // A copy keeps its first time; anything new takes the clock's.
        self.clock += Duration::from_millis(self.rng.u64(1..3));
        if event.occurred_at == OffsetDateTime::UNIX_EPOCH {
            event.occurred_at = self.clock;
            // A copy queued above was cloned before its time was set: give it the same one.
            for queued in self.lives.get_mut(pick).into_iter().flatten() {
                if queued.event_id == event.event_id {
                    queued.occurred_at = event.occurred_at;
                }
            }
        }
        self.emitted += 1;
        Some(event)
    }

    /// One image's events, in order, their times to be set when they are appended.
    fn life(&mut self) -> VecDeque<Event> {
        let image_id = Uuid::now_v7();
        let mut life = Life {
            image_id,
            events: VecDeque::new(),
        };
        let original_key = format!("originals/{image_id}");
        if self.rng.u8(..100) < 3 {
            life.push(
                "admin",
                &self.orphan_run,
                None,
                OrphanRemoved {
                    key: original_key,
                    bytes: self.rng.i64(10_000..5_000_000),
                    last_modified_micros: 0,
                    reason: "no-event".into(),
                },
            );
            return life.events;
        }
        let request = format!("req-{}", Uuid::now_v7());
        let upload = life.push("ingest", &request, None, self.uploaded(&original_key));
        let roll = self.rng.u8(..100);
        if roll < 90 {
            life.push(
                "processor",
                &request,
                Some(upload),
                self.processed(image_id, 1),
            );
            if self.rng.bool() {
                self.reprocess(&mut life, upload, &original_key);
            }
        } else if roll < 98 {
            let failed = ImageFailed {
                reason_code: "undecodable".into(),
                message: "synthesized: truncated JPEG".into(),
            };
            life.push("processor", &request, Some(upload), failed);
        }
        if self.rng.u8(..4) == 0 {
            let request = format!("req-{}", Uuid::now_v7());
            let keys = life.variant_keys();
            let deleted = ImageDeleted {
                requested_by: "client-bench".into(),
                original_key: original_key.clone(),
                variant_keys: keys.clone(),
            };
            let deletion = life.push("ingest", &request, None, deleted);
            let gone = ObjectsDeleted {
                keys: [vec![original_key], keys].concat(),
                missing_keys: vec![],
            };
            life.push("processor", &request, Some(deletion), gone);
        }
        life.events
    }

    /// A reprocess request, its new result, and for some the old spec's variants swept.
    fn reprocess(&mut self, life: &mut Life, upload: Uuid, original_key: &str) {
        let request = ReprocessRequested {
            requested_by: "ops".into(),
            reason: "spec v2".into(),
            original_key: original_key.into(),
            format: "jpeg".into(),
        };
        let run = self.replay_run.clone();
        let requested = life.push("imgpipe-admin", &run, Some(upload), request);
        let processed = self.processed(life.image_id, 2);
        life.push("processor", &run, Some(requested), processed);
        if self.rng.u8(..10) < 3 {
            for (name, width) in VARIANTS {
                let orphan = OrphanRemoved {
                    key: variant_key(life.image_id, 1, name),
                    bytes: i64::from(width) * 40,
                    last_modified_micros: 0,
                    reason: "unreferenced".into(),
                };
                let run = self.orphan_run.clone();
                life.push("imgpipe-admin", &run, None, orphan);
            }
        }
    }

    fn uploaded(&mut self, original_key: &str) -> ImageUploaded {
        let (width, height) = [(4000, 3000), (1920, 1080), (800, 600)][self.rng.usize(..3)];
        ImageUploaded {
            owner: format!("client-{}", self.rng.u8(..8)),
            original_key: original_key.into(),
            format: "jpeg".into(),
            bytes: self.rng.i64(50_000..8_000_000),
            sha256: format!("{:064x}", self.rng.u128(..)),
            width,
            height,
            metadata: [("album".to_string(), format!("a{}", self.rng.u8(..50)))].into(),
        }
    }

    fn processed(&mut self, image_id: Uuid, spec: i32) -> ImageProcessed {
        ImageProcessed {
            spec_version: spec,
            original_width: 3000,
            original_height: 4000,
            variants: VARIANTS
                .iter()
                .map(|&(name, width)| Variant {
                    name: name.into(),
                    key: variant_key(image_id, spec, name),
                    format: "webp".into(),
                    width,
                    height: width * 4 / 3,
                    bytes: i64::from(width) * self.rng.i64(20..60),
                    sha256: format!("{:064x}", self.rng.u128(..)),
                })
                .collect(),
            dominant_color: Some(format!("#{:06x}", self.rng.u32(..0x100_0000))),
            blurhash: Some("LKO2?U%2Tw=w]~RBVZRi};RPxuwH".into()),
            animated: false,
        }
    }
}

fn variant_key(image_id: Uuid, spec: i32, name: &str) -> String {
    format!("variants/{image_id}/v{spec}/{name}.webp")
}

/// One image's events as they are made.
struct Life {
    image_id: Uuid,
    events: VecDeque<Event>,
}

impl Life {
    /// Adds an event (its time unset until it is appended); its id.
    fn push(
        &mut self,
        service: &str,
        correlation_id: &str,
        causation_id: Option<Uuid>,
        payload: impl Into<Payload>,
    ) -> Uuid {
        let producer = Producer {
            service: service.into(),
            version: "generate-log".into(),
        };
        let mut event = Event::new(
            self.image_id,
            correlation_id,
            causation_id,
            producer,
            payload,
        );
        event.occurred_at = OffsetDateTime::UNIX_EPOCH;
        let id = event.event_id;
        self.events.push_back(event);
        id
    }

    /// The keys of the variants the image has by now.
    fn variant_keys(&self) -> Vec<String> {
        self.events
            .iter()
            .rev()
            .find_map(|e| match &e.payload {
                Payload::ImageProcessed(p) => {
                    Some(p.variants.iter().map(|v| v.key.clone()).collect())
                }
                _ => None,
            })
            .unwrap_or_default()
    }
}
