//! A consumer group's lag, measured the one way for every group: each partition's high
//! watermark minus the group's position there (a partition without a position counts from its
//! start). Where the position lives is the group's business ([`Positions`]): Kafka's committed
//! offsets for the processor, the read model's own table for the projector.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::health::{ConsumerHealth, HealthSnapshot};
use crate::log_reader::LogReader;

/// How often the lag is measured.
pub const LAG_INTERVAL: Duration = Duration::from_secs(5);

/// Where a group's positions (next offsets to read) are kept.
pub trait Positions: Send + Sync + 'static {
    fn load(
        &self,
    ) -> impl Future<Output = Result<BTreeMap<i32, i64>, Box<dyn std::error::Error + Send + Sync>>> + Send;
}

/// The offsets the group committed in Kafka, read by a reader in that group.
pub struct CommittedOffsets(pub LogReader);

impl Positions for CommittedOffsets {
    async fn load(&self) -> Result<BTreeMap<i32, i64>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(self.0.committed().await?)
    }
}

/// Every [`LAG_INTERVAL`] until `shutdown`: measures the lag of each partition of `reader`'s
/// topic, tells `health` (the stall rule needs it), and hands the health snapshot, with the
/// lag in it, to `record` (the service records it into its metrics).
pub async fn report_lag(
    reader: LogReader,
    positions: impl Positions,
    health: ConsumerHealth,
    record: impl Fn(&HealthSnapshot) + Send,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(LAG_INTERVAL);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticks.tick() => {}
        }
        match measure(&reader, &positions).await {
            Ok(lag) => health.record_lag(lag),
            Err(error) => tracing::debug!(error = %error, "could not measure the consumer lag"),
        }
        record(&health.snapshot());
    }
}

async fn measure(
    reader: &LogReader,
    positions: &impl Positions,
) -> Result<Vec<(i32, i64)>, Box<dyn std::error::Error + Send + Sync>> {
    let lag = partition_lag(reader, positions).await?;
    Ok(lag.iter().map(|p| (p.partition, p.lag)).collect())
}

/// One partition of a group's lag on `reader`'s topic (the console's operator page shows
/// them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionLag {
    pub partition: i32,
    /// The partition's end (the next offset written).
    pub end: i64,
    /// The group's position (next offset to read), if it has one there.
    pub position: Option<i64>,
    /// Records after the position (from the partition's start without one).
    pub lag: i64,
}

/// Measures the lag now, per partition of `reader`'s topic.
pub async fn partition_lag(
    reader: &LogReader,
    positions: &impl Positions,
) -> Result<Vec<PartitionLag>, Box<dyn std::error::Error + Send + Sync>> {
    let positions = positions.load().await?;
    let ends = reader.ends().await?;
    Ok(ends
        .iter()
        .map(|(partition, span)| {
            let position = positions.get(&partition).copied();
            PartitionLag {
                partition,
                end: span.high,
                position,
                lag: span.after(position),
            }
        })
        .collect())
}
