use aws_sdk_s3::error::DisplayErrorContext;

/// Any error, kept as the source of one of ours.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Failures talking to the infrastructure. Services wrap these in their own error enums.
#[derive(Debug, thiserror::Error)]
pub enum InfraError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("event encoding: {0}")]
    Schema(#[from] imgpipe_schemas::SchemaError),
    /// Shown with the whole chain of causes: the S3 SDK's own message alone is often just
    /// "service error".
    #[error("object storage {operation} {key}: {}", DisplayErrorContext(.source.as_ref()))]
    Storage {
        operation: &'static str,
        key: String,
        #[source]
        source: BoxError,
        /// True for 404 / NoSuchKey: the object is not there, which retrying will not change.
        not_found: bool,
    },
    #[error("schema registry: {0}")]
    Registry(String),
    #[error("topic definitions: {0}")]
    Topics(String),
    #[error("topic {0} does not exist")]
    NoSuchTopic(String),
    #[error("a blocking Kafka query did not finish")]
    Task(#[source] tokio::task::JoinError),
    #[error("no record of {topic} arrived for {waited:?} with {unread} partitions unread")]
    ReadStalled {
        topic: String,
        waited: std::time::Duration,
        unread: usize,
    },
    #[error("reading or committing the redrive group's position")]
    RedrivePosition(#[source] Box<InfraError>),
    #[error("putting {record} back on {topic}")]
    PuttingBack {
        record: String,
        topic: String,
        #[source]
        source: Box<rdkafka::error::KafkaError>,
    },
    #[error("writing progress")]
    Progress(#[source] std::io::Error),
    #[error("{0:?} is not a dead letter's partition:offset")]
    InvalidLetter(String),
}

impl InfraError {
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            InfraError::Storage {
                not_found: true,
                ..
            }
        )
    }
}
