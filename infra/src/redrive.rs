//! Dead letters: listing those not yet redriven, and putting them back on the topic they came
//! from, byte for byte. `imgpipe redrive` (admin) and the console's operator page both run
//! this, so a redrive from either leaves the same trace.
//!
//! What has been redriven is the committed offset of the consumer group `imgpipe-redrive` on
//! the dead-letter topic: a run reads from there up to the end the topic had when the run
//! began, and commits a record's offset only after the broker acknowledged its copy. A second
//! run therefore starts after what the first one moved. A crash between the acknowledgement
//! and the commit moves a record twice, which consumers tolerate (delivery is at-least-once and
//! every handler is idempotent). A dry run commits nothing. A filtered run (one image, or
//! chosen letters) moves the position only past the records at the head of each partition that
//! it chose: it must not mark a record it did not choose as moved. A chosen record behind one
//! that was not is moved but stays after the position, so a later run moves it again, which the
//! handlers' idempotency makes harmless.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Write;
use std::time::Duration;

use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::Message;
use serde::Serialize;
use uuid::Uuid;

use crate::consume::dead_letter_headers as dlq;
use crate::log_reader::{header, LogReader, PartitionEnds, StartAt, READ_STALL};
use crate::registry::EventCodec;
use crate::{InfraError, KafkaConfig};

/// The consumer group (after the deployment's prefix) whose committed offsets on the
/// dead-letter topic mark what has been redriven.
pub const GROUP: &str = crate::kafka::groups::REDRIVE;

/// Committing every so many moved records bounds what a crashed run moves again.
const COMMIT_EVERY: u64 = 100;

/// One dead letter's place on the dead-letter topic: `partition:offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct LetterId {
    pub partition: i32,
    pub offset: i64,
}

impl std::fmt::Display for LetterId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.partition, self.offset)
    }
}

impl std::str::FromStr for LetterId {
    type Err = InfraError;

    fn from_str(text: &str) -> Result<Self, InfraError> {
        let bad = || InfraError::InvalidLetter(text.chars().take(64).collect());
        let (partition, offset) = text.split_once(':').ok_or_else(bad)?;
        let partition: i32 = partition.parse().map_err(|_| bad())?;
        let offset: i64 = offset.parse().map_err(|_| bad())?;
        if partition < 0 || offset < 0 {
            return Err(bad());
        }
        Ok(Self { partition, offset })
    }
}

/// Which dead letters a run puts back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Selection {
    /// Every one not yet redriven.
    #[default]
    All,
    /// One image's: by key, or by the decoded event's image id.
    Image(Uuid),
    /// These letters.
    Letters(BTreeSet<LetterId>),
}

pub struct Options {
    pub selection: Selection,
    pub dry_run: bool,
    /// A progress line every this many records scanned (0: none).
    pub progress_every: u64,
    /// Stop there: what was moved is committed, the rest waits for another run.
    pub deadline: Option<tokio::time::Instant>,
    /// Keep at most this many records in the summary (the rest are counted).
    pub keep_records: usize,
}

impl Options {
    /// A run with no deadline that keeps every record (the command line's).
    pub fn new(selection: Selection, dry_run: bool, progress_every: u64) -> Self {
        Self {
            selection,
            dry_run,
            progress_every,
            deadline: None,
            keep_records: usize::MAX,
        }
    }
}

/// A dead letter, as its `dlq-*` headers describe it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub dlq_topic: String,
    pub dlq_partition: i32,
    pub dlq_offset: i64,
    pub original_topic: Option<String>,
    pub original_partition: Option<String>,
    pub original_offset: Option<String>,
    pub key: Option<String>,
    /// `dlq-error-class`: an [`imgpipe_schemas::headers::ErrorClass`] as written (kept as
    /// text, so a class a newer worker writes still shows).
    pub error_class: Option<String>,
    pub error_message: Option<String>,
    pub consumer_group: Option<String>,
    /// How many times the worker tried the record before giving up.
    pub attempts: Option<String>,
    /// When the record was dead-lettered (ms since the epoch, the record's timestamp).
    pub dead_lettered_at_ms: Option<i64>,
}

impl DeadLetter {
    pub fn of(message: &OwnedMessage) -> Self {
        Self {
            dlq_topic: message.topic().to_string(),
            dlq_partition: message.partition(),
            dlq_offset: message.offset(),
            original_topic: header(message, dlq::ORIGINAL_TOPIC),
            original_partition: header(message, dlq::ORIGINAL_PARTITION),
            original_offset: header(message, dlq::ORIGINAL_OFFSET),
            key: message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            error_class: header(message, dlq::ERROR_CLASS),
            error_message: header(message, dlq::ERROR_MESSAGE),
            consumer_group: header(message, dlq::CONSUMER_GROUP),
            attempts: header(message, dlq::ATTEMPTS),
            dead_lettered_at_ms: message.timestamp().to_millis(),
        }
    }

    pub fn id(&self) -> LetterId {
        LetterId {
            partition: self.dlq_partition,
            offset: self.dlq_offset,
        }
    }
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct ClassCounts {
    pub scanned: u64,
    pub moved: u64,
}

/// What a run did (or, as a dry run, would have done).
#[derive(Debug, Default)]
pub struct Summary {
    pub dry_run: bool,
    pub image: Option<Uuid>,
    pub scanned: u64,
    pub moved: u64,
    /// Not the image or letters chosen.
    pub skipped_by_filter: u64,
    /// The same original record dead-lettered by several consumer groups: one copy back on
    /// its topic reaches every group again, so it moves once.
    pub skipped_duplicates: u64,
    /// Dead letters without a `dlq-original-topic` header: nowhere to put them back.
    pub skipped_without_origin: u64,
    pub by_error_class: BTreeMap<String, ClassCounts>,
    /// Whether the group's position moved (never for a dry run; for a filtered run, only past
    /// chosen records at the head of a partition).
    pub committed: bool,
    /// Moved, but behind a record not chosen, so still after the position: a later run moves
    /// them again (harmless: consumers are idempotent).
    pub moved_behind: u64,
    /// The run reached its deadline before the end of the topic.
    pub stopped_at_deadline: bool,
    /// The records moved (or that would move), up to `Options::keep_records`.
    pub records: Vec<DeadLetter>,
    /// Records moved (or that would move) beyond those kept.
    pub records_left_out: u64,
}

/// The dead letters not yet redriven: how many, and the first `limit` of them.
#[derive(Debug, Default)]
pub struct Pending {
    pub total: i64,
    pub letters: Vec<DeadLetter>,
}

/// The dead-letter topic as the redrive group stands on it.
struct Position {
    topic: String,
    reader: LogReader,
    ends: PartitionEnds,
    /// The group's committed positions: everything before them was redriven.
    committed: BTreeMap<i32, i64>,
    /// Dead letters after the positions.
    total: i64,
}

impl Position {
    async fn read(config: &KafkaConfig, client_id: &str) -> Result<Self, InfraError> {
        let topic = config.topics().dead_letter;
        let reader = LogReader::new(config, client_id, GROUP, &topic)?;
        let ends = reader.ends().await?;
        let committed = reader
            .committed()
            .await
            .map_err(|e| InfraError::RedrivePosition(Box::new(e)))?;
        let total = ends.lag(&committed).iter().map(|(_, lag)| lag).sum();
        Ok(Self {
            topic,
            reader,
            ends,
            committed,
            total,
        })
    }
}

/// Lists the dead letters after the redrive group's position (at most `limit` of them).
pub async fn pending(config: &KafkaConfig, limit: usize) -> Result<Pending, InfraError> {
    let Position {
        reader,
        ends,
        committed,
        total,
        ..
    } = Position::read(config, "imgpipe-redrive-list").await?;
    let mut pending = Pending {
        total,
        letters: Vec::new(),
    };
    if total == 0 || limit == 0 {
        return Ok(pending);
    }
    let mut letters = reader.scan(&StartAt::Positions(committed), &ends)?;
    while pending.letters.len() < limit {
        match letters.next_within(READ_STALL).await? {
            Some(message) => pending.letters.push(DeadLetter::of(&message)),
            None => break,
        }
    }
    Ok(pending)
}

/// Reads the dead-letter topic from the group's committed position to its end at start, and
/// puts every selected record back on its original topic. Progress lines go to `progress`.
pub async fn redrive(
    config: &KafkaConfig,
    codec: &EventCodec,
    options: &Options,
    progress: &mut (dyn Write + Send),
) -> Result<Summary, InfraError> {
    let Position {
        topic: dead_letter_topic,
        reader,
        ends,
        committed,
        total,
    } = Position::read(config, "imgpipe-redrive").await?;
    let mut run = Run {
        producer: config
            .idempotent_producer_config("imgpipe-redrive")
            .create()?,
        produce_timeout: Duration::from_millis(config.produce_timeout_ms),
        reach: Reach::default(),
        moved_origins: HashSet::new(),
        moved_since_commit: 0,
        summary: Summary {
            dry_run: options.dry_run,
            image: match options.selection {
                Selection::Image(image) => Some(image),
                _ => None,
            },
            ..Summary::default()
        },
    };
    writeln!(
        progress,
        "redrive: {total} dead letters to scan on {dead_letter_topic}"
    )
    .map_err(InfraError::Progress)?;
    if total == 0 {
        return Ok(run.summary);
    }
    let start = StartAt::Positions(committed);
    let mut letters = reader.scan(&start, &until(&ends, &options.selection))?;
    while let Some(message) = letters.next_within(READ_STALL).await? {
        if options
            .deadline
            .is_some_and(|deadline| tokio::time::Instant::now() >= deadline)
        {
            run.summary.stopped_at_deadline = true;
            break;
        }
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
            )
            .map_err(InfraError::Progress)?;
        }
    }
    run.commit(&reader).await?;
    Ok(run.summary)
}

/// Where a scan may stop: chosen letters need no read past the last of them.
fn until(ends: &PartitionEnds, selection: &Selection) -> PartitionEnds {
    let Selection::Letters(letters) = selection else {
        return ends.iter().collect();
    };
    ends.iter()
        .map(|(partition, mut span)| {
            let last = letters
                .iter()
                .filter(|letter| letter.partition == partition)
                .map(|letter| letter.offset.saturating_add(1))
                .max();
            // A letter before the partition's start (gone by retention) reads nothing.
            span.high = last.map_or(span.low, |last| last.max(span.low).min(span.high));
            (partition, span)
        })
        .collect()
}

/// A run's state between records.
struct Run {
    producer: FutureProducer,
    produce_timeout: Duration,
    reach: Reach,
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
    ) -> Result<(), InfraError> {
        self.summary.scanned += 1;
        let letter = DeadLetter::of(message);
        let outcome = classify(&letter, message, codec, options, &mut self.moved_origins).await;
        let class = letter
            .error_class
            .clone()
            .unwrap_or_else(|| "unknown".into());
        let counts = self.summary.by_error_class.entry(class).or_default();
        counts.scanned += 1;
        let chosen = !matches!(outcome, Outcome::NotChosen);
        let moved = matches!(outcome, Outcome::Move(_));
        match outcome {
            Outcome::Move(topic) => {
                if !options.dry_run {
                    put_back(&self.producer, message, &topic, self.produce_timeout).await?;
                    self.moved_since_commit += 1;
                }
                counts.moved += 1;
                self.summary.moved += 1;
                if self.summary.records.len() < options.keep_records {
                    self.summary.records.push(letter);
                } else {
                    self.summary.records_left_out += 1;
                }
            }
            Outcome::NotChosen => self.summary.skipped_by_filter += 1,
            Outcome::Duplicate => self.summary.skipped_duplicates += 1,
            Outcome::NoOrigin => self.summary.skipped_without_origin += 1,
        }
        let passed = self
            .reach
            .pass(message.partition(), message.offset(), chosen);
        if moved && !passed {
            self.summary.moved_behind += 1;
        }
        Ok(())
    }

    /// Commits what is done (a dry run records nothing).
    async fn commit(&mut self, reader: &LogReader) -> Result<(), InfraError> {
        if !self.summary.dry_run && !self.reach.done_up_to.is_empty() {
            reader
                .commit(&self.reach.done_up_to)
                .await
                .map_err(|e| InfraError::RedrivePosition(Box::new(e)))?;
            self.moved_since_commit = 0;
            self.summary.committed = true;
        }
        Ok(())
    }
}

/// How far the position may move: past each partition's records for as long as every one of
/// them was chosen (a record not chosen must not be marked redriven, nor anything after it).
#[derive(Debug, Default)]
struct Reach {
    /// The next offset to commit per partition: everything before it is done.
    done_up_to: BTreeMap<i32, i64>,
    /// Partitions where a record was not chosen: the position stays before it.
    passed_over: BTreeSet<i32>,
}

impl Reach {
    /// Takes the record at `offset` of `partition` into account; whether the position can
    /// move past it.
    fn pass(&mut self, partition: i32, offset: i64, chosen: bool) -> bool {
        if !chosen {
            self.passed_over.insert(partition);
        }
        if self.passed_over.contains(&partition) {
            return false;
        }
        self.done_up_to.insert(partition, offset + 1);
        true
    }
}

enum Outcome {
    /// Back onto this topic.
    Move(String),
    NotChosen,
    Duplicate,
    NoOrigin,
}

async fn classify(
    letter: &DeadLetter,
    message: &OwnedMessage,
    codec: &EventCodec,
    options: &Options,
    moved_origins: &mut HashSet<(String, String, String)>,
) -> Outcome {
    let chosen = match &options.selection {
        Selection::All => true,
        Selection::Image(image) => is_about(message, codec, *image).await,
        Selection::Letters(letters) => letters.contains(&letter.id()),
    };
    if !chosen {
        return Outcome::NotChosen;
    }
    let Some(topic) = letter.original_topic.clone() else {
        return Outcome::NoOrigin;
    };
    if let (Some(partition), Some(offset)) = (&letter.original_partition, &letter.original_offset) {
        let first = moved_origins.insert((topic.clone(), partition.clone(), offset.clone()));
        if !first {
            return Outcome::Duplicate;
        }
    }
    Outcome::Move(topic)
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
    topic: &str,
    timeout: Duration,
) -> Result<(), InfraError> {
    let mut headers = OwnedHeaders::new();
    if let Some(original) = message.headers() {
        for header in original.iter().filter(|h| !h.key.starts_with("dlq-")) {
            headers = headers.insert(Header {
                key: header.key,
                value: header.value,
            });
        }
    }
    let mut record = FutureRecord::to(topic).headers(headers);
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
        .map_err(|(source, _)| InfraError::PuttingBack {
            record: format!(
                "{}/{}@{}",
                message.topic(),
                message.partition(),
                message.offset()
            ),
            topic: topic.to_string(),
            source: Box::new(source),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_reader::Span;

    #[test]
    fn a_letter_id_reads_back_as_itself() {
        let id: LetterId = "2:41".parse().unwrap();
        assert_eq!(
            id,
            LetterId {
                partition: 2,
                offset: 41
            }
        );
        assert_eq!(id.to_string(), "2:41");
        for bad in ["", "2", "2:", ":4", "a:1", "1:b", "1:2:3", "0:-2", "-1:0"] {
            assert!(bad.parse::<LetterId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn chosen_letters_end_the_scan_after_the_last_of_them() {
        let ends: PartitionEnds = [
            (0, Span { low: 0, high: 10 }),
            (1, Span { low: 5, high: 9 }),
            (2, Span { low: 0, high: 3 }),
        ]
        .into_iter()
        .collect();
        let letters = ["0:4", "0:2", "1:20"]
            .iter()
            .map(|text| text.parse().unwrap())
            .collect();
        let until = until(&ends, &Selection::Letters(letters));
        assert_eq!(until.get(0).unwrap().high, 5);
        // Past the end: the end.
        assert_eq!(until.get(1).unwrap().high, 9);
        // None chosen: nothing to read.
        assert_eq!(until.get(2).unwrap().high, 0);
        let all = super::until(&ends, &Selection::All);
        assert_eq!(all.get(2).unwrap().high, 3);
        // A letter before the partition's start (gone by retention), or at the very end of
        // the offsets: clamped to what the partition holds, no overflow.
        let letters = [(1, 2), (0, i64::MAX)]
            .map(|(partition, offset)| LetterId { partition, offset })
            .into();
        let until = super::until(&ends, &Selection::Letters(letters));
        assert_eq!(until.get(1).unwrap().high, 5);
        assert_eq!(until.get(0).unwrap().high, 10);
    }

    #[test]
    fn the_position_never_moves_past_a_record_not_chosen() {
        let mut reach = Reach::default();
        assert!(reach.pass(0, 0, true));
        assert!(reach.pass(0, 1, true));
        assert!(!reach.pass(0, 2, false));
        // Chosen, but behind the one not chosen: it stays after the position.
        assert!(!reach.pass(0, 3, true));
        assert!(reach.pass(1, 7, true));
        assert_eq!(reach.done_up_to, BTreeMap::from([(0, 2), (1, 8)]));
        // Not chosen first: the partition's position does not move at all.
        let mut reach = Reach::default();
        assert!(!reach.pass(0, 5, false));
        assert!(!reach.pass(0, 6, true));
        assert!(reach.done_up_to.is_empty());
    }
}
