/// Failures talking to the infrastructure. Services wrap these in their own error enums.
#[derive(Debug, thiserror::Error)]
pub enum InfraError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("event encoding: {0}")]
    Schema(#[from] imgpipe_schemas::SchemaError),
    #[error("object storage {operation} {key}: {message}")]
    Storage {
        operation: &'static str,
        key: String,
        message: String,
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
