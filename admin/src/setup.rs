//! `imgpipe setup` and `imgpipe migrate`: create what a deployment needs and is missing, with
//! the configuration the services read (`IMGPIPE_*`).

use imgpipe_infra::storage::ObjectStore;
use imgpipe_infra::{kafka, topics, DatabaseConfig, FromEnv, KafkaConfig, S3Config};

use crate::error::AdminError;

/// Topics (redpanda/topics.conf, with `replication_factor` replicas if given) unless
/// `skip_topics`, the bucket, then the database schema. Each exists afterwards, created or not,
/// so it is safe to run again.
pub async fn setup(skip_topics: bool, replication_factor: Option<i32>) -> Result<(), AdminError> {
    if !skip_topics {
        let kafka_config = KafkaConfig::from_env()?;
        let specs = with_replication(topics::bundled()?, replication_factor);
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

/// The topic definitions with `replication_factor` replicas each, when given: topics.conf's
/// count is for a single broker.
fn with_replication(
    specs: Vec<topics::TopicSpec>,
    replication_factor: Option<i32>,
) -> Vec<topics::TopicSpec> {
    specs
        .into_iter()
        .map(|spec| topics::TopicSpec {
            replication: replication_factor.unwrap_or(spec.replication),
            ..spec
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replication_factor_replaces_only_the_replica_count() {
        let bundled = topics::bundled().unwrap();
        assert!(bundled.iter().all(|spec| spec.replication == 1));
        let replicated = with_replication(bundled.clone(), Some(3));
        assert_eq!(replicated.len(), bundled.len());
        for (spec, original) in replicated.iter().zip(&bundled) {
            assert_eq!(spec.replication, 3, "{}", spec.name);
            assert_eq!(
                (&spec.name, spec.partitions, &spec.configs),
                (&original.name, original.partitions, &original.configs)
            );
        }
        assert_eq!(with_replication(bundled.clone(), None), bundled);
    }
}
