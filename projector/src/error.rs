#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error(transparent)]
    Infra(#[from] imgpipe_infra::InfraError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("ops endpoint: {0}")]
    Io(#[from] std::io::Error),
    #[error("the read model is {lag} events behind the log: nothing is deleted until the projector catches up")]
    ReadModelBehind { lag: u64 },
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("seek partition {partition}: {source}")]
    Seek {
        partition: i32,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("a blocking task: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("rebuild: {0}")]
    Rebuild(String),
}
