//! `imgpipe redrive`: put dead letters back on the topic they came from, byte for byte.
//!
//! What has been redriven is the committed offset of the consumer group `imgpipe-redrive` on
//! the dead-letter topic: a run reads from there up to the end the topic had when the run
//! began, and commits a record's offset only after the broker acknowledged its copy. A second
//! run therefore starts after what the first one moved. A crash between the acknowledgement
//! and the commit moves a record twice, which consumers tolerate (delivery is at-least-once and
//! every handler is idempotent). `--dry-run` and `--image` commit nothing: a filtered run must
//! not mark other images' records as moved, so a later unfiltered run moves the filtered
//! image's records again, and the handlers' idempotency makes that harmless.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context};
use imgpipe_infra::consume::dead_letter_headers as dlq;
use imgpipe_infra::registry::{EventCodec, RegistryConfig};
use imgpipe_infra::{FromEnv, KafkaConfig};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::error::AdminError;
use crate::progress::LineSpinner;

/// The consumer group (after the deployment's prefix) whose committed offsets on the
/// dead-letter topic mark what has been redriven.
pub const GROUP: &str = "imgpipe-redrive";

/// Committing every so many moved records bounds what a crashed run moves again.
const COMMIT_EVERY: u64 = 100;

/// How long to wait for the next record of a bounded scan before giving up on the broker.
const READ_STALL: Duration = Duration::from_secs(30);

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Options {
    pub image: Option<Uuid>,
    pub dry_run: bool,
    /// A progress line on stderr every this many records scanned.
    pub progress_every: u64,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct ClassCounts {
    pub scanned: u64,
    pub moved: u64,
}

/// What a run did (or, with `--dry-run`, would have done).
#[derive(Debug, Default)]
pub struct Summary {
    pub dry_run: bool,
    pub image: Option<Uuid>,
    pub scanned: u64,
    pub moved: u64,
    pub skipped_by_filter: u64,
    /// The same original record dead-lettered by several consumer groups: one copy back on
    /// its topic reaches every group again, so it moves once.
    pub skipped_duplicates: u64,
    /// Dead letters without a `dlq-original-topic` header: nowhere to put them back.
    pub skipped_without_origin: u64,
    pub by_error_class: BTreeMap<String, ClassCounts>,
    /// Whether the group's position was committed (never for `--dry-run` or `--image`).
    pub committed: bool,
    /// One line per record moved (or that would move).
    pub records: Vec<Value>,
}

impl Summary {
    pub fn to_json(&self) -> Value {
        let classes: serde_json::Map<String, Value> = self
            .by_error_class
            .iter()
            .map(|(class, counts)| {
                (
                    class.clone(),
                    json!({ "scanned": counts.scanned, "moved": counts.moved }),
                )
            })
            .collect();
        json!({
            "dry_run": self.dry_run,
            "image": self.image,
            "scanned": self.scanned,
            "moved": self.moved,
            "skipped_by_filter": self.skipped_by_filter,
            "skipped_duplicates": self.skipped_duplicates,
            "skipped_without_origin": self.skipped_without_origin,
            "by_error_class": classes,
            "committed": self.committed,
            "records": self.records,
        })
    }

    pub fn write_table(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let verb = if self.dry_run { "would move" } else { "moved" };
        for record in &self.records {
            writeln!(
                out,
                "{verb} {}/{}@{} -> {}/{}@{} key={} class={} group={}",
                record["dlq_topic"].as_str().unwrap_or_default(),
                record["dlq_partition"],
                record["dlq_offset"],
                record["original_topic"].as_str().unwrap_or_default(),
                record["original_partition"].as_str().unwrap_or("?"),
                record["original_offset"].as_str().unwrap_or("?"),
                record["key"].as_str().unwrap_or("-"),
                record["error_class"].as_str().unwrap_or_default(),
                record["consumer_group"].as_str().unwrap_or("-"),
            )?;
        }
        if self.dry_run {
            writeln!(out, "dry run: nothing was moved or committed")?;
        }
        let rows = [
            ("scanned", self.scanned),
            (verb, self.moved),
            ("skipped, other images", self.skipped_by_filter),
            ("skipped, duplicates", self.skipped_duplicates),
            ("skipped, no origin", self.skipped_without_origin),
        ];
        for (label, count) in rows {
            writeln!(out, "{label:<24}{count:>8}")?;
        }
        if !self.by_error_class.is_empty() {
            writeln!(out, "{:<24}{:>8}{:>12}", "error class", "scanned", verb)?;
            for (class, counts) in &self.by_error_class {
                writeln!(out, "{class:<24}{:>8}{:>12}", counts.scanned, counts.moved)?;
            }
        }
        writeln!(
            out,
            "position committed: {}",
            if self.committed { "yes" } else { "no" }
        )?;
        Ok(())
    }
}

/// `imgpipe redrive` with the deployment's configuration: progress lines to `progress`, the
/// summary on stdout (one JSON object with `json`).
pub async fn run(
    options: &Options,
    json: bool,
    progress: &mut dyn Write,
) -> Result<Summary, AdminError> {
    let config = KafkaConfig::from_env()?;
    let codec = EventCodec::reader(&RegistryConfig::from_env()?);
    let summary = redrive(&config, &codec, options, progress).await?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", summary.to_json())?;
    } else {
        summary.write_table(&mut out)?;
    }
    Ok(summary)
}

/// `imgpipe replay redrive`: [`run`] with its progress as a spinner on stderr.
pub async fn run_with_spinner(
    image: Option<Uuid>,
    dry_run: bool,
    json: bool,
) -> Result<Summary, AdminError> {
    let options = Options {
        image,
        dry_run,
        progress_every: 1,
    };
    let mut spinner = LineSpinner::new(true);
    let summary = run(&options, json, &mut spinner).await?;
    spinner.finish();
    Ok(summary)
}

/// One dead-letter partition to read: from where the group left off up to where it ended
/// when the run began.
struct PartitionScan {
    partition: i32,
    start: i64,
    end: i64,
}

/// Reads the dead-letter topic from the group's committed position to its end at start, and
/// puts every matching record back on its original topic.
pub async fn redrive(
    config: &KafkaConfig,
    codec: &EventCodec,
    options: &Options,
    progress: &mut dyn Write,
) -> anyhow::Result<Summary> {
    let dead_letter_topic = config.topics().dead_letter;
    let consumer: StreamConsumer = config
        .client_config("imgpipe-redrive")
        .set("group.id", config.group_id(GROUP))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .create()
        .context("creating the dead-letter consumer")?;
    let producer: FutureProducer = config
        .idempotent_producer_config("imgpipe-redrive")
        .create()
        .context("creating the producer")?;
    let produce_timeout = Duration::from_millis(config.produce_timeout_ms);

    let scans = tokio::task::block_in_place(|| plan(&consumer, &dead_letter_topic))?;
    let total: i64 = scans.iter().map(|s| s.end - s.start).sum();
    let mut summary = Summary {
        dry_run: options.dry_run,
        image: options.image,
        ..Summary::default()
    };
    let may_commit = !options.dry_run && options.image.is_none();
    writeln!(
        progress,
        "redrive: {total} dead letters to scan on {dead_letter_topic}"
    )?;
    if total == 0 {
        return Ok(summary);
    }
    let mut assignment = TopicPartitionList::new();
    for scan in &scans {
        assignment.add_partition_offset(
            &dead_letter_topic,
            scan.partition,
            Offset::Offset(scan.start),
        )?;
    }
    consumer.assign(&assignment)?;

    let mut remaining: BTreeMap<i32, i64> = scans
        .iter()
        .filter(|s| s.start < s.end)
        .map(|s| (s.partition, s.end))
        .collect();
    // The next offset to commit per partition: everything before it is done.
    let mut done_up_to: BTreeMap<i32, i64> = BTreeMap::new();
    let mut moved_origins: HashSet<(String, String, String)> = HashSet::new();
    let mut moved_since_commit = 0u64;
    while !remaining.is_empty() {
        let message = match tokio::time::timeout(READ_STALL, consumer.recv()).await {
            Ok(message) => message.context("reading a dead letter")?,
            Err(_) => bail!(
                "no dead letter arrived for {READ_STALL:?} with {} partitions unread",
                remaining.len()
            ),
        };
        let partition = message.partition();
        let Some(&end) = remaining.get(&partition) else {
            continue;
        };
        if message.offset() >= end {
            continue;
        }
        if message.offset() + 1 >= end {
            remaining.remove(&partition);
        }
        summary.scanned += 1;
        let outcome = handle(&message, codec, options, &mut moved_origins).await;
        let class = header_text(&message, dlq::ERROR_CLASS).unwrap_or_else(|| "unknown".into());
        let counts = summary.by_error_class.entry(class).or_default();
        counts.scanned += 1;
        match outcome {
            Outcome::Move(record) => {
                if !options.dry_run {
                    let result = put_back(&producer, &message, &record, produce_timeout).await;
                    if let Err(error) = result {
                        if may_commit {
                            commit(&consumer, &dead_letter_topic, &done_up_to)?;
                        }
                        return Err(error);
                    }
                    moved_since_commit += 1;
                }
                counts.moved += 1;
                summary.moved += 1;
                summary.records.push(record.to_json(&message));
            }
            Outcome::OtherImage => summary.skipped_by_filter += 1,
            Outcome::Duplicate => summary.skipped_duplicates += 1,
            Outcome::NoOrigin => summary.skipped_without_origin += 1,
        }
        done_up_to.insert(partition, message.offset() + 1);
        if may_commit && moved_since_commit >= COMMIT_EVERY {
            commit(&consumer, &dead_letter_topic, &done_up_to)?;
            moved_since_commit = 0;
        }
        if options.progress_every > 0 && summary.scanned % options.progress_every == 0 {
            writeln!(
                progress,
                "redrive: {}/{total} scanned, {} {}",
                summary.scanned,
                summary.moved,
                if options.dry_run {
                    "would move"
                } else {
                    "moved"
                }
            )?;
        }
    }
    if may_commit {
        commit(&consumer, &dead_letter_topic, &done_up_to)?;
        summary.committed = true;
    }
    Ok(summary)
}

/// Where the run starts and ends on each partition of the dead-letter topic.
fn plan(consumer: &StreamConsumer, topic: &str) -> anyhow::Result<Vec<PartitionScan>> {
    let partitions = crate::events::partitions_of(consumer, topic)?;
    let mut wanted = TopicPartitionList::new();
    for &partition in &partitions {
        wanted.add_partition(topic, partition);
    }
    let committed = consumer
        .committed_offsets(wanted, METADATA_TIMEOUT)
        .context("reading the redrive group's committed offsets")?;
    let mut scans = Vec::new();
    for partition in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, METADATA_TIMEOUT)
            .with_context(|| format!("reading watermarks of {topic}/{partition}"))?;
        let resume = committed
            .find_partition(topic, partition)
            .and_then(|p| match p.offset() {
                Offset::Offset(n) => Some(n),
                _ => None,
            });
        let start = resume.unwrap_or(low).clamp(low, high);
        scans.push(PartitionScan {
            partition,
            start,
            end: high,
        });
    }
    Ok(scans)
}

fn commit(
    consumer: &StreamConsumer,
    topic: &str,
    done_up_to: &BTreeMap<i32, i64>,
) -> anyhow::Result<()> {
    if done_up_to.is_empty() {
        return Ok(());
    }
    let mut offsets = TopicPartitionList::new();
    for (&partition, &next) in done_up_to {
        offsets.add_partition_offset(topic, partition, Offset::Offset(next))?;
    }
    tokio::task::block_in_place(|| consumer.commit(&offsets, CommitMode::Sync))
        .context("committing the redrive position")
}

enum Outcome {
    Move(Origin),
    OtherImage,
    Duplicate,
    NoOrigin,
}

/// Where a dead letter came from, by its `dlq-*` headers.
struct Origin {
    topic: String,
    partition: Option<String>,
    offset: Option<String>,
}

impl Origin {
    fn to_json(&self, message: &BorrowedMessage<'_>) -> Value {
        json!({
            "dlq_topic": message.topic(),
            "dlq_partition": message.partition(),
            "dlq_offset": message.offset(),
            "original_topic": self.topic,
            "original_partition": self.partition,
            "original_offset": self.offset,
            "key": message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            "error_class": header_text(message, dlq::ERROR_CLASS),
            "error_message": header_text(message, dlq::ERROR_MESSAGE),
            "consumer_group": header_text(message, dlq::CONSUMER_GROUP),
        })
    }
}

async fn handle(
    message: &BorrowedMessage<'_>,
    codec: &EventCodec,
    options: &Options,
    moved_origins: &mut HashSet<(String, String, String)>,
) -> Outcome {
    let Some(topic) = header_text(message, dlq::ORIGINAL_TOPIC) else {
        return Outcome::NoOrigin;
    };
    let origin = Origin {
        topic,
        partition: header_text(message, dlq::ORIGINAL_PARTITION),
        offset: header_text(message, dlq::ORIGINAL_OFFSET),
    };
    if let Some(image) = options.image {
        if !is_about(message, codec, image).await {
            return Outcome::OtherImage;
        }
    }
    if let (Some(partition), Some(offset)) = (&origin.partition, &origin.offset) {
        let first = moved_origins.insert((origin.topic.clone(), partition.clone(), offset.clone()));
        if !first {
            return Outcome::Duplicate;
        }
    }
    Outcome::Move(origin)
}

/// Events are keyed by image id; a record keyed otherwise still counts when its value decodes
/// to an event of the image.
async fn is_about(message: &BorrowedMessage<'_>, codec: &EventCodec, image: Uuid) -> bool {
    if message.key() == Some(image.to_string().as_bytes()) {
        return true;
    }
    match codec.decode(message.payload().unwrap_or_default()).await {
        Ok(Ok(event)) => event.image_id == image,
        _ => false,
    }
}

/// Produces the original record (key, value, its own headers without the `dlq-*` ones) to
/// its original topic and waits for the acknowledgement.
async fn put_back(
    producer: &FutureProducer,
    message: &BorrowedMessage<'_>,
    origin: &Origin,
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut headers = OwnedHeaders::new();
    if let Some(original) = message.headers() {
        for header in original.iter().filter(|h| !h.key.starts_with("dlq-")) {
            headers = headers.insert(Header {
                key: header.key,
                value: header.value,
            });
        }
    }
    let mut record = FutureRecord::to(&origin.topic).headers(headers);
    if let Some(key) = message.key() {
        record = record.key(key);
    }
    if let Some(payload) = message.payload() {
        record = record.payload(payload);
    }
    producer
        .send(record, Timeout::After(timeout))
        .await
        .map(|_| ())
        .map_err(|(error, _)| error)
        .with_context(|| {
            format!(
                "putting {}/{}@{} back on {}",
                message.topic(),
                message.partition(),
                message.offset(),
                origin.topic
            )
        })
}

fn header_text(message: &BorrowedMessage<'_>, key: &str) -> Option<String> {
    message.headers().and_then(|headers| {
        headers
            .iter()
            .find(|h| h.key == key)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(dry_run: bool) -> Summary {
        let mut by_error_class = BTreeMap::new();
        by_error_class.insert(
            "undecodable-record".to_string(),
            ClassCounts {
                scanned: 2,
                moved: 1,
            },
        );
        Summary {
            dry_run,
            scanned: 2,
            moved: 1,
            skipped_duplicates: 1,
            by_error_class,
            committed: !dry_run,
            ..Summary::default()
        }
    }

    #[test]
    fn the_table_says_what_moved_or_would_move() {
        let mut out = Vec::new();
        summary(true).write_table(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("dry run: nothing was moved"), "{text}");
        assert!(text.contains("would move"), "{text}");
        assert!(text.contains("position committed: no"), "{text}");

        let mut out = Vec::new();
        summary(false).write_table(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("would move"), "{text}");
        assert!(text.contains("undecodable-record"), "{text}");
        assert!(text.contains("position committed: yes"), "{text}");
    }

    #[test]
    fn the_json_counts_by_error_class() {
        let json = summary(false).to_json();
        assert_eq!(json["moved"], 1);
        assert_eq!(json["skipped_duplicates"], 1);
        assert_eq!(json["by_error_class"]["undecodable-record"]["scanned"], 2);
        assert_eq!(json["committed"], true);
    }
}
