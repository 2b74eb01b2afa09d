//! `imgpipe replay reprocess`: make images' variants again with the processor's current spec.
//!
//! A reprocess is an event, not a consumer-group seek: for each selected image the command
//! appends one `ReprocessRequested` (keyed by image id, so it lands on the image's partition
//! behind everything already there; causation: the upload event; correlation: one id for the
//! whole run), and the processor answers it like an upload, with the spec it runs now. The log
//! therefore records who asked for what and why, every image's timeline shows the request
//! and its result, and nothing else (the projector, other consumers) re-reads old records.
//!
//! Which images: the command reads the whole events topic once ([`log::scan`]) and folds it
//! per image, so it selects by the upload records' own timestamps (never the broker's
//! ListOffsets-by-timestamp, which Tansu 0.6 answers wrongly) and knows each image's latest
//! result and deletion even while the read model lags. By default it skips images that are
//! deleted, already have a result of the current spec version, are still waiting for a result
//! (their upload or an earlier request), or failed (`--include-failed` takes those too), so a
//! second identical run appends nothing. `--force` requests again what is not deleted; the
//! processor's deterministic variant keys make that overwrite the same objects with the same
//! bytes.

pub mod log;
mod summary;
pub mod webhooks;

pub use summary::{ImageLine, Summary};

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use imgpipe_infra::kafka::EventProducer;
use imgpipe_infra::log_reader::{LogReader, Scan, StartAt};
use imgpipe_infra::registry::{EventCodec, RegistryConfig};
use imgpipe_infra::{FromEnv, KafkaConfig};
use imgpipe_schemas::{Event, Payload, Producer, ReprocessRequested};
use rdkafka::Message;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

use self::log::{LogState, LoggedImage, Outcome};
use crate::error::AdminError;

/// Requests in flight to the broker at once.
const APPEND_CONCURRENCY: usize = 32;

/// Which images a reprocess is about.
#[derive(Debug, Clone, PartialEq)]
pub enum Selection {
    Image(Uuid),
    /// Uploads whose record timestamp is at or after `from` and before `to`.
    Range {
        from: Option<OffsetDateTime>,
        to: Option<OffsetDateTime>,
    },
    All,
}

impl Selection {
    /// The selection `--image`, `--all`, `--from` and `--to` make (clap lets `--image` and
    /// `--all` come only alone).
    pub fn from_flags(
        image: Option<Uuid>,
        all: bool,
        from: Option<OffsetDateTime>,
        to: Option<OffsetDateTime>,
    ) -> Self {
        match (image, all) {
            (Some(image), _) => Selection::Image(image),
            (None, true) => Selection::All,
            (None, false) => Selection::Range { from, to },
        }
    }

    fn includes(&self, image: &LoggedImage) -> bool {
        let millis = |at: &OffsetDateTime| (at.unix_timestamp_nanos() / 1_000_000) as i64;
        match self {
            Selection::Image(id) => image.image_id == *id,
            Selection::Range { from, to } => {
                from.as_ref()
                    .is_none_or(|from| image.uploaded_at_ms >= millis(from))
                    && to
                        .as_ref()
                        .is_none_or(|to| image.uploaded_at_ms < millis(to))
            }
            Selection::All => true,
        }
    }

    pub(crate) fn describe(&self) -> String {
        let time = |at: &Option<OffsetDateTime>| {
            at.and_then(|at| at.format(&Rfc3339).ok())
                .unwrap_or_else(|| "-".into())
        };
        match self {
            Selection::Image(id) => format!("image {id}"),
            Selection::Range { from, to } => format!("uploaded {} to {}", time(from), time(to)),
            Selection::All => "all images".into(),
        }
    }
}

/// An RFC 3339 time, for `--from` and `--to`.
pub fn parse_time(text: &str) -> Result<OffsetDateTime, AdminError> {
    OffsetDateTime::parse(text, &Rfc3339).map_err(|source| AdminError::Time {
        text: text.to_string(),
        source,
    })
}

/// The spec version the processors run, read (with IMGPIPE_PROCESSOR_VARIANTS, which must be
/// valid) as the processor reads it.
pub fn spec_version_from_env() -> Result<i32, AdminError> {
    let spec = imgpipe_processor::config::ProcessorSettings::from_env()?
        .spec()
        .map_err(AdminError::VariantSpec)?;
    Ok(spec.version)
}

/// Who asks when `--requested-by` does not say: $USER, else "operator".
pub fn default_requester() -> String {
    std::env::var("USER").unwrap_or_else(|_| "operator".into())
}

pub struct ReprocessOptions {
    pub selection: Selection,
    /// The spec version the processors run: an image whose latest result has it is up to date.
    pub spec_version: i32,
    pub reason: String,
    pub requested_by: String,
    pub dry_run: bool,
    /// Request again even when up to date or still waiting; deleted images never.
    pub force: bool,
    pub include_failed: bool,
    /// After appending, follow the log until every request has its result, or this passes.
    pub wait: Option<Duration>,
    pub show_progress: bool,
}

/// Why an image in the selection gets no request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Skip {
    Deleted,
    UpToDate,
    Awaiting,
    Failed,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::Deleted => "deleted",
            Skip::UpToDate => "up-to-date",
            Skip::Awaiting => "awaiting-result",
            Skip::Failed => "failed",
        }
    }
}

/// What to do with one selected image.
pub fn decide(image: &LoggedImage, options: &ReprocessOptions) -> Result<(), Skip> {
    if image.is_deleted() {
        return Err(Skip::Deleted);
    }
    if options.force {
        return Ok(());
    }
    if !image.history.awaiting.is_empty() {
        return Err(Skip::Awaiting);
    }
    match &image.latest() {
        Some(Outcome::Processed { spec_version }) if *spec_version == options.spec_version => {
            Err(Skip::UpToDate)
        }
        Some(Outcome::Failed { .. }) if !options.include_failed => Err(Skip::Failed),
        _ => Ok(()),
    }
}

fn producer() -> Producer {
    Producer {
        service: "imgpipe-admin".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// `imgpipe replay reprocess` with the deployment's configuration: progress on stderr, the
/// summary on stdout (one JSON object with `json`).
pub async fn run(options: &ReprocessOptions, json: bool) -> Result<Summary, AdminError> {
    let config = KafkaConfig::from_env()?;
    let summary = reprocess(&config, &RegistryConfig::from_env()?, options).await?;
    crate::report::print(&summary, json)?;
    Ok(summary)
}

/// Scans the log, selects, and (unless a dry run) appends one `ReprocessRequested` per image
/// that needs one.
pub async fn reprocess(
    config: &KafkaConfig,
    registry: &RegistryConfig,
    options: &ReprocessOptions,
) -> Result<Summary, AdminError> {
    let topic = config.topics().events;
    let state = log::scan(config, &EventCodec::reader(registry), options.show_progress).await?;
    let mut summary = select(&state, options, &topic)?;
    if options.dry_run || summary.requested() == 0 {
        return Ok(summary);
    }

    let events = EventProducer::new(
        config,
        "imgpipe-replay",
        EventCodec::connect(registry, &topic).await?,
    )?;
    // Where the results will be: everything after the log's end before the first append.
    let follow_from = match options.wait {
        Some(_) => {
            let reader = LogReader::new(config, "imgpipe-replay", "imgpipe-replay-reader", &topic)?;
            let ends = reader.ends().await?;
            Some((reader, ends))
        }
        None => None,
    };
    append_requests(&events, &mut summary, options).await?;
    if let (Some(timeout), Some((reader, ends))) = (options.wait, follow_from) {
        let results = reader.follow(&StartAt::End, &ends)?;
        wait_for_results(results, registry, timeout, &mut summary, options).await?;
    }
    Ok(summary)
}

/// The run's plan: every image of the log the selection takes, in log order, with what to do
/// with it; nothing requested yet.
fn select(
    state: &LogState,
    options: &ReprocessOptions,
    topic: &str,
) -> Result<Summary, AdminError> {
    if let Selection::Image(id) = options.selection {
        if !state.images.contains_key(&id) {
            return Err(AdminError::NotUploaded {
                image: id,
                topic: topic.to_string(),
            });
        }
    }
    let mut selected: Vec<&LoggedImage> = state
        .images
        .values()
        .filter(|image| options.selection.includes(image))
        .collect();
    selected.sort_by_key(|image| (image.partition, image.upload_offset));
    Ok(Summary {
        dry_run: options.dry_run,
        selection: options.selection.describe(),
        spec_version: options.spec_version,
        correlation_id: format!("replay-{}", Uuid::now_v7()),
        records_scanned: state.records,
        undecodable_records: state.undecodable,
        images_in_log: state.images.len() as u64,
        images: selected
            .into_iter()
            .map(|image| ImageLine {
                image: image.clone(),
                skipped: decide(image, options).err(),
                request: None,
                result: None,
            })
            .collect(),
        waited: false,
    })
}

/// Appends the requests of every image not skipped, [`APPEND_CONCURRENCY`] at a time, noting
/// each appended one in `summary`.
async fn append_requests(
    events: &EventProducer,
    summary: &mut Summary,
    options: &ReprocessOptions,
) -> Result<(), AdminError> {
    let wanted = summary.requested();
    let requests: Vec<(usize, Event)> = summary
        .images
        .iter()
        .enumerate()
        .filter(|(_, line)| line.skipped.is_none())
        .map(|(index, line)| {
            (
                index,
                request_for(&line.image, &summary.correlation_id, options),
            )
        })
        .collect();
    let bar = crate::progress::bar(wanted, "request", options.show_progress);
    let mut appends = futures::stream::iter(requests)
        .map(|(index, event)| {
            let events = events.clone();
            async move { (index, events.publish(&event).await.map(|_| event.event_id)) }
        })
        .buffer_unordered(APPEND_CONCURRENCY);
    let mut failure = None;
    while let Some((index, appended)) = appends.next().await {
        match appended {
            Ok(event_id) => {
                summary.images[index].request = Some(event_id);
                bar.inc(1);
            }
            Err(error) => failure = Some(error),
        }
    }
    bar.finish();
    let Some(error) = failure else {
        return Ok(());
    };
    let appended = summary
        .images
        .iter()
        .filter(|l| l.request.is_some())
        .count();
    // What was appended is awaiting its result: a rerun skips it and requests the rest.
    Err(AdminError::ReprocessIncomplete {
        appended,
        wanted,
        correlation_id: summary.correlation_id.clone(),
        source: error,
    })
}

fn request_for(image: &LoggedImage, correlation_id: &str, options: &ReprocessOptions) -> Event {
    Event::new(
        image.image_id,
        correlation_id,
        Some(image.history.upload_event_id),
        producer(),
        ReprocessRequested {
            requested_by: options.requested_by.clone(),
            reason: options.reason.clone(),
            original_key: image.history.image.original_key.clone(),
            format: image.history.image.format.clone(),
        },
    )
}

/// Follows the log (from its end before the first request) until every request of the run has
/// its result (the processor names the request as the result's causation), or `timeout` passes.
async fn wait_for_results(
    mut results: Scan,
    registry: &RegistryConfig,
    timeout: Duration,
    summary: &mut Summary,
    options: &ReprocessOptions,
) -> Result<(), AdminError> {
    summary.waited = true;
    let mut open: HashMap<Uuid, usize> = summary
        .images
        .iter()
        .enumerate()
        .filter_map(|(index, line)| line.request.map(|id| (id, index)))
        .collect();
    let codec = EventCodec::reader(registry);
    let bar = crate::progress::bar(open.len() as u64, "results", options.show_progress);
    let deadline = Instant::now() + timeout;
    let mut seen = HashSet::new();
    while !open.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some(message)) = tokio::time::timeout(left, results.next()).await else {
            break;
        };
        let message = message?;
        let Ok(event) = codec.decode(message.payload().unwrap_or_default()).await? else {
            continue;
        };
        let Some(index) = event
            .causation_id
            .and_then(|cause| open.get(&cause).copied())
        else {
            continue;
        };
        let outcome = match &event.payload {
            Payload::ImageProcessed(p) => Outcome::Processed {
                spec_version: p.spec_version,
            },
            Payload::ImageFailed(f) => Outcome::Failed {
                reason_code: f.reason_code.clone(),
            },
            _ => continue,
        };
        if seen.insert(event.causation_id) {
            bar.inc(1);
        }
        if let Some(cause) = event.causation_id {
            open.remove(&cause);
        }
        summary.images[index].result = Some(outcome);
    }
    bar.finish();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::log::testing::logged as image;
    use super::*;

    fn options(force: bool, include_failed: bool) -> ReprocessOptions {
        ReprocessOptions {
            selection: Selection::All,
            spec_version: 2,
            reason: "test".into(),
            requested_by: "op".into(),
            dry_run: false,
            force,
            include_failed,
            wait: None,
            show_progress: false,
        }
    }

    #[test]
    fn decides_who_gets_a_request() {
        let v = |spec_version| Some(Outcome::Processed { spec_version });
        let failed = || {
            Some(Outcome::Failed {
                reason_code: "undecodable".into(),
            })
        };
        let plain = options(false, false);
        assert_eq!(decide(&image(v(1), false, false, 0), &plain), Ok(()));
        assert_eq!(
            decide(&image(v(2), false, false, 0), &plain),
            Err(Skip::UpToDate)
        );
        assert_eq!(
            decide(&image(v(1), true, false, 0), &plain),
            Err(Skip::Awaiting)
        );
        assert_eq!(
            decide(&image(failed(), false, false, 0), &plain),
            Err(Skip::Failed)
        );
        assert_eq!(
            decide(&image(failed(), false, false, 0), &options(false, true)),
            Ok(())
        );
        let forced = options(true, false);
        assert_eq!(decide(&image(v(2), true, false, 0), &forced), Ok(()));
        assert_eq!(
            decide(&image(v(1), false, true, 0), &forced),
            Err(Skip::Deleted)
        );
    }

    #[test]
    fn a_range_includes_its_start_and_excludes_its_end() {
        let t = |ms: i64| {
            Some(OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap())
        };
        let range = Selection::Range {
            from: t(1_000),
            to: t(2_000),
        };
        let at = |ms| image(None, false, false, ms);
        assert!(!range.includes(&at(999)));
        assert!(range.includes(&at(1_000)));
        assert!(range.includes(&at(1_999)));
        assert!(!range.includes(&at(2_000)));
        let open_ended = Selection::Range {
            from: t(1_000),
            to: None,
        };
        assert!(open_ended.includes(&at(i64::MAX)));
        assert!(parse_time("2026-11-22T06:00:00Z").is_ok());
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn the_flags_make_one_selection() {
        let id = Uuid::now_v7();
        let from = Some(OffsetDateTime::UNIX_EPOCH);
        assert_eq!(
            Selection::from_flags(Some(id), false, None, None),
            Selection::Image(id)
        );
        assert_eq!(
            Selection::from_flags(None, true, None, None),
            Selection::All
        );
        assert_eq!(
            Selection::from_flags(None, false, from, None),
            Selection::Range { from, to: None }
        );
    }
}
