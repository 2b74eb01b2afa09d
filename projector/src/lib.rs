//! The projector: consumes every event and keeps the Postgres read models that answer status
//! queries and hold each image's timeline. Each batch of records and the partitions' positions
//! commit in one transaction (exactly-once); `rebuild` replays the log into new tables and
//! swaps them in.

pub mod batch;
pub mod config;
pub mod db;
mod error;
mod live;
pub mod metrics;
pub mod orphans;
pub mod positions;
pub mod rebuild;
pub mod startup;

use std::time::Duration;

use rdkafka::client::{Client, ClientContext};
use rdkafka::error::KafkaResult;

pub use batch::BatchReport;
pub use config::Config;
pub use error::ProjectorError;
pub use startup::Projector;

/// Low and high watermark of every partition of `topic`. Blocks: call on a blocking thread.
pub(crate) fn watermarks<C: ClientContext>(
    client: &Client<C>,
    topic: &str,
) -> KafkaResult<std::collections::BTreeMap<i32, (i64, i64)>> {
    let timeout = Duration::from_secs(10);
    let metadata = client.fetch_metadata(Some(topic), timeout)?;
    let mut marks = std::collections::BTreeMap::new();
    for partition in metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions())
    {
        let id = partition.id();
        marks.insert(id, client.fetch_watermarks(topic, id, timeout)?);
    }
    Ok(marks)
}
