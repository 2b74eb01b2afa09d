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

use imgpipe_infra::consume::dead_letter_headers as dlq;
use imgpipe_infra::log_reader::{header, LogReader, StartAt};
use imgpipe_infra::registry::{EventCodec, RegistryConfig};
use imgpipe_infra::InfraError;
use imgpipe_infra::{FromEnv, KafkaConfig};
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::Message;
use serde_json::{json, Value};

use crate::report::Report;
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
    crate::report::print(&summary, json)?;
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

/// Reads the dead-letter topic from the group's committed position to its end at start, and
/// puts every matching record back on its original topic.
pub async fn redrive(
    config: &KafkaConfig,
    codec: &EventCodec,
    options: &Options,
    progress: &mut dyn Write,
) -> Result<Summary, AdminError> {
    let dead_letter_topic = config.topics().dead_letter;
    let reader = LogReader::new(config, "imgpipe-redrive", GROUP, &dead_letter_topic)?;
    let ends = reader.ends().await?;
    let committed = reader
        .committed()
        .await
        .map_err(AdminError::RedrivePosition)?;
    let total: i64 = ends.lag(&committed).iter().map(|(_, lag)| lag).sum();
    let mut run = Run {
        producer: config
            .idempotent_producer_config("imgpipe-redrive")
            .create()
            .map_err(InfraError::from)?,
        produce_timeout: Duration::from_millis(config.produce_timeout_ms),
        may_commit: !options.dry_run && options.image.is_none(),
        done_up_to: BTreeMap::new(),
        moved_origins: HashSet::new(),
        moved_since_commit: 0,
        summary: Summary {
            dry_run: options.dry_run,
            image: options.image,
            ..Summary::default()
        },
    };
    writeln!(
        progress,
        "redrive: {total} dead letters to scan on {dead_letter_topic}"
    )?;
    if total == 0 {
        return Ok(run.summary);
    }
    let mut letters = reader.scan(&StartAt::Positions(committed), &ends)?;
    loop {
        let message = match tokio::time::timeout(READ_STALL, letters.next()).await {
            Ok(Some(message)) => message?,
            Ok(None) => break,
            Err(_) => {
                return Err(AdminError::ReadStalled {
                    topic: dead_letter_topic,
                    waited: READ_STALL,
                    unread: letters.unfinished(),
                })
            }
        };
        if let Err(error) = run.record(&message, codec, options).await {
            run.commit(&reader).await?;
            return Err(error);
        }
        if run.moved_since_commit >= COMMIT_EVERY {
            run.commit(&reader).await?;
        }
        if options.progress_every > 0 && run.summary.scanned % options.progress_every == 0 {
            let verb = if options.dry_run {
                "would move"
            } else {
                "moved"
            };
            let (scanned, moved) = (run.summary.scanned, run.summary.moved);
            writeln!(
                progress,
                "redrive: {scanned}/{total} scanned, {moved} {verb}"
            )?;
        }
    }
    run.commit(&reader).await?;
    run.summary.committed = run.may_commit;
    Ok(run.summary)
}

/// A run's state between records.
struct Run {
    producer: FutureProducer,
    produce_timeout: Duration,
    /// Whether this run records what it moved (not for `--dry-run` or `--image`).
    may_commit: bool,
    /// The next offset to commit per partition: everything before it is done.
    done_up_to: BTreeMap<i32, i64>,
    moved_origins: HashSet<(String, String, String)>,
    moved_since_commit: u64,
    summary: Summary,
}

impl Run {
    /// Handles one dead letter: counts it, and puts it back unless filtered out, a duplicate,
    /// or a dry run.
    async fn record(
        &mut self,
        message: &OwnedMessage,
        codec: &EventCodec,
        options: &Options,
    ) -> Result<(), AdminError> {
        self.summary.scanned += 1;
        let outcome = handle(message, codec, options, &mut self.moved_origins).await;
        let class = header(message, dlq::ERROR_CLASS).unwrap_or_else(|| "unknown".into());
        let counts = self.summary.by_error_class.entry(class).or_default();
        counts.scanned += 1;
        match outcome {
            Outcome::Move(origin) => {
                if !options.dry_run {
                    put_back(&self.producer, message, &origin, self.produce_timeout).await?;
                    self.moved_since_commit += 1;
                }
                counts.moved += 1;
                self.summary.moved += 1;
                self.summary.records.push(origin.to_json(message));
            }
            Outcome::OtherImage => self.summary.skipped_by_filter += 1,
            Outcome::Duplicate => self.summary.skipped_duplicates += 1,
            Outcome::NoOrigin => self.summary.skipped_without_origin += 1,
        }
        self.done_up_to
            .insert(message.partition(), message.offset() + 1);
        Ok(())
    }

    /// Commits what is done, if this run may.
    async fn commit(&mut self, reader: &LogReader) -> Result<(), AdminError> {
        if self.may_commit {
            reader
                .commit(&self.done_up_to)
                .await
                .map_err(AdminError::RedrivePosition)?;
            self.moved_since_commit = 0;
        }
        Ok(())
    }
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
    fn to_json(&self, message: &OwnedMessage) -> Value {
        json!({
            "dlq_topic": message.topic(),
            "dlq_partition": message.partition(),
            "dlq_offset": message.offset(),
            "original_topic": self.topic,
            "original_partition": self.partition,
            "original_offset": self.offset,
            "key": message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            "error_class": header(message, dlq::ERROR_CLASS),
            "error_message": header(message, dlq::ERROR_MESSAGE),
            "consumer_group": header(message, dlq::CONSUMER_GROUP),
        })
    }
}

async fn handle(
    message: &OwnedMessage,
    codec: &EventCodec,
    options: &Options,
    moved_origins: &mut HashSet<(String, String, String)>,
) -> Outcome {
    let Some(topic) = header(message, dlq::ORIGINAL_TOPIC) else {
        return Outcome::NoOrigin;
    };
    let origin = Origin {
        topic,
        partition: header(message, dlq::ORIGINAL_PARTITION),
        offset: header(message, dlq::ORIGINAL_OFFSET),
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
async fn is_about(message: &OwnedMessage, codec: &EventCodec, image: Uuid) -> bool {
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
    message: &OwnedMessage,
    origin: &Origin,
    timeout: Duration,
) -> Result<(), AdminError> {
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
        .map_err(|(source, _)| AdminError::PuttingBack {
            record: format!(
                "{}/{}@{}",
                message.topic(),
                message.partition(),
                message.offset()
            ),
            topic: origin.topic.clone(),
            source: Box::new(source),
        })
}

impl Report for Summary {
    fn to_json(&self) -> Value {
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

    fn write_table(&self, out: &mut dyn Write) -> std::io::Result<()> {
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
