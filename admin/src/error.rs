//! The admin library's error: what an `imgpipe` command can fail on, each with its cause.

use std::time::Duration;

use imgpipe_infra::InfraError;
use imgpipe_processor::ProcessorError;
use imgpipe_projector::ProjectorError;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Configuration from the environment, the schema registry, the broker or the store.
    #[error(transparent)]
    Infra(#[from] InfraError),
    #[error(transparent)]
    Projector(#[from] ProjectorError),
    #[error("image {image} has no ImageUploaded on {topic}")]
    NotUploaded { image: uuid::Uuid, topic: String },
    /// Some requests of a reprocess were appended, then one failed.
    #[error(
        "appended {appended} of {wanted} requests (correlation id {correlation_id}); run again \
         for the rest"
    )]
    ReprocessIncomplete {
        appended: usize,
        wanted: u64,
        correlation_id: String,
        #[source]
        source: InfraError,
    },
    #[error("creating topics")]
    CreatingTopics(#[source] InfraError),
    #[error("creating the bucket")]
    CreatingBucket(#[source] InfraError),
    #[error("applying migrations")]
    Migrating(#[source] ProjectorError),
    #[error("rebuilding the read models")]
    Rebuilding(#[source] ProjectorError),
    #[error("sweeping")]
    Sweeping(#[source] ProjectorError),
    #[error("writing the findings")]
    WritingFindings(#[source] std::io::Error),
    #[error(
        "--delete with --grace {}s could remove the original of an upload still under way; use \
         a grace of at least {}s, or add --force if no upload can be in flight",
        grace.as_secs(),
        minimum.as_secs()
    )]
    GraceTooShort { grace: Duration, minimum: Duration },
    #[error("{text:?}: expected beginning, end, an offset or an RFC 3339 time")]
    Start { text: String },
    #[error("{text:?} is not an RFC 3339 time (e.g. 2026-11-22T06:00:00Z)")]
    Time {
        text: String,
        #[source]
        source: time::error::Parse,
    },
    #[error("{text:?} is not a duration like 90s, 15m, 1h or 2d")]
    Duration { text: String },
    #[error("{text:?}: the unit must be s, m, h or d")]
    DurationUnit { text: String },
    #[error("{text:?} is too long")]
    DurationTooLong { text: String },
    #[error("the processor's variant spec (IMGPIPE_PROCESSOR_*)")]
    VariantSpec(#[source] ProcessorError),
    #[error(
        "{client:?} cannot be a client id: it must be non-empty, without , ; = or surrounding \
         spaces"
    )]
    ClientId { client: String },
    /// A minted IMGPIPE_INGEST_API_KEYS entry ingest would refuse.
    #[error("ingest would not read the entry {entry:?}")]
    KeyEntryUnreadable {
        entry: String,
        #[source]
        source: imgpipe_ingest::config::ConfigError,
    },
    #[error("the entry {entry:?} does not parse back to client {client:?}")]
    KeyEntryMismatch { entry: String, client: String },
    #[error("reading input or writing output")]
    Io(#[from] std::io::Error),
    #[error("JSON")]
    Json(#[from] serde_json::Error),
    #[error("a blocking task")]
    Task(#[from] tokio::task::JoinError),
}
