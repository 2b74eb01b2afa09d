//! One test's namespace on the shared stack: a topic and consumer-group prefix, an object-key
//! prefix and a database schema, all named after it, and the settings each in-process service
//! gets in it.

use anyhow::Context;
use imgpipe_infra::registry::RegistryConfig;
use imgpipe_infra::storage::ObjectStore;
use imgpipe_infra::telemetry::LogConfig;
use imgpipe_infra::{kafka, topics, DatabaseConfig, FromEnv, KafkaConfig, S3Config};
use imgpipe_ingest::auth::{ApiKeys, ClientLimits, Scope};
use imgpipe_webhooks::config::{DeliverySettings, WebhookSecurity};
use imgpipe_webhooks::signature::SigningSecret;
use uuid::Uuid;

use crate::PROCESSOR_VARIANTS;

pub(crate) struct Namespace {
    pub(crate) name: String,
    pub(crate) kafka: KafkaConfig,
    pub(crate) s3: S3Config,
    pub(crate) database: DatabaseConfig,
    pub(crate) log: LogConfig,
    /// Webhooks on: a sealing key of the namespace's own, http allowed, and the loopback
    /// address the tests' receivers listen on (127.0.0.1, and no other private address).
    pub(crate) webhooks: WebhookSecurity,
}

impl Namespace {
    /// A new namespace on the stack the `IMGPIPE_*` variables name, with the Kafka and S3
    /// settings adjusted after its prefixes are set.
    pub(crate) fn new(
        log: LogConfig,
        adjust_kafka: impl FnOnce(&mut KafkaConfig),
        adjust_s3: impl FnOnce(&mut S3Config),
    ) -> anyhow::Result<Self> {
        let name = format!("t{}", Uuid::now_v7().simple());
        let mut kafka = KafkaConfig::from_env()?;
        kafka.topic_prefix = format!("{name}.");
        kafka.produce_timeout_ms = 10_000;
        adjust_kafka(&mut kafka);
        let mut s3 = S3Config::from_env()?;
        s3.key_prefix = format!("{name}/");
        adjust_s3(&mut s3);
        let mut database = DatabaseConfig::from_env()?;
        database.schema = name.clone();
        database.max_connections = 4;
        // 32 random bytes in standard base64: what a signing secret's text holds after `whsec_`.
        let whsec = SigningSecret::generate().to_whsec();
        let sealing_key = whsec.trim_start_matches("whsec_");
        let webhooks = WebhookSecurity {
            sealing_key: sealing_key.into(),
            allow_http: true,
            allow_private: "127.0.0.1/32".into(),
        };
        Ok(Self {
            name,
            kafka,
            s3,
            database,
            log,
            webhooks,
        })
    }

    /// Creates its topics, the bucket (if missing) and its schema's tables; a client of the
    /// bucket.
    pub(crate) async fn create(&self) -> anyhow::Result<ObjectStore> {
        kafka::ensure_topics(&self.kafka, &topics::bundled()?)
            .await
            .context("creating topics (is the stack up? scripts/stack up)")?;
        let store = ObjectStore::connect(&self.s3).await;
        store.ensure_bucket().await.context("creating the bucket")?;
        imgpipe_projector::db::migrate(&self.database)
            .await
            .context("migrating")?;
        Ok(store)
    }

    /// Ingest on a free port, with two clients' keys and no limits.
    pub(crate) fn ingest_config(
        &self,
        api_key: &str,
        other_api_key: &str,
        admin_api_key: &str,
    ) -> imgpipe_ingest::Config {
        imgpipe_ingest::Config {
            ingest: imgpipe_ingest::config::IngestSettings {
                listen_addr: "127.0.0.1:0".into(),
                api_keys: format!(
                    "{},{},{}",
                    ApiKeys::entry_for("client-a", api_key),
                    ApiKeys::entry_for("client-b", other_api_key),
                    ApiKeys::entry_with(
                        "operator",
                        admin_api_key,
                        Scope::Admin,
                        ClientLimits::default()
                    )
                ),
                uploads_per_minute: 0,
                bytes_per_minute: 0,
                // Tests hammer the API from one address; those that test a limit set it.
                reads_per_minute: 0,
                deletes_per_minute: 0,
                changes_per_minute: 0,
                requests_per_minute_per_ip: 0,
                ..Default::default()
            },
            kafka: self.kafka.clone(),
            s3: self.s3.clone(),
            database: self.database.clone(),
            registry: RegistryConfig::default(),
            log: self.log.clone(),
            webhooks: self.webhooks.clone(),
        }
    }

    /// The delivering service, retrying on a short schedule (1 s, 2 s, 2 s) and polling often,
    /// with ingest's webhook settings.
    pub fn webhooks_config(&self) -> imgpipe_webhooks::config::Config {
        let mut delivery = DeliverySettings::from_iter(Vec::new())
            .expect("the delivery settings' defaults read from an empty environment");
        delivery.ops_addr = "127.0.0.1:0".into();
        delivery.retry_schedule = "1s,2s,2s".into();
        delivery.timeout_secs = 5;
        delivery.disable_after_secs = 3600;
        delivery.poll_ms = 100;
        imgpipe_webhooks::config::Config {
            delivery,
            security: self.webhooks.clone(),
            kafka: self.kafka.clone(),
            s3: self.s3.clone(),
            database: self.database.clone(),
            registry: RegistryConfig::default(),
            log: self.log.clone(),
        }
    }

    /// A processor making [`PROCESSOR_VARIANTS`] (spec version 1), retrying without end.
    pub(crate) fn processor_config(&self) -> imgpipe_processor::Config {
        imgpipe_processor::Config {
            processor: imgpipe_processor::config::ProcessorSettings {
                ops_addr: "127.0.0.1:0".into(),
                variants: PROCESSOR_VARIANTS.into(),
                spec_version: 1,
                webp_quality: 80.0,
                webp_method: 4,
                max_pixels: 50_000_000,
                max_side: 20_000,
                max_attempts: 0,
                cpu_jobs: 0,
                memory_budget_bytes: imgpipe_processor::config::DEFAULT_MEMORY_BUDGET_BYTES,
                breaker_failures: 5,
                breaker_open_secs: 10,
            },
            kafka: self.kafka.clone(),
            s3: self.s3.clone(),
            registry: RegistryConfig::default(),
            log: self.log.clone(),
        }
    }

    pub(crate) fn projector_config(&self) -> imgpipe_projector::Config {
        imgpipe_projector::Config {
            projector: imgpipe_projector::config::ProjectorSettings {
                ops_addr: "127.0.0.1:0".into(),
                ..Default::default()
            },
            kafka: self.kafka.clone(),
            database: self.database.clone(),
            registry: RegistryConfig::default(),
            log: self.log.clone(),
            orphans: Default::default(),
            s3: self.s3.clone(),
        }
    }
}
