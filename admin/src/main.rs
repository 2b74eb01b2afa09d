//! `imgpipe`: the operator's command line. It reads the same `IMGPIPE_*` variables as the
//! services.

use anyhow::Context;
use clap::{Parser, Subcommand};
use imgpipe_infra::storage::ObjectStore;
use imgpipe_infra::telemetry::LogConfig;
use imgpipe_infra::{kafka, topics, DatabaseConfig, FromEnv, KafkaConfig, S3Config};
use imgpipe_ingest::auth::ApiKeys;
use rand::RngCore;

#[derive(Parser)]
#[command(name = "imgpipe", version, about = "Operate an imgpipe deployment")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create what a deployment needs and is missing: topics (redpanda/topics.conf), the
    /// bucket, and the database schema. Safe to run again.
    Setup {
        /// Leave topics alone (the compose init job creates them with rpk).
        #[arg(long)]
        skip_topics: bool,
    },
    /// Apply pending database migrations.
    Migrate,
    /// Mint a new API key for a client: prints the key (give it to the client) and the
    /// IMGPIPE_INGEST_API_KEYS entry (give it to ingest).
    ApiKey {
        client: String,
        /// Print only `key entry`, for scripts.
        #[arg(long)]
        plain: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let log = LogConfig {
        format: std::env::var("IMGPIPE_LOG_FORMAT").unwrap_or_else(|_| "pretty".into()),
    };
    imgpipe_infra::telemetry::init(&log);
    match cli.command {
        Command::Setup { skip_topics } => {
            if !skip_topics {
                let kafka_config = KafkaConfig::from_env()?;
                let specs = topics::bundled()?;
                kafka::ensure_topics(&kafka_config, &specs)
                    .await
                    .context("creating topics")?;
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
            store.ensure_bucket().await.context("creating the bucket")?;
            println!("bucket: {}", store.bucket());
            migrate().await?;
        }
        Command::Migrate => migrate().await?,
        Command::ApiKey { client, plain } => {
            let mut secret = [0u8; 24];
            rand::rng().fill_bytes(&mut secret);
            let key = format!("imgpipe_{}", hex::encode(secret));
            let entry = ApiKeys::entry_for(&client, &key);
            if plain {
                println!("{key} {entry}");
            } else {
                println!("API key for {client} (shown once): {key}");
                println!("add to IMGPIPE_INGEST_API_KEYS: {entry}");
            }
        }
    }
    Ok(())
}

async fn migrate() -> anyhow::Result<()> {
    let database = DatabaseConfig::from_env()?;
    imgpipe_projector::db::migrate(&database)
        .await
        .context("applying migrations")?;
    println!("database schema {}: migrated", database.schema);
    Ok(())
}
