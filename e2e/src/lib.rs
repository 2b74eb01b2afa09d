//! Test harness: starts ingest, processor and projector in this process against the real
//! stack (broker, S3 server, Postgres from `scripts/stack`), each test in its own namespace:
//! a unique topic and consumer-group prefix, database schema and object-key prefix. Nothing
//! is mocked.
//!
//! The stack's addresses come from the same `IMGPIPE_*` variables the services read
//! (`scripts/test` exports `.stack/env`); the defaults match `scripts/stack`.

pub mod console;
pub mod dead_letters;
pub mod fixtures;
pub mod metrics;
mod namespace;
pub mod private_server;
pub mod private_stack;
pub mod service_process;
pub mod tools;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use imgpipe_infra::log_reader::{LogReader, PartitionEnds, StartAt};
use imgpipe_infra::storage::ObjectStore;
use imgpipe_infra::telemetry::LogConfig;
use imgpipe_infra::{DatabaseConfig, KafkaConfig, S3Config};
use rdkafka::message::OwnedMessage;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::namespace::Namespace;

/// The corpus of real images beside the project (`../shared/corpus`).
pub fn corpus_dir() -> PathBuf {
    std::env::var_os("IMGPIPE_CORPUS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus"))
}

/// Every file in a corpus folder, sorted.
pub fn corpus_files(folder: &str) -> Vec<PathBuf> {
    let dir = corpus_dir().join(folder);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus folder {} is missing: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

/// The variant spec every test processor makes (spec version 1).
pub const PROCESSOR_VARIANTS: &str = "thumb:256,medium:1024,large:2048";

/// One isolated pipeline.
pub struct Pipeline {
    pub namespace: String,
    pub base_url: String,
    pub api_key: String,
    pub other_api_key: String,
    /// The key of client `operator`, with `scope=admin` (the console's operator pages).
    pub admin_api_key: String,
    pub http: reqwest::Client,
    pub store: ObjectStore,
    pub kafka: KafkaConfig,
    pub database: DatabaseConfig,
    /// The in-process processor's ops endpoint (`/healthz`, `/readyz`, `/metrics`); empty
    /// when the test runs the processor itself ([`Pipeline::start_without_processor`]).
    pub processor_ops_url: String,
    /// Ingest's separate ops address (`/metrics`, `/healthz`, `/readyz`), when the test set
    /// `ops_addr`.
    pub ingest_ops_url: Option<String>,
    /// The in-process projector's ops endpoint (`/healthz`, `/readyz`, `/metrics`).
    pub projector_ops_url: String,
    /// The in-process projector's configuration (for a test's own rebuild, say).
    pub projector_config: imgpipe_projector::Config,
    /// The webhook deliverer's configuration in this namespace (with ingest's sealing key and
    /// allow-list); tests that need deliveries run it themselves.
    pub webhooks_config: imgpipe_webhooks::Config,
    s3: S3Config,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    /// The in-process processor's settings, its own stop token and task, so that
    /// [`Pipeline::restart_processor`] can replace it.
    processor: Option<(imgpipe_processor::Config, CancellationToken, JoinHandle<()>)>,
}

impl Pipeline {
    /// Creates the namespace (topics, schema) and starts the three services.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// Like [`Pipeline::start`], with ingest's settings adjusted first (limits, rate limits).
    pub async fn start_with(
        adjust: impl FnOnce(&mut imgpipe_ingest::config::IngestSettings),
    ) -> anyhow::Result<Self> {
        Self::start_with_kafka(|_| {}, adjust).await
    }

    /// Like [`Pipeline::start_with`], with the Kafka settings every service uses adjusted too
    /// (another broker, a shorter produce timeout); the namespace's topic prefix is already set.
    pub async fn start_with_kafka(
        adjust_kafka: impl FnOnce(&mut KafkaConfig),
        adjust: impl FnOnce(&mut imgpipe_ingest::config::IngestSettings),
    ) -> anyhow::Result<Self> {
        Self::start_with_stack(adjust_kafka, |_| {}, |_| {}, adjust).await
    }

    /// Like [`Pipeline::start_with_kafka`], with the S3 settings every service uses (another
    /// object store; the namespace's key prefix is already set) and the processor's settings
    /// adjusted too.
    pub async fn start_with_stack(
        adjust_kafka: impl FnOnce(&mut KafkaConfig),
        adjust_s3: impl FnOnce(&mut S3Config),
        adjust_processor: impl FnOnce(&mut imgpipe_processor::config::ProcessorSettings),
        adjust: impl FnOnce(&mut imgpipe_ingest::config::IngestSettings),
    ) -> anyhow::Result<Self> {
        let workers = InProcess {
            processor: true,
            projector: true,
        };
        Self::start_services(adjust_kafka, adjust_s3, adjust_processor, adjust, workers).await
    }

    /// Ingest and projector only: the test runs the processor itself, as a process of its own
    /// configured by [`Pipeline::processor_env`] (to kill it, say).
    pub async fn start_without_processor() -> anyhow::Result<Self> {
        let workers = InProcess {
            processor: false,
            projector: true,
        };
        Self::start_services(|_| {}, |_| {}, |_| {}, |_| {}, workers).await
    }

    /// Ingest only: the test runs the processors and projectors itself, as processes of their
    /// own configured by [`Pipeline::processor_env`] and [`Pipeline::projector_env`].
    pub async fn start_ingest_only() -> anyhow::Result<Self> {
        let workers = InProcess {
            processor: false,
            projector: false,
        };
        Self::start_services(|_| {}, |_| {}, |_| {}, |_| {}, workers).await
    }

    /// The `IMGPIPE_*` variables that point a projector process at this pipeline's namespace.
    pub fn projector_env(&self) -> Vec<(String, String)> {
        let mut env = self.stack_env();
        env.extend([
            (
                "IMGPIPE_DATABASE_URL".to_string(),
                self.database.url.clone(),
            ),
            (
                "IMGPIPE_DATABASE_SCHEMA".to_string(),
                self.database.schema.clone(),
            ),
            (
                "IMGPIPE_DATABASE_MAX_CONNECTIONS".to_string(),
                "4".to_string(),
            ),
            (
                "IMGPIPE_PROJECTOR_OPS_ADDR".to_string(),
                "127.0.0.1:0".to_string(),
            ),
        ]);
        env
    }

    /// The `IMGPIPE_*` variables that point a processor process at this pipeline's namespace,
    /// with the settings the in-process processor gets.
    pub fn processor_env(&self) -> Vec<(String, String)> {
        let mut env = self.stack_env();
        env.extend(
            [
                ("IMGPIPE_PROCESSOR_OPS_ADDR", "127.0.0.1:0"),
                ("IMGPIPE_PROCESSOR_VARIANTS", PROCESSOR_VARIANTS),
                ("IMGPIPE_PROCESSOR_SPEC_VERSION", "1"),
                ("IMGPIPE_PROCESSOR_MAX_ATTEMPTS", "0"),
            ]
            .map(|(name, value)| (name.to_string(), value.to_string())),
        );
        env
    }

    /// The broker and the object store of this pipeline's namespace, as a service process's
    /// `IMGPIPE_*` variables.
    fn stack_env(&self) -> Vec<(String, String)> {
        let s3 = &self.s3;
        let mut env = vec![
            ("IMGPIPE_KAFKA_BROKERS", self.kafka.brokers.clone()),
            (
                "IMGPIPE_KAFKA_TOPIC_PREFIX",
                self.kafka.topic_prefix.clone(),
            ),
            (
                "IMGPIPE_KAFKA_PRODUCE_TIMEOUT_MS",
                self.kafka.produce_timeout_ms.to_string(),
            ),
            ("IMGPIPE_S3_REGION", s3.region.clone()),
            ("IMGPIPE_S3_BUCKET", s3.bucket.clone()),
            ("IMGPIPE_S3_KEY_PREFIX", s3.key_prefix.clone()),
            (
                "IMGPIPE_S3_FORCE_PATH_STYLE",
                s3.force_path_style.to_string(),
            ),
            ("IMGPIPE_LOG_FORMAT", "pretty".into()),
        ];
        for (name, value) in [
            ("IMGPIPE_S3_ENDPOINT", &s3.endpoint),
            ("IMGPIPE_S3_ACCESS_KEY_ID", &s3.access_key_id),
            (
                "IMGPIPE_S3_SECRET_ACCESS_KEY",
                &s3.secret_access_key
                    .as_ref()
                    .map(|secret| secret.expose().to_string()),
            ),
        ] {
            if let Some(value) = value {
                env.push((name, value.clone()));
            }
        }
        env.into_iter()
            .map(|(name, value)| (name.to_string(), value))
            .collect()
    }

    async fn start_services(
        adjust_kafka: impl FnOnce(&mut KafkaConfig),
        adjust_s3: impl FnOnce(&mut S3Config),
        adjust_processor: impl FnOnce(&mut imgpipe_processor::config::ProcessorSettings),
        adjust: impl FnOnce(&mut imgpipe_ingest::config::IngestSettings),
        workers: InProcess,
    ) -> anyhow::Result<Self> {
        let log = LogConfig {
            format: "pretty".into(),
        };
        imgpipe_infra::telemetry::init(&log);
        let namespace = Namespace::new(log, adjust_kafka, adjust_s3)?;
        let store = namespace.create().await?;

        let api_key = format!("key-{}", Uuid::new_v4());
        let other_api_key = format!("key-{}", Uuid::new_v4());
        let admin_api_key = format!("key-{}", Uuid::new_v4());
        let mut ingest_config = namespace.ingest_config(&api_key, &other_api_key, &admin_api_key);
        adjust(&mut ingest_config.ingest);
        let mut processor_config = namespace.processor_config();
        adjust_processor(&mut processor_config.processor);
        let projector_config = namespace.projector_config();
        let webhooks_config = namespace.webhooks_config();

        let shutdown = CancellationToken::new();
        let ingest = imgpipe_ingest::Application::build(&ingest_config).await?;
        let base_url = local_url(ingest.port());
        let ingest_ops_url = ingest.ops_port().map(local_url);
        let processor = if workers.processor {
            Some(imgpipe_processor::Processor::build(&processor_config).await?)
        } else {
            None
        };
        let processor_ops_url = processor
            .as_ref()
            .map(|p| local_url(p.ops_port()))
            .unwrap_or_default();
        let mut tasks = vec![spawn_service("ingest", ingest.run(shutdown.clone()))];
        let projector_ops_url = if workers.projector {
            let projector = imgpipe_projector::Projector::build(&projector_config).await?;
            let ops_url = local_url(projector.ops_port());
            tasks.push(spawn_service("projector", projector.run(shutdown.clone())));
            ops_url
        } else {
            String::new()
        };
        let processor = processor.map(|processor| {
            let stop = shutdown.child_token();
            let task = spawn_service("processor", processor.run(stop.clone()));
            (processor_config, stop, task)
        });
        Ok(Self {
            namespace: namespace.name,
            base_url,
            api_key,
            other_api_key,
            admin_api_key,
            http: http_client()?,
            store,
            kafka: namespace.kafka,
            s3: namespace.s3,
            database: namespace.database,
            processor_ops_url,
            projector_ops_url,
            ingest_ops_url,
            projector_config,
            webhooks_config,
            shutdown,
            tasks,
            processor,
        })
    }

    /// Stops the in-process processor (it leaves its consumer group) and starts another with
    /// its settings adjusted: a new variant spec, say. Nothing is lost in between: the group's
    /// committed offsets carry over.
    pub async fn restart_processor(
        &mut self,
        adjust: impl FnOnce(&mut imgpipe_processor::config::ProcessorSettings),
    ) -> anyhow::Result<()> {
        let Some((mut config, stop, task)) = self.processor.take() else {
            bail!("this pipeline runs no in-process processor");
        };
        stop.cancel();
        task.await.context("the processor task panicked")?;
        adjust(&mut config.processor);
        let processor = imgpipe_processor::Processor::build(&config).await?;
        self.processor_ops_url = local_url(processor.ops_port());
        let stop = self.shutdown.child_token();
        let task = spawn_service("processor", processor.run(stop.clone()));
        self.processor = Some((config, stop, task));
        Ok(())
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// `POST /v1/images` with a raw body and the first client's key.
    pub async fn upload(&self, body: Vec<u8>) -> anyhow::Result<(u16, Value)> {
        let response = self
            .http
            .post(self.url("/v1/images"))
            .bearer_auth(&self.api_key)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await?))
    }

    /// `method path` with a client's API key; the status and the JSON body.
    pub async fn request(
        &self,
        method: reqwest::Method,
        api_key: &str,
        path: &str,
    ) -> anyhow::Result<(u16, Value)> {
        let response = self
            .http
            .request(method, self.url(path))
            .bearer_auth(api_key)
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await?))
    }

    /// `GET path` as the first client.
    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        self.request(reqwest::Method::GET, &self.api_key, path)
            .await
    }

    /// `GET /v1/images/{id}` as the first client.
    pub async fn image(&self, id: &str) -> anyhow::Result<(u16, Value)> {
        self.get(&format!("/v1/images/{id}")).await
    }

    /// The event types of an image's timeline, oldest first, and the timeline itself.
    pub async fn timeline(&self, id: &str) -> anyhow::Result<(Vec<String>, Vec<Value>)> {
        let (status, body) = self.get(&format!("/v1/images/{id}/events")).await?;
        if status != 200 {
            bail!("timeline of {id}: {status} {body}");
        }
        let events = body["events"].as_array().cloned().unwrap_or_default();
        let types = events
            .iter()
            .map(|e| e["event_type"].as_str().unwrap_or_default().to_string())
            .collect();
        Ok((types, events))
    }

    /// Uploads `body` with the first client's key (it must be accepted: 202) and waits up to
    /// two minutes for the image to settle; its id and the image as it settled.
    pub async fn upload_settled(&self, body: Vec<u8>) -> anyhow::Result<(String, Value)> {
        let (status, accepted) = self.upload(body).await?;
        if status != 202 {
            bail!("the upload was not accepted: {status} {accepted}");
        }
        let id = accepted["id"].as_str().unwrap_or_default().to_string();
        let image = self
            .wait_until_settled(&id, Duration::from_secs(120))
            .await?;
        Ok((id, image))
    }

    /// Polls until the image is `ready` or `failed`, or `timeout` passes.
    pub async fn wait_until_settled(&self, id: &str, timeout: Duration) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, body) = self.image(id).await?;
            if status == 200 && matches!(body["status"].as_str(), Some("ready" | "failed")) {
                return Ok(body);
            }
            if Instant::now() > deadline {
                bail!("image {id} not settled after {timeout:?}: {status} {body}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The events topic's partitions and what each holds now.
    pub async fn log_ends(&self) -> anyhow::Result<PartitionEnds> {
        let reader = LogReader::new(
            &self.kafka,
            "e2e-log-end",
            "e2e-log-end",
            &self.kafka.topics().events,
        )?;
        Ok(reader.ends().await?)
    }

    /// The events topic's end (high watermark), by partition: where the log ends now.
    pub async fn log_end(&self) -> anyhow::Result<BTreeMap<i32, i64>> {
        Ok(self
            .log_ends()
            .await?
            .iter()
            .map(|(partition, span)| (partition, span.high))
            .collect())
    }

    /// The projector's positions in the events topic (`projection_positions`): the next
    /// offset it will apply, by partition.
    pub async fn projected(&self) -> anyhow::Result<BTreeMap<i32, i64>> {
        let pool = self.database.pool()?;
        let positions =
            imgpipe_projector::positions::load(&pool, &self.kafka.topics().events).await;
        pool.close().await;
        Ok(positions?)
    }

    /// Waits until the projector has applied every event the log holds now: its positions
    /// reach the log's end on every partition. What it shows then is all there is to show of
    /// the events appended so far, so a test can check that something did *not* happen.
    pub async fn wait_until_projected(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let end = self.log_end().await?;
        loop {
            let projected = self.projected().await?;
            let behind: BTreeMap<i32, i64> = end
                .iter()
                .map(|(partition, &end)| {
                    let at = projected.get(partition).copied().unwrap_or(0);
                    (*partition, end - at)
                })
                .filter(|&(_, behind)| behind > 0)
                .collect();
            if behind.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the projector is still behind the log after {timeout:?}: {behind:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the services and drops the namespace's database schema. Its topics stay: Tansu
    /// 0.6 panics (and stops serving) when a topic is deleted while a fetch for it is in
    /// flight, and unique names keep later runs apart anyway.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let processor = self.processor.map(|(_, _, task)| task);
        for task in self.tasks.into_iter().chain(processor) {
            task.await.context("a service task panicked")?;
        }
        let pool = self.database.pool()?;
        sqlx::query(&format!("DROP SCHEMA \"{}\" CASCADE", self.namespace))
            .execute(&pool)
            .await?;
        Ok(())
    }
}

/// Runs a service in this process; a service that ends with an error fails the test.
fn spawn_service<E: std::fmt::Debug + Send + 'static>(
    name: &'static str,
    run: impl Future<Output = Result<(), E>> + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(error) = run.await {
            panic!("{name} runs: {error:?}");
        }
    })
}

fn http_client() -> reqwest::Result<reqwest::Client> {
    // No connection reuse: the server may close a connection whose request it rejected before
    // reading the body, and a reused one would then fail the next request at random.
    reqwest::Client::builder().pool_max_idle_per_host(0).build()
}

fn local_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// Every record of `topic`, from its start up to where it ends now.
pub async fn read_topic(kafka: &KafkaConfig, topic: &str) -> anyhow::Result<Vec<OwnedMessage>> {
    let reader = LogReader::new(kafka, "e2e-topic-reader", "e2e-topic-reader", topic)?;
    let ends = reader.ends().await?;
    let mut scan = reader.scan(&StartAt::Beginning, &ends)?;
    let mut records = Vec::new();
    while let Some(record) = scan.next_within(Duration::from_secs(60)).await? {
        records.push(record);
    }
    Ok(records)
}

/// Which workers a [`Pipeline`] runs in its own process (the test runs the others).
#[derive(Debug, Clone, Copy)]
struct InProcess {
    processor: bool,
    projector: bool,
}
