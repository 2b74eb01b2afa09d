//! `imgpipe`: the operator's command line. It reads the same `IMGPIPE_*` variables as the
//! services.

use clap::{ArgGroup, Parser, Subcommand};
use imgpipe_admin::{events, keys, orphans, rebuild, redrive, replay, setup};
use imgpipe_infra::telemetry::LogConfig;
use imgpipe_ingest::auth::{ClientLimits, Scope};
use imgpipe_projector::orphans::SweepOptions;
use time::OffsetDateTime;
use uuid::Uuid;

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
        /// Create the topics with this many replicas instead of topics.conf's (1, for a single
        /// broker), e.g. 3 on a production cluster. Existing topics are left as they are.
        #[arg(long, conflicts_with = "skip_topics", value_parser = clap::value_parser!(i32).range(1..))]
        replication_factor: Option<i32>,
    },
    /// Apply pending database migrations.
    Migrate,
    /// Read events as JSON lines (partition, offset, key, headers, decoded value).
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Move dead letters back to the topic they came from (all, or one image's), byte for byte:
    /// key, value and the original headers, without the `dlq-*` ones.
    ///
    /// It reads the dead-letter topic up to the end it had when the run began, from where the
    /// consumer group `imgpipe-redrive` (after the topic prefix) left off, and commits a
    /// record's offset only once the broker acknowledged its copy: a second run moves nothing
    /// the first one moved. A record several consumer groups dead-lettered moves once (one copy
    /// reaches every group). `--dry-run` commits nothing. `--image` commits only past the
    /// image's records at the head of the topic's partitions: its records behind another
    /// image's move again in a later unfiltered run, which is harmless (consumers are
    /// idempotent). Progress goes to stderr, the summary to stdout.
    #[command(verbatim_doc_comment)]
    Redrive {
        /// Only this image's dead letters; the others stay for a later run.
        #[arg(long)]
        image: Option<Uuid>,
        /// List what would move; move and commit nothing.
        #[arg(long)]
        dry_run: bool,
        /// The summary (and the records moved) as one JSON object.
        #[arg(long)]
        json: bool,
        /// A progress line on stderr every N records scanned (0: none).
        #[arg(long, value_name = "N", default_value_t = 1000)]
        progress_every: u64,
    },
    /// Find objects in storage that no event accounts for (orphans) and objects the read model
    /// names that are missing from storage.
    ///
    /// An orphan is an object under the deployment's originals/ or variants/ that nothing
    /// current names and that was written longer ago than --grace: an original whose upload
    /// was never announced (reason no-event), or a variant of an older spec or an object a
    /// deletion left behind (unreferenced). A dry run by default; --delete removes each one
    /// after appending its OrphanRemoved event (the audit record) and re-checking it, and only
    /// once the projector has applied every event in the log. A missing object is reported and
    /// marked in the missing_objects table, never deleted from the read model. Findings are
    /// printed as they are found (one page of keys at a time), progress goes to stderr, the
    /// counts come last.
    #[command(verbatim_doc_comment)]
    Orphans {
        /// Only objects written longer ago than this (s, m, h, d) can be orphans; keep it
        /// well above the time an upload takes.
        #[arg(long, default_value = "1h", value_parser = orphans::parse_duration)]
        grace: std::time::Duration,
        /// Remove the orphans (each with an OrphanRemoved event); otherwise only list them.
        /// Refused with a --grace under 10m unless --force.
        #[arg(long)]
        delete: bool,
        /// Allow --delete with a --grace under 10m (no upload can be in flight).
        #[arg(long, requires = "delete")]
        force: bool,
        /// JSON lines: one object per finding, then {"summary": {...}}.
        #[arg(long)]
        json: bool,
        /// Keys per listing page (and per read-model page).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(i32).range(1..=1000))]
        page_size: i32,
        /// How long to wait for the projector to catch up with the log before sweeping.
        #[arg(long, default_value = "60s", value_parser = orphans::parse_duration)]
        lag_wait: std::time::Duration,
    },
    /// Re-run history, safely: `reprocess` makes images' variants again with the current
    /// spec, `redrive` puts dead letters back, `rebuild` replays the read models. Each has
    /// --dry-run, draws a progress bar on stderr and prints a summary on stdout (--json for
    /// one JSON object).
    Replay {
        #[command(subcommand)]
        command: ReplayCommand,
    },
    /// Rebuild the read models from the log: replay every event from offset 0 into
    /// `<schema>_next` while the live tables keep serving, swap it in atomically once it has
    /// caught up with the live projector, then drop the old tables. Ingest's own state
    /// (Idempotency-Key reservations) moves across as it is. Progress goes to stderr, the
    /// summary (records, per partition, rows per table) to stdout.
    #[command(verbatim_doc_comment)]
    Rebuild {
        /// Replay into `<schema>_next`, show its row counts beside the live ones, drop it.
        #[arg(long)]
        dry_run: bool,
        /// The summary as one JSON object.
        #[arg(long)]
        json: bool,
        /// Apply one event at a time, as the live projector does, instead of each batch in
        /// bulk (slower; to compare with).
        #[arg(long)]
        per_event: bool,
    },
    /// Mint a new API key for a client: prints the key (give it to the client) and the
    /// IMGPIPE_INGEST_API_KEYS entry (give it to ingest).
    ApiKey {
        client: String,
        /// Print only `key entry`, for scripts.
        #[arg(long)]
        plain: bool,
        /// The client's own uploads per minute instead of IMGPIPE_INGEST_UPLOADS_PER_MINUTE
        /// (0 = no limit). It holds for all the client's keys.
        #[arg(long, value_name = "N")]
        uploads_per_minute: Option<u32>,
        /// The client's own upload bytes per minute instead of IMGPIPE_INGEST_BYTES_PER_MINUTE
        /// (0 = no limit, else at least IMGPIPE_INGEST_MAX_UPLOAD_BYTES). It holds for all the
        /// client's keys.
        #[arg(long, value_name = "N")]
        bytes_per_minute: Option<u64>,
        /// A key that may only read (GET, HEAD); uploads and deletes get 403.
        #[arg(long)]
        read_only: bool,
        /// An admin key (`scope=admin`): read-write plus the web console's operator pages.
        #[arg(long, conflicts_with = "read_only")]
        admin: bool,
    },
}

#[derive(Subcommand)]
enum ReplayCommand {
    /// Append one ReprocessRequested per selected image (keyed by image id, one correlation
    /// id for the run); the processor answers each with variants of the spec it runs now.
    ///
    /// The whole events topic is read once to select images by their upload records'
    /// timestamps and to learn each one's latest result, so the read model's lag does not
    /// matter. Skipped unless --force: images already processed with the current spec
    /// version, images still waiting for a result. Skipped unless --include-failed: failed
    /// images. Deleted images are never requested. So a second identical run appends nothing.
    #[command(
        verbatim_doc_comment,
        group(ArgGroup::new("selection").required(true).multiple(true).args(["image", "from", "to", "all"]))
    )]
    Reprocess {
        /// One image.
        #[arg(long, conflicts_with_all = ["from", "to", "all"])]
        image: Option<Uuid>,
        /// Images uploaded at or after this RFC 3339 time (by record timestamp).
        #[arg(long, value_parser = replay::parse_time)]
        from: Option<OffsetDateTime>,
        /// Images uploaded before this RFC 3339 time (by record timestamp).
        #[arg(long, value_parser = replay::parse_time)]
        to: Option<OffsetDateTime>,
        /// Every image.
        #[arg(long, conflicts_with_all = ["from", "to"])]
        all: bool,
        /// Why; recorded in every request.
        #[arg(long, default_value = "operator replay")]
        reason: String,
        /// Who; recorded in every request. Default: $USER.
        #[arg(long)]
        requested_by: Option<String>,
        /// The spec version the processors run. Default: IMGPIPE_PROCESSOR_SPEC_VERSION, read
        /// (with IMGPIPE_PROCESSOR_VARIANTS, which must be valid) as the processor reads it.
        #[arg(long)]
        spec_version: Option<i32>,
        /// Scan and select; append nothing.
        #[arg(long)]
        dry_run: bool,
        /// Request images that are up to date or waiting for a result too.
        #[arg(long)]
        force: bool,
        /// Request failed images too.
        #[arg(long)]
        include_failed: bool,
        /// After appending, follow the log until every request has its result (or the wait
        /// times out), and count processed and failed.
        #[arg(long)]
        wait: bool,
        #[arg(long, value_name = "SECS", default_value_t = 600)]
        wait_timeout: u64,
        /// The summary (with one entry per selected image) as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// The same as `imgpipe redrive`: dead letters back to the topic they came from.
    Redrive {
        /// Only this image's dead letters; the others stay for a later run.
        #[arg(long)]
        image: Option<Uuid>,
        /// List what would move; move and commit nothing.
        #[arg(long)]
        dry_run: bool,
        /// The summary (and the records moved) as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild the read models from the log (the same as `imgpipe rebuild`): replay every
    /// event into `<schema>_next` while the live tables serve, swap atomically, drop the old.
    Rebuild {
        /// Replay into `<schema>_next`, show its row counts beside the live ones, drop it.
        #[arg(long)]
        dry_run: bool,
        /// The summary as one JSON object.
        #[arg(long)]
        json: bool,
        /// Apply one event at a time, as the live projector does, instead of each batch in
        /// bulk (slower; to compare with).
        #[arg(long)]
        per_event: bool,
    },
    /// Deliver a webhook endpoint's messages again: one (--message) or every one since a time
    /// (--from). Appends one WebhookRedeliveryRequested; the delivering service sends each
    /// message again from attempt 1, with the same webhook-id.
    #[command(group(ArgGroup::new("which").required(true).args(["from", "message"])))]
    Webhooks {
        /// The endpoint's id.
        #[arg(long)]
        endpoint: Uuid,
        /// Every message first attempted at or after this RFC 3339 time.
        #[arg(long, value_parser = replay::parse_time)]
        from: Option<OffsetDateTime>,
        /// One message, by its webhook-id.
        #[arg(long)]
        message: Option<Uuid>,
        /// Who; recorded in the request. Default: $USER.
        #[arg(long)]
        requested_by: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum EventsCommand {
    /// Print the records of a topic, then stop (or keep following with --follow).
    Tail {
        /// `events`, `dlq`, or a full topic name.
        #[arg(long, default_value = "events")]
        topic: String,
        /// `beginning`, `end`, an offset (on every partition) or an RFC 3339 time.
        #[arg(long, default_value = "beginning")]
        from: events::Start,
        /// Only this image's records.
        #[arg(long)]
        image: Option<Uuid>,
        #[arg(long)]
        follow: bool,
    },
    /// Decode base64 values from stdin, one per line:
    /// `rpk topic consume imgpipe.events -f '%v{base64}\n' | imgpipe events decode`.
    Decode,
    /// Every record of one image on the events and dead-letter topics, oldest first.
    History { image: Uuid },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let log = LogConfig {
        format: std::env::var("IMGPIPE_LOG_FORMAT").unwrap_or_else(|_| "pretty".into()),
    };
    imgpipe_infra::telemetry::init(&log);
    match cli.command {
        Command::Setup {
            skip_topics,
            replication_factor,
        } => setup::setup(skip_topics, replication_factor).await?,
        Command::Migrate => setup::migrate().await?,
        Command::Events { command } => match command {
            EventsCommand::Tail {
                topic,
                from,
                image,
                follow,
            } => {
                events::run_tail(&topic, from, image, follow).await?;
            }
            EventsCommand::Decode => {
                events::run_decode().await?;
            }
            EventsCommand::History { image } => events::run_history(image).await?,
        },
        Command::Redrive {
            image,
            dry_run,
            json,
            progress_every,
        } => {
            let options = redrive::options(image, dry_run, progress_every);
            redrive::run(&options, json, &mut std::io::stderr()).await?;
        }
        Command::Orphans {
            grace,
            delete,
            force,
            json,
            page_size,
            lag_wait,
        } => {
            let mut options = SweepOptions::new(grace, delete, "imgpipe-admin");
            options.page_size = page_size;
            options.lag_wait = lag_wait;
            orphans::run(&options, force, json).await?;
        }
        Command::Replay { command } => run_replay(command).await?,
        Command::Rebuild {
            dry_run,
            json,
            per_event,
        } => {
            rebuild::run(dry_run, json, per_event).await?;
        }
        Command::ApiKey {
            client,
            plain,
            uploads_per_minute,
            bytes_per_minute,
            read_only,
            admin,
        } => {
            let scope = match (read_only, admin) {
                (true, _) => Scope::Read,
                (_, true) => Scope::Admin,
                _ => Scope::ReadWrite,
            };
            let limits = ClientLimits {
                uploads_per_minute,
                bytes_per_minute,
            };
            keys::run(&client, scope, limits, plain, &mut std::io::stdout().lock())?;
        }
    }
    Ok(())
}

async fn run_replay(command: ReplayCommand) -> anyhow::Result<()> {
    match command {
        ReplayCommand::Reprocess {
            image,
            from,
            to,
            all,
            reason,
            requested_by,
            spec_version,
            dry_run,
            force,
            include_failed,
            wait,
            wait_timeout,
            json,
        } => {
            let spec_version = match spec_version {
                Some(version) => version,
                None => replay::spec_version_from_env()?,
            };
            let options = replay::ReprocessOptions {
                selection: replay::Selection::from_flags(image, all, from, to),
                spec_version,
                reason,
                requested_by: requested_by.unwrap_or_else(replay::default_requester),
                dry_run,
                force,
                include_failed,
                wait: wait.then(|| std::time::Duration::from_secs(wait_timeout)),
                show_progress: true,
            };
            replay::run(&options, json).await?;
        }
        ReplayCommand::Rebuild {
            dry_run,
            json,
            per_event,
        } => {
            rebuild::run(dry_run, json, per_event).await?;
        }
        ReplayCommand::Redrive {
            image,
            dry_run,
            json,
        } => {
            redrive::run_with_spinner(image, dry_run, json).await?;
        }
        ReplayCommand::Webhooks {
            endpoint,
            from,
            message,
            requested_by,
            json,
        } => {
            let what = match (message, from) {
                (Some(message), _) => replay::webhooks::Redelivery::Message(message),
                (None, Some(from)) => replay::webhooks::Redelivery::Since(from),
                // clap requires one of the two.
                (None, None) => anyhow::bail!("--from or --message is required"),
            };
            let requested_by = requested_by.unwrap_or_else(replay::default_requester);
            replay::webhooks::run(endpoint, what, requested_by, json).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_reprocess_needs_exactly_one_kind_of_selection() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(
                ["imgpipe", "replay", "reprocess"]
                    .iter()
                    .chain(args)
                    .copied(),
            )
        };
        assert!(parse(&[]).is_err(), "a selection is required");
        assert!(parse(&["--all"]).is_ok());
        assert!(parse(&["--image", "0193a0b4-0000-7000-8000-000000000000"]).is_ok());
        assert!(parse(&[
            "--from",
            "2026-11-22T06:00:00Z",
            "--to",
            "2026-11-22T07:00:00Z"
        ])
        .is_ok());
        assert!(parse(&["--from", "2026-11-22T06:00:00Z"]).is_ok());
        assert!(parse(&["--all", "--from", "2026-11-22T06:00:00Z"]).is_err());
        assert!(parse(&["--image", "0193a0b4-0000-7000-8000-000000000000", "--all"]).is_err());
        assert!(parse(&["--from", "yesterday"]).is_err());
        assert!(Cli::try_parse_from(["imgpipe", "replay", "redrive", "--dry-run"]).is_ok());
    }

    #[test]
    fn api_key_admin_conflicts_with_read_only() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(["imgpipe", "api-key", "ops"].iter().chain(args).copied())
        };
        assert!(matches!(
            parse(&["--admin"]),
            Ok(Cli {
                command: Command::ApiKey {
                    admin: true,
                    read_only: false,
                    ..
                },
            })
        ));
        assert!(parse(&["--read-only"]).is_ok());
        assert!(parse(&["--admin", "--read-only"]).is_err());
    }

    #[test]
    fn replay_webhooks_needs_an_endpoint_and_a_time_or_a_message() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(
                ["imgpipe", "replay", "webhooks"]
                    .iter()
                    .chain(args)
                    .copied(),
            )
        };
        let endpoint = "0193a0b4-0000-7000-8000-000000000000";
        assert!(parse(&["--endpoint", endpoint, "--from", "2026-11-22T06:00:00Z"]).is_ok());
        assert!(parse(&["--endpoint", endpoint, "--message", endpoint]).is_ok());
        assert!(
            parse(&["--endpoint", endpoint]).is_err(),
            "what to redeliver"
        );
        assert!(
            parse(&["--from", "2026-11-22T06:00:00Z"]).is_err(),
            "which endpoint"
        );
        assert!(parse(&[
            "--endpoint",
            endpoint,
            "--from",
            "2026-11-22T06:00:00Z",
            "--message",
            endpoint
        ])
        .is_err());
    }
}
