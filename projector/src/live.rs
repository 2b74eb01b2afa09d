//! The live projector's consume loop: batches of records, each applied exactly once through
//! [`Applier`], at positions that Postgres, not Kafka, keeps.
//!
//! The consumer joins the group `imgpipe-projector` (so instances share the partitions), but
//! a partition it is assigned starts at the position stored in Postgres, set by the rebalance
//! callback. Kafka's committed offsets are still stored after each commit, for `rpk group
//! describe`, and never read.
//!
//! The loop tells a [`ConsumerHealth`] what it sees (batches arriving and in hand, the database
//! retried, the assignment) and, while it waits for a first record, asks it every second
//! whether the member is stalled; then [`run`] returns [`LiveEnd::Rejoin`] and the caller
//! closes the consumer and joins again with a new one. A batch in hand is never cut short:
//! only the wait for its first record is interrupted, which loses nothing (`recv` is
//! cancel-safe).

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use imgpipe_infra::consume::ConsumerHealth;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::OwnedMessage;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::util::Timeout;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::batch::{Applier, BatchOutcome};
use crate::error::ProjectorError;
use crate::metrics::ProjectorMetrics;
use crate::positions::{self, PositionMap, SharedPositions};

/// Assigns each partition at its position in Postgres (as last read or written by this
/// process; a stale one is caught by the first batch's compare-and-set).
pub(crate) struct PositionsContext {
    pub(crate) positions: SharedPositions,
}

impl ClientContext for PositionsContext {}

impl ConsumerContext for PositionsContext {
    fn rebalance(
        &self,
        base_consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let stored = self.positions.snapshot();
                let partitions: Vec<(String, i32)> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect();
                for (topic, partition) in &partitions {
                    let offset = stored
                        .get(partition)
                        .map_or(Offset::Beginning, |&next| Offset::Offset(next));
                    if let Err(error) = tpl.set_partition_offset(topic, *partition, offset) {
                        tracing::error!(error = %error, partition, "cannot set the start offset");
                    }
                }
                // The eager protocol (the configured assignment strategies): the whole
                // assignment at once, at our offsets.
                match base_consumer.assign(tpl) {
                    Ok(()) => tracing::info!(
                        partitions = ?partitions.iter().map(|p| p.1).collect::<Vec<_>>(),
                        "partitions assigned at the positions stored in Postgres"
                    ),
                    Err(error) => tracing::error!(error = %error, "assign failed"),
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                if let Err(error) = base_consumer.unassign() {
                    tracing::error!(error = %error, "unassign failed");
                }
            }
            other => tracing::error!(error = ?other, "rebalance error"),
        }
    }
}

pub(crate) type LiveConsumer = StreamConsumer<PositionsContext>;

pub(crate) struct BatchSettings {
    pub(crate) max: usize,
    pub(crate) linger: Duration,
}

/// What the live loop works with; the consumer is the caller's (it closes it).
pub(crate) struct Live<'a> {
    pub(crate) consumer: &'a Arc<LiveConsumer>,
    pub(crate) applier: &'a Applier,
    pub(crate) positions: &'a SharedPositions,
    pub(crate) batch: &'a BatchSettings,
    pub(crate) metrics: &'a ProjectorMetrics,
    pub(crate) health: &'a ConsumerHealth,
}

/// Why [`run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LiveEnd {
    Shutdown,
    /// The member stalled: close this consumer and join again with a new one.
    Rejoin,
}

/// How often the loop, waiting for records, looks at its assignment and asks whether it is
/// stalled.
const HEALTH_CHECK: Duration = Duration::from_secs(1);

/// Consumes until `shutdown` is cancelled or the member stalls. A batch in hand is finished
/// (committed) first, unless the database is down, in which case it is left for the next
/// start. The caller closes the consumer.
pub(crate) async fn run(live: Live<'_>, shutdown: &CancellationToken) -> LiveEnd {
    let Live {
        consumer,
        applier,
        positions,
        batch,
        metrics,
        health,
    } = live;
    let mut backoff = Backoff::default();
    'receive: loop {
        let first = tokio::select! {
            () = shutdown.cancelled() => break LiveEnd::Shutdown,
            () = until_stalled(consumer, health) => break LiveEnd::Rejoin,
            first = first_record(consumer) => first,
        };
        let records = linger(consumer, first, batch).await;
        let in_hand = health.in_hand();
        let started = Instant::now();
        loop {
            match applier.apply(&records, &positions.snapshot()).await {
                Ok(BatchOutcome::Committed(report)) => {
                    backoff = Backoff::default();
                    positions.update(&report.positions);
                    store_offsets(consumer, &applier.topic, &report.positions);
                    metrics.batch(&report, started.elapsed());
                    tracing::debug!(
                        records = report.records, duplicates = report.duplicates,
                        positions = ?report.positions, "batch committed"
                    );
                    break;
                }
                Ok(BatchOutcome::Conflict) => {
                    metrics.conflict();
                    tracing::info!(
                        "stored positions moved (another instance or a rebuild), seeking to them"
                    );
                    if !resync(consumer, applier, positions, shutdown).await {
                        break 'receive LiveEnd::Shutdown;
                    }
                    break;
                }
                Err(error) => {
                    health.set_waiting_on_dependency(true);
                    let delay = backoff.next();
                    tracing::warn!(
                        error = %error, retry_in_ms = delay.as_millis() as u64,
                        "database unavailable, retrying the batch"
                    );
                    tokio::select! {
                        () = shutdown.cancelled() => break 'receive LiveEnd::Shutdown,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        health.set_waiting_on_dependency(false);
        drop(in_hand);
    }
}

/// Resolves once the member is stalled (keeping the health's view of the assignment fresh).
async fn until_stalled(consumer: &LiveConsumer, health: &ConsumerHealth) {
    let mut tick = tokio::time::interval(HEALTH_CHECK);
    loop {
        tick.tick().await;
        if let Ok(assignment) = consumer.assignment() {
            health.set_assignment(assignment.elements().iter().map(|e| e.partition()));
        }
        if let Some(reason) = health.should_rejoin() {
            let snapshot = health.snapshot();
            tracing::warn!(
                %reason, lag = ?snapshot.lag,
                assigned_partitions = snapshot.assigned_partitions,
                idle_secs = snapshot.seconds_since_progress as u64,
                "lag nobody serves: leaving the group to rejoin"
            );
            return;
        }
    }
}

/// The next record (cancel-safe: `recv` is).
async fn first_record(consumer: &LiveConsumer) -> OwnedMessage {
    loop {
        match consumer.recv().await {
            Ok(message) => return message.detach(),
            Err(error) => {
                tracing::warn!(error = %error, "kafka receive failed");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Takes more records after `first` until the batch is full or the linger is over.
async fn linger(
    consumer: &LiveConsumer,
    first: OwnedMessage,
    batch: &BatchSettings,
) -> Vec<OwnedMessage> {
    let mut records = vec![first];
    let deadline = tokio::time::Instant::now() + batch.linger;
    while records.len() < batch.max {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(message)) => records.push(message.detach()),
            Ok(Err(error)) => {
                tracing::warn!(error = %error, "kafka receive failed");
                break;
            }
            Err(_) => break,
        }
    }
    records
}

/// After a conflict: reloads the positions from Postgres and seeks every assigned partition
/// there (the batch in hand is dropped; what it held is fetched again from the right place).
/// False if `shutdown` came first.
async fn resync(
    consumer: &Arc<LiveConsumer>,
    applier: &Applier,
    positions: &SharedPositions,
    shutdown: &CancellationToken,
) -> bool {
    let mut backoff = Backoff::default();
    loop {
        match reload_and_seek(consumer, applier, positions).await {
            Ok(()) => return true,
            Err(error) => {
                let delay = backoff.next();
                tracing::warn!(error = %error, "could not seek to the stored positions, retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return false,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

async fn reload_and_seek(
    consumer: &Arc<LiveConsumer>,
    applier: &Applier,
    positions: &SharedPositions,
) -> Result<(), ProjectorError> {
    let stored = positions::load(&applier.pool, &applier.topic).await?;
    positions.replace(stored.clone());
    seek(consumer, &applier.topic, &stored).await
}

async fn seek(
    consumer: &Arc<LiveConsumer>,
    topic: &str,
    stored: &PositionMap,
) -> Result<(), ProjectorError> {
    let assignment = consumer.assignment()?;
    let mut seeks = TopicPartitionList::new();
    for element in assignment.elements_for_topic(topic) {
        let offset = stored
            .get(&element.partition())
            .map_or(Offset::Beginning, |&next| Offset::Offset(next));
        seeks.add_partition_offset(topic, element.partition(), offset)?;
    }
    if seeks.count() == 0 {
        return Ok(());
    }
    let consumer = Arc::clone(consumer);
    // A seek with a timeout waits for librdkafka, so it runs on a blocking thread.
    let result: KafkaResult<TopicPartitionList> = tokio::task::spawn_blocking(move || {
        consumer.seek_partitions(seeks, Timeout::After(Duration::from_secs(10)))
    })
    .await?;
    for element in result?.elements() {
        if let Err(source) = element.error() {
            return Err(ProjectorError::Seek {
                partition: element.partition(),
                source,
            });
        }
    }
    Ok(())
}

/// Stores the committed positions as Kafka offsets (committed in the background), only so
/// `rpk group describe` shows the projector's progress; they are never read back.
fn store_offsets(consumer: &LiveConsumer, topic: &str, advanced: &PositionMap) {
    for (&partition, &next) in advanced {
        // librdkafka stores the offset after the one given: the next to read.
        if let Err(error) = consumer.store_offset(topic, partition, next - 1) {
            tracing::debug!(error = %error, partition, "could not store the Kafka offset");
        }
    }
}

pub(crate) async fn close(consumer: Arc<LiveConsumer>) {
    consumer.unsubscribe();
    // Dropping a consumer can block for the session timeout when the broker is gone.
    if let Err(error) = tokio::task::spawn_blocking(move || drop(consumer)).await {
        tracing::warn!(error = %error, "closing the consumer failed");
    }
}

/// Exponential backoff with jitter from 200 ms to 10 s, without end: the database is the
/// projector's only output, so nothing progresses until it answers, and nothing is given up.
pub(crate) struct Backoff(backon::ExponentialBackoff);

impl Default for Backoff {
    fn default() -> Self {
        Self(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(10))
                .with_jitter()
                .without_max_times()
                .build(),
        )
    }
}

impl Backoff {
    pub(crate) fn next(&mut self) -> Duration {
        self.0.next().unwrap_or(Duration::from_secs(10))
    }
}
