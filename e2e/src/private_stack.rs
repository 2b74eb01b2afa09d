//! A whole stack of the test's own: private Tansu, s3s-fs and PostgreSQL on free loopback
//! ports (so a test can kill them without disturbing the shared stack), and ingest, the
//! processor and the projector as processes of their own ([`ServiceProcess`]), each of which
//! can be SIGKILLed and restarted.
// A test harness: a setup step that fails is the test failing, with the panic saying where.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use imgpipe_infra::storage::ObjectStore;
use imgpipe_infra::{kafka, topics, DatabaseConfig, FromEnv, KafkaConfig, S3Config};
use imgpipe_ingest::auth::ApiKeys;
use uuid::Uuid;

use crate::private_server::PrivateServer;
use crate::service_process::{ServiceOutput, ServiceProcess};

/// The one client's API key.
pub const API_KEY: &str = "private-stack-key-0123456789";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap()
        .port()
}

/// The private servers and the service processes.
pub struct PrivateStack {
    /// Shared with [`PrivateStack::supervise_broker`].
    pub broker: Arc<tokio::sync::Mutex<PrivateServer>>,
    pub s3: PrivateServer,
    pub postgres: PrivateServer,
    pub ingest: ServiceProcess,
    pub processor: ServiceProcess,
    pub projector: ServiceProcess,
    pub ingest_url: String,
    pub processor_ops: String,
    pub projector_ops: String,
    pub kafka: KafkaConfig,
    pub s3_config: S3Config,
    pub database: DatabaseConfig,
    pub log_dir: std::path::PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Component {
    Broker,
    S3,
    Postgres,
    Processor,
    Projector,
    Ingest,
}

pub const COMPONENTS: [Component; 6] = [
    Component::Broker,
    Component::S3,
    Component::Postgres,
    Component::Processor,
    Component::Projector,
    Component::Ingest,
];

impl PrivateStack {
    /// Starts the servers, creates the topics, the bucket and the tables, then the services;
    /// consumers count as stalled after `stall_secs`.
    pub async fn start(stall_secs: u64) -> Self {
        let log_dir =
            std::env::temp_dir().join(format!("imgpipe-stack-{}", Uuid::now_v7().simple()));
        std::fs::create_dir_all(&log_dir).unwrap();
        let broker = PrivateServer::tansu();
        let s3 = PrivateServer::s3s_fs();
        let postgres = PrivateServer::postgres();
        broker.wait_until_listening().await;
        s3.wait_until_listening().await;
        postgres.wait_until_listening().await;

        let mut kafka = KafkaConfig::from_env().unwrap();
        kafka.brokers = format!("127.0.0.1:{}", broker.port());
        kafka.topic_prefix = String::new();
        kafka.produce_timeout_ms = 5_000;
        kafka.stall_secs = stall_secs;
        let mut s3_config = S3Config::from_env().unwrap();
        s3_config.endpoint = Some(format!("http://127.0.0.1:{}", s3.port()));
        s3_config.access_key_id = Some("imgpipe".into());
        s3_config.secret_access_key = Some("imgpipe-local-secret".into());
        s3_config.key_prefix = String::new();
        let mut database = DatabaseConfig::from_env().unwrap();
        database.url = format!("postgres://postgres@127.0.0.1:{}/postgres", postgres.port());
        database.schema = "chaos".into();
        create_namespace(&kafka, &s3_config, &database).await;

        let env = ServiceEnv::new(&kafka, &s3_config, &database, stall_secs);
        let (ingest_port, processor_port, projector_port) = (free_port(), free_port(), free_port());
        let (ingest_env, processor_env, projector_env) = (
            env.ingest(ingest_port),
            env.processor(processor_port),
            env.projector(projector_port),
        );
        let log = |name: &str| ServiceOutput::LogFile(log_dir.join(format!("{name}.log")));
        Self {
            ingest: ServiceProcess::start("ingest", ingest_env, log("ingest")),
            processor: ServiceProcess::start("processor", processor_env, log("processor")),
            projector: ServiceProcess::start("projector", projector_env, log("projector")),
            broker: Arc::new(tokio::sync::Mutex::new(broker)),
            s3,
            postgres,
            ingest_url: format!("http://127.0.0.1:{ingest_port}"),
            processor_ops: format!("http://127.0.0.1:{processor_port}"),
            projector_ops: format!("http://127.0.0.1:{projector_port}"),
            kafka,
            s3_config,
            database,
            log_dir,
        }
    }

    pub async fn kill(&mut self, component: Component) {
        match component {
            Component::Broker => self.broker.lock().await.kill(),
            Component::S3 => self.s3.kill(),
            Component::Postgres => self.postgres.kill(),
            Component::Processor => self.processor.kill(),
            Component::Projector => self.projector.kill(),
            Component::Ingest => self.ingest.kill(),
        }
    }

    pub async fn restart(&mut self, component: Component) {
        match component {
            Component::Broker => restart_server(&mut *self.broker.lock().await).await,
            Component::S3 => restart_server(&mut self.s3).await,
            Component::Postgres => restart_server(&mut self.postgres).await,
            Component::Processor => self.processor.spawn(),
            Component::Projector => self.projector.spawn(),
            Component::Ingest => self.ingest.spawn(),
        }
    }
}

impl PrivateStack {
    /// Restarts the private broker whenever its log shows a new panic, as a supervisor with a
    /// liveness probe would: Tansu 0.6 was seen to panic ("more or less than one row", in its
    /// sqlite storage) on a produce from a client that kept its producer id across the
    /// broker's SIGKILL, and then to keep listening while failing every request. Counts the
    /// restarts in `restarts`. That is the broker's defect, not the pipeline's; production
    /// runs Redpanda.
    pub fn supervise_broker(&self, restarts: Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
        let broker = Arc::clone(&self.broker);
        tokio::spawn(async move {
            let mut seen = 0;
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let mut broker = broker.lock().await;
                let panics = broker.panics_logged();
                if panics > seen {
                    seen = panics;
                    eprintln!("private broker panicked ({panics} so far): restarting it");
                    restart_server(&mut broker).await;
                    restarts.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    }
}

/// Creates the topics, the bucket and the tables, waiting for each server to serve.
async fn create_namespace(kafka: &KafkaConfig, s3_config: &S3Config, database: &DatabaseConfig) {
    eventually(
        "the private broker serves",
        Duration::from_secs(60),
        || async {
            kafka::ensure_topics(kafka, &topics::bundled().unwrap())
                .await
                .is_ok()
        },
    )
    .await;
    let store = ObjectStore::connect(s3_config).await;
    eventually(
        "the private bucket exists",
        Duration::from_secs(30),
        || async { store.ensure_bucket().await.is_ok() },
    )
    .await;
    eventually(
        "the private database is migrated",
        Duration::from_secs(30),
        || async { imgpipe_projector::db::migrate(database).await.is_ok() },
    )
    .await;
}

/// The `IMGPIPE_*` variables of the service processes: the private servers' settings every
/// service shares, and each one's own.
struct ServiceEnv {
    common: Vec<(String, String)>,
}

impl ServiceEnv {
    fn new(
        kafka: &KafkaConfig,
        s3_config: &S3Config,
        database: &DatabaseConfig,
        stall_secs: u64,
    ) -> Self {
        let mut common = vec![
            ("IMGPIPE_KAFKA_BROKERS".to_string(), kafka.brokers.clone()),
            ("IMGPIPE_KAFKA_PRODUCE_TIMEOUT_MS".into(), "5000".into()),
            ("IMGPIPE_KAFKA_STALL_SECS".into(), stall_secs.to_string()),
            (
                "IMGPIPE_S3_ENDPOINT".into(),
                s3_config.endpoint.clone().unwrap(),
            ),
            ("IMGPIPE_S3_ACCESS_KEY_ID".into(), "imgpipe".into()),
            (
                "IMGPIPE_S3_SECRET_ACCESS_KEY".into(),
                "imgpipe-local-secret".into(),
            ),
            ("IMGPIPE_S3_BUCKET".into(), s3_config.bucket.clone()),
            ("IMGPIPE_S3_REGION".into(), s3_config.region.clone()),
            ("IMGPIPE_S3_FORCE_PATH_STYLE".into(), "true".into()),
            ("IMGPIPE_DATABASE_URL".into(), database.url.clone()),
            ("IMGPIPE_DATABASE_SCHEMA".into(), database.schema.clone()),
            ("IMGPIPE_LOG_FORMAT".into(), "json".into()),
        ];
        // The services must not pick up the shared stack's settings.
        common.push(("IMGPIPE_KAFKA_TOPIC_PREFIX".into(), String::new()));
        common.push(("IMGPIPE_S3_KEY_PREFIX".into(), String::new()));
        Self { common }
    }

    fn with(&self, extra: &[(&str, String)]) -> Vec<(String, String)> {
        let mut env = self.common.clone();
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        env
    }

    fn ingest(&self, port: u16) -> Vec<(String, String)> {
        self.with(&[
            ("IMGPIPE_INGEST_LISTEN_ADDR", format!("127.0.0.1:{port}")),
            (
                "IMGPIPE_INGEST_API_KEYS",
                ApiKeys::entry_for("private-client", API_KEY),
            ),
            ("IMGPIPE_INGEST_UPLOADS_PER_MINUTE", "0".into()),
            ("IMGPIPE_INGEST_BYTES_PER_MINUTE", "0".into()),
            // Crashes are under test here, not limits: the client polls hard.
            ("IMGPIPE_INGEST_REQUESTS_PER_MINUTE_PER_IP", "0".into()),
            ("IMGPIPE_INGEST_READS_PER_MINUTE", "0".into()),
        ])
    }

    fn processor(&self, ops_port: u16) -> Vec<(String, String)> {
        self.with(&[
            (
                "IMGPIPE_PROCESSOR_OPS_ADDR",
                format!("127.0.0.1:{ops_port}"),
            ),
            ("IMGPIPE_PROCESSOR_VARIANTS", "thumb:64,medium:128".into()),
            ("IMGPIPE_PROCESSOR_SPEC_VERSION", "1".into()),
            ("IMGPIPE_PROCESSOR_MAX_ATTEMPTS", "0".into()),
        ])
    }

    fn projector(&self, ops_port: u16) -> Vec<(String, String)> {
        self.with(&[(
            "IMGPIPE_PROJECTOR_OPS_ADDR",
            format!("127.0.0.1:{ops_port}"),
        )])
    }
}

/// Restarts a private server until it stays up: a PostgreSQL killed with SIGKILL refuses to
/// start while its orphaned backends still hold the shared memory, for a moment.
async fn restart_server(server: &mut PrivateServer) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        server.restart();
        tokio::time::sleep(Duration::from_millis(700)).await;
        if !server.exited() {
            server.wait_until_listening().await;
            return;
        }
        assert!(
            Instant::now() < deadline,
            "a private server does not come back"
        );
    }
}

pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
