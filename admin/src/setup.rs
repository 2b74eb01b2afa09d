//! `imgpipe setup` and `imgpipe migrate`: create what a deployment needs and is missing, with
//! the configuration the services read (`IMGPIPE_*`).

use imgpipe_infra::storage::ObjectStore;
use imgpipe_infra::{kafka, topics, DatabaseConfig, FromEnv, KafkaConfig, S3Config};

use crate::error::AdminError;

/// Topics (redpanda/topics.conf) unless `skip_topics`, the bucket, then the database schema.
/// Each exists afterwards, created or not, so it is safe to run again.
pub async fn setup(skip_topics: bool) -> Result<(), AdminError> {
    if !skip_topics {
        let kafka_config = KafkaConfig::from_env()?;
        let specs = topics::bundled()?;
        kafka::ensure_topics(&kafka_config, &specs)
            .await
            .map_err(AdminError::CreatingTopics)?;
        println!(
            "topics: {}",
            specs
                .iter()
                .map(|s| kafka_config.topic(&s.name))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let store = ObjectStore::connect(&S3Config::from_env()?).await;
    store
        .ensure_bucket()
        .await
        .map_err(AdminError::CreatingBucket)?;
    println!("bucket: {}", store.bucket());
    migrate().await
}

/// Applies pending database migrations.
pub async fn migrate() -> Result<(), AdminError> {
    let database = DatabaseConfig::from_env()?;
    imgpipe_projector::db::migrate(&database)
        .await
        .map_err(AdminError::Migrating)?;
    println!("database schema {}: migrated", database.schema);
    Ok(())
}
