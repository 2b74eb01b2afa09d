//! Rebuilding the read models from the log while the live ones keep serving.
//!
//! A rebuild migrates a fresh schema `<schema>_next`, replays the events topic into it from
//! offset 0 with a consumer of its own (no group: it assigns every partition itself), tracking
//! its own positions in `<schema>_next.projection_positions`, until it has caught up with the
//! live projector's positions. Then one transaction swaps it in (see [`swap`]), and the old
//! schema is dropped. Tables that are not derived from events ([`KEPT`]) move across as they
//! are.

mod swap;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use imgpipe_infra::log_reader::{LogReader, Scan, StartAt};
use imgpipe_infra::registry::EventCodec;
use imgpipe_infra::DatabaseConfig;
use rdkafka::message::OwnedMessage;
use serde::Serialize;
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};

use crate::batch::{Applier, ApplyMode, BatchOutcome, BatchReport, Rejects};
use crate::live::Backoff;
use crate::positions::{self, PositionMap};
use crate::{db, Config, ProjectorError};

/// Tables derived from the events: a rebuild makes them anew.
pub const PROJECTIONS: &[&str] = &[
    "images",
    "variants",
    "image_events",
    "projection_positions",
    "webhook_endpoints",
    "webhook_events",
    "webhook_attempts",
];
/// Tables that hold state no event carries (ingest's Idempotency-Key reservations and its
/// record of accepted uploads, the orphan sweep's missing-object marks, the webhook deliveries
/// still to attempt): a rebuild moves them
/// into the new schema as they are. A table in neither list stops a rebuild before it changes
/// anything, so a new table is never silently dropped or rebuilt empty.
pub const KEPT: &[&str] = &[
    "idempotency_keys",
    "accepted_uploads",
    "missing_objects",
    "webhook_schedule",
];
/// How many records the replay may still lack when the swap starts: the swap applies them
/// while it holds the live projector still, so this bounds how long that lasts.
const SWAP_SLACK: i64 = 200;
/// sqlx's record of applied migrations; the new schema has its own.
const MIGRATIONS_TABLE: &str = "_sqlx_migrations";

/// How a rebuild runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Replay into `<schema>_next`, count its rows beside the live ones, drop it: no swap.
    pub dry_run: bool,
    /// Most records per transaction.
    pub batch_max: usize,
    /// How each batch is written: in bulk (the default), or one event at a time as the live
    /// projector does (slower; kept to compare with).
    pub apply: ApplyMode,
    /// How long the swap may hold the live positions locked while the last events are
    /// applied; past it, the swap is given up and tried again after more replaying.
    pub swap_catch_up: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            dry_run: false,
            batch_max: 2000,
            apply: ApplyMode::Bulk,
            swap_catch_up: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Migrating `<schema>_next` and assigning the partitions.
    Preparing,
    /// Applying the log into `<schema>_next`.
    Replaying,
    /// Caught up: locking the live positions, applying the last events, swapping.
    Swapping,
    /// Dropping the old schema (waits for queries still reading it).
    Dropping,
}

/// Told what a rebuild is doing; the command line draws a progress bar from it.
pub trait Progress: Send {
    fn phase(&mut self, _phase: Phase) {}
    /// Records replayed so far, out of the records the log holds now (which grows as events
    /// are appended during the rebuild).
    fn records(&mut self, _done: u64, _total: u64) {}
}

/// No progress reporting.
pub struct Quiet;

impl Progress for Quiet {}

/// What a rebuild did.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub schema: String,
    pub dry_run: bool,
    pub apply: ApplyMode,
    /// Whether the rebuilt tables are now the live ones.
    pub swapped: bool,
    pub records: u64,
    /// Events that changed the rebuilt tables, by type.
    pub events_applied: BTreeMap<String, u64>,
    /// Events found twice in the log (redriven, or appended again), applied once.
    pub duplicates: u64,
    /// Records that cannot be applied (the live projector dead-lettered them), by class.
    pub rejected: BTreeMap<String, u64>,
    /// Each partition's records replayed and final position.
    pub partitions: BTreeMap<i32, PartitionSummary>,
    pub seconds: f64,
    /// Rows per table: live before the rebuild, and rebuilt (the new live ones once swapped).
    pub tables: BTreeMap<String, TableRows>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PartitionSummary {
    pub records: u64,
    pub position: i64,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct TableRows {
    pub before: i64,
    pub after: i64,
}

/// Rebuilds the read models of `config.database.schema` from the log.
pub async fn run(
    config: &Config,
    options: &Options,
    progress: &mut dyn Progress,
) -> Result<Summary, ProjectorError> {
    let started = Instant::now();
    let schemas = Schemas::of(&config.database)?;
    let topic = config.kafka.topics().events;

    progress.phase(Phase::Preparing);
    let (mut rebuild, before) = Rebuild::prepare(schemas).await?;
    let next_pool = rebuild.schemas.next_pool.clone();
    let mut replay = Replay::start(config, options, next_pool, topic).await?;
    let swapped = rebuild
        .replay_and_swap(&mut replay, options, progress)
        .await?;
    let report = replay.close();
    let after = rebuild.finish(swapped, progress).await?;

    Ok(Summary {
        schema: config.database.schema.clone(),
        dry_run: options.dry_run,
        apply: options.apply,
        swapped,
        records: report.total.records as u64,
        events_applied: by_name(&report.total.applied),
        duplicates: report.total.duplicates,
        rejected: by_name(&report.total.rejected),
        partitions: report.partitions,
        seconds: started.elapsed().as_secs_f64(),
        tables: table_rows(&before, &after),
    })
}

/// The schemas a rebuild touches, with pools for the live one and the one it replays into.
struct Schemas {
    live: DatabaseConfig,
    next: DatabaseConfig,
    /// What the live schema is renamed to at the swap, until it is dropped.
    old: String,
    live_pool: PgPool,
    next_pool: PgPool,
}

impl Schemas {
    fn of(live: &DatabaseConfig) -> Result<Self, ProjectorError> {
        let next = DatabaseConfig {
            schema: format!("{}_next", live.schema),
            ..live.clone()
        };
        let old = format!("{}_old", live.schema);
        let live_pool = live.pool()?;
        // Also checks the derived names are valid identifiers (a schema name's length).
        DatabaseConfig {
            schema: old.clone(),
            ..live.clone()
        }
        .pool()?;
        let next_pool = next.pool()?;
        Ok(Self {
            live: live.clone(),
            next,
            old,
            live_pool,
            next_pool,
        })
    }
}

/// A rebuild under way, holding the rebuild lock of its schema.
struct Rebuild {
    schemas: Schemas,
    /// The connection that holds the lock (a session lock) and runs the swap.
    control: PoolConnection<Postgres>,
    /// The live tables the swap moves across ([`KEPT`]).
    kept: Vec<String>,
}

impl Rebuild {
    /// Takes the rebuild lock, checks the live tables and migrates a fresh `<schema>_next`;
    /// with the live tables' row counts.
    async fn prepare(schemas: Schemas) -> Result<(Self, BTreeMap<String, i64>), ProjectorError> {
        let live = &schemas.live.schema;
        let mut control = lock(&schemas.live_pool, live).await?;
        let kept = swap::classify_tables(&mut control, live).await?;
        let before = swap::row_counts(&mut control, live, &kept).await?;
        // A leftover `_next` is an interrupted rebuild; a leftover `_old` a swap that committed
        // but was stopped before its drop. Neither is live.
        for schema in [&schemas.next.schema, &schemas.old] {
            sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                .execute(&mut *control)
                .await?;
        }
        db::migrate(&schemas.next).await?;
        swap::check_migrations(&mut control, live, &schemas.next.schema).await?;
        let rebuild = Self {
            schemas,
            control,
            kept,
        };
        Ok((rebuild, before))
    }

    /// Replays until caught up with the live projector, then swaps; a swap that does not catch
    /// up in time is tried again after more replaying. True once swapped; a dry run replays
    /// only, and returns false.
    async fn replay_and_swap(
        &mut self,
        replay: &mut Replay,
        options: &Options,
        progress: &mut dyn Progress,
    ) -> Result<bool, ProjectorError> {
        let Schemas {
            live, next, old, ..
        } = &self.schemas;
        progress.phase(Phase::Replaying);
        tracing::info!(schema = %live.schema, into = %next.schema, "rebuild replaying the log");
        // A dry run swaps nothing, so it replays all the way to the live positions.
        let slack = if options.dry_run { 0 } else { SWAP_SLACK };
        loop {
            replay
                .until_caught_up(&self.schemas.live_pool, slack, progress)
                .await?;
            if options.dry_run {
                return Ok(false);
            }
            progress.phase(Phase::Swapping);
            if swap::swap(
                &mut self.control,
                replay,
                &live.schema,
                &next.schema,
                old,
                &self.kept,
                options.swap_catch_up,
            )
            .await?
            {
                return Ok(true);
            }
            tracing::warn!("the swap did not catch up in time; replaying more and trying again");
            progress.phase(Phase::Replaying);
        }
    }

    /// Drops the schema no longer needed (the old live one once swapped, else the rebuilt one
    /// once counted) and lets go of the lock; with the rebuilt tables' row counts.
    async fn finish(
        mut self,
        swapped: bool,
        progress: &mut dyn Progress,
    ) -> Result<BTreeMap<String, i64>, ProjectorError> {
        let Schemas {
            live,
            next,
            old,
            live_pool,
            next_pool,
        } = &self.schemas;
        next_pool.close().await;
        let after_schema = if swapped {
            progress.phase(Phase::Dropping);
            drop_schema(&mut self.control, old).await?;
            &live.schema
        } else {
            &next.schema
        };
        let after = swap::row_counts(&mut self.control, after_schema, &self.kept).await?;
        if !swapped {
            drop_schema(&mut self.control, &next.schema).await?;
        }
        sqlx::query("SELECT pg_advisory_unlock(hashtext($1))")
            .bind(lock_key(&live.schema))
            .execute(&mut *self.control)
            .await?;
        drop(self.control);
        live_pool.close().await;
        Ok(after)
    }
}

/// One rebuild at a time per schema: a session lock, held by the returned connection until
/// [`Rebuild::finish`].
async fn lock(pool: &PgPool, schema: &str) -> Result<PoolConnection<Postgres>, ProjectorError> {
    let mut control = pool.acquire().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))")
        .bind(lock_key(schema))
        .fetch_one(&mut *control)
        .await?;
    if !locked {
        return Err(ProjectorError::Rebuild(format!(
            "another rebuild of schema {schema} is running"
        )));
    }
    Ok(control)
}

fn lock_key(schema: &str) -> String {
    format!("imgpipe-rebuild:{schema}")
}

async fn drop_schema(db: &mut PgConnection, schema: &str) -> Result<(), ProjectorError> {
    sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .execute(db)
        .await?;
    Ok(())
}

fn by_name(counts: &BTreeMap<&'static str, u64>) -> BTreeMap<String, u64> {
    counts.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn table_rows(
    before: &BTreeMap<String, i64>,
    after: &BTreeMap<String, i64>,
) -> BTreeMap<String, TableRows> {
    before
        .iter()
        .map(|(table, &before)| {
            let after = after.get(table).copied().unwrap_or(0);
            (table.clone(), TableRows { before, after })
        })
        .collect()
}

/// The replay into `<schema>_next`: its own consumer, assigned every partition from the
/// beginning, and its own positions.
pub(crate) struct Replay {
    log: LogReader,
    records: Scan,
    applier: Applier,
    batch_max: usize,
    /// The positions in `<schema>_next`, as written.
    positions: PositionMap,
    low_watermarks: BTreeMap<i32, i64>,
    total: BatchReport,
    partitions: BTreeMap<i32, PartitionSummary>,
}

struct ReplayReport {
    total: BatchReport,
    partitions: BTreeMap<i32, PartitionSummary>,
}

impl Replay {
    async fn start(
        config: &Config,
        options: &Options,
        pool: PgPool,
        topic: String,
    ) -> Result<Self, ProjectorError> {
        let log = LogReader::new(&config.kafka, "imgpipe-rebuild", "imgpipe-rebuild", &topic)?;
        let mut attempts = 0;
        let ends = loop {
            attempts += 1;
            match log.ends().await {
                Ok(ends) => break ends,
                Err(error) if attempts >= 5 => return Err(error.into()),
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        };
        let records = log.follow(&StartAt::Beginning, &ends)?;
        Ok(Self {
            log,
            records,
            applier: Applier {
                pool,
                codec: EventCodec::reader(&config.registry),
                rejects: Rejects::Count,
                topic,
                mode: options.apply,
            },
            batch_max: options.batch_max.max(1),
            positions: PositionMap::new(),
            low_watermarks: ends.iter().map(|(p, span)| (p, span.low)).collect(),
            total: BatchReport::default(),
            partitions: BTreeMap::new(),
        })
    }

    /// Replays until it lacks at most `slack` records to be at the live positions, in all: with events appended all the time, the replay rarely matches the live projector
    /// at one instant, so the swap applies the last few with the live projector held still.
    async fn until_caught_up(
        &mut self,
        live_pool: &PgPool,
        slack: i64,
        progress: &mut dyn Progress,
    ) -> Result<(), ProjectorError> {
        let mut reported = Instant::now() - Duration::from_secs(60);
        loop {
            let applied = self.step(Duration::from_millis(200)).await?;
            let live = positions::load(live_pool, &self.applier.topic).await?;
            if self.behind(&live) <= slack {
                tracing::info!(
                    records = self.total.records, positions = ?self.positions,
                    live = ?live, "rebuild caught up with the live projector"
                );
                return Ok(());
            }
            if !applied || reported.elapsed() > Duration::from_secs(1) {
                reported = Instant::now();
                // Only for the progress bar: a broker slow to answer costs a frame, not the
                // rebuild.
                match self.log.ends().await {
                    Ok(ends) => progress.records(self.done(), ends.records().max(0) as u64),
                    Err(error) => tracing::debug!(error = %error, "no watermarks for the progress"),
                }
            }
        }
    }

    /// Receives one batch (waiting up to `idle` for its first record) and applies it,
    /// retrying while the database is down. False if nothing came.
    pub(crate) async fn step(&mut self, idle: Duration) -> Result<bool, ProjectorError> {
        let records = self.receive(idle).await;
        if records.is_empty() {
            return Ok(false);
        }
        let mut backoff = Backoff::default();
        let report = loop {
            match self.applier.apply(&records, &self.positions).await {
                Ok(BatchOutcome::Committed(report)) => break report,
                Ok(BatchOutcome::Conflict) => {
                    return Err(ProjectorError::Rebuild(
                        "something else writes the rebuild's positions".into(),
                    ))
                }
                Err(error) => {
                    let delay = backoff.next();
                    tracing::warn!(error = %error, "database unavailable, retrying the batch");
                    tokio::time::sleep(delay).await;
                }
            }
        };
        for record in &records {
            self.partitions
                .entry(record_partition(record))
                .or_default()
                .records += 1;
        }
        self.positions.extend(&report.positions);
        for (&partition, &position) in &report.positions {
            self.partitions.entry(partition).or_default().position = position;
        }
        self.total.add(&report);
        Ok(true)
    }

    async fn receive(&mut self, idle: Duration) -> Vec<OwnedMessage> {
        let mut records = Vec::new();
        let mut deadline = tokio::time::Instant::now() + idle;
        while records.len() < self.batch_max {
            match tokio::time::timeout_at(deadline, self.records.next()).await {
                Ok(Some(Ok(message))) => {
                    if records.is_empty() {
                        // Once records flow, a short linger fills the batch.
                        deadline = tokio::time::Instant::now() + Duration::from_millis(50);
                    }
                    records.push(message);
                }
                Ok(Some(Err(error))) => {
                    tracing::warn!(error = %error, "kafka receive failed");
                    break;
                }
                Ok(None) | Err(_) => break,
            }
        }
        records
    }

    /// Records the replay still lacks to be at the `live` positions, over all partitions (a
    /// partition the live projector has no position for has nothing applied yet).
    pub(crate) fn behind(&self, live: &PositionMap) -> i64 {
        live.iter()
            .map(|(partition, &position)| {
                let low = self.low_watermarks.get(partition).copied().unwrap_or(0);
                (position - self.positions.get(partition).copied().unwrap_or(low)).max(0)
            })
            .sum()
    }

    fn done(&self) -> u64 {
        self.positions
            .iter()
            .map(|(p, &position)| position - self.low_watermarks.get(p).copied().unwrap_or(0))
            .sum::<i64>()
            .max(0) as u64
    }

    fn close(self) -> ReplayReport {
        ReplayReport {
            total: self.total,
            partitions: self.partitions,
        }
    }
}

fn record_partition(record: &OwnedMessage) -> i32 {
    use rdkafka::Message;
    record.partition()
}
