//! Reading a topic outside any consumer group's assignment: the one way imgpipe looks at the
//! log's partition ends, scans it up to a snapshot of those ends (replay, rebuild, redrive,
//! `imgpipe events`), follows it, and measures a group's lag.
//!
//! A reader is a consumer built from the one consumer configuration
//! ([`KafkaConfig::consumer_config`]: brokers, security, `fetch.wait.max.ms`, the deployment's
//! group prefix) that is assigned partitions and never subscribes, so it never joins or
//! rebalances its group. Its group id only matters to [`LogReader::committed`] and
//! [`LogReader::commit`]; nothing is committed unless the caller asks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::{InfraError, KafkaConfig};

/// How long a metadata, watermark or offset query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a bounded scan waits for its next record before taking the broker's silence for a
/// fault ([`Scan::next_within`]): the scan knows there is more to read.
pub const READ_STALL: Duration = Duration::from_secs(30);

/// The offsets a partition holds: `low` is its first record's, `high` the next record's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub low: i64,
    pub high: i64,
}

impl Span {
    pub fn records(self) -> i64 {
        (self.high - self.low).max(0)
    }

    /// Records after `position` (the next offset to read; `None`: nothing read yet).
    pub fn after(self, position: Option<i64>) -> i64 {
        (self.high - position.unwrap_or(self.low).max(self.low)).max(0)
    }
}

/// Every partition's span at one moment: the snapshot a bounded scan reads up to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionEnds(BTreeMap<i32, Span>);

impl PartitionEnds {
    pub fn iter(&self) -> impl Iterator<Item = (i32, Span)> + '_ {
        self.0.iter().map(|(&partition, &span)| (partition, span))
    }

    pub fn get(&self, partition: i32) -> Option<Span> {
        self.0.get(&partition).copied()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Records in the log now, over all partitions.
    pub fn records(&self) -> i64 {
        self.0.values().map(|span| span.records()).sum()
    }

    /// Per partition, the records after `positions` (next offsets to read; a partition
    /// without one counts from its start).
    pub fn lag(&self, positions: &BTreeMap<i32, i64>) -> Vec<(i32, i64)> {
        self.iter()
            .map(|(partition, span)| (partition, span.after(positions.get(&partition).copied())))
            .collect()
    }
}

impl FromIterator<(i32, Span)> for PartitionEnds {
    fn from_iter<T: IntoIterator<Item = (i32, Span)>>(iter: T) -> Self {
        Self(iter.into_iter().collect())
    }
}

/// Where a scan starts on each partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartAt {
    Beginning,
    End,
    /// The same offset on every partition (clamped to what the partition holds).
    Offset(i64),
    /// Per partition (next offset to read); partitions not named start at their beginning.
    Positions(BTreeMap<i32, i64>),
}

impl StartAt {
    fn offset(&self, partition: i32, span: Span) -> i64 {
        let wanted = match self {
            StartAt::Beginning => span.low,
            StartAt::End => span.high,
            StartAt::Offset(offset) => *offset,
            StartAt::Positions(positions) => positions.get(&partition).copied().unwrap_or(span.low),
        };
        // Not `clamp`: it panics should a span ever come with its ends crossed.
        wanted.max(span.low).min(span.high)
    }
}

/// A consumer of one topic that is assigned partitions and never joins its group.
#[derive(Clone)]
pub struct LogReader {
    consumer: Arc<Closing>,
    topic: String,
}

/// The consumer, dropped on a blocking thread: closing joins librdkafka's threads, which must
/// not happen on an async worker.
struct Closing(Option<StreamConsumer>);

impl std::ops::Deref for Closing {
    type Target = StreamConsumer;

    fn deref(&self) -> &StreamConsumer {
        self.0.as_ref().expect("only taken on drop")
    }
}

impl Drop for Closing {
    fn drop(&mut self) {
        if let (Some(consumer), Ok(runtime)) =
            (self.0.take(), tokio::runtime::Handle::try_current())
        {
            runtime.spawn_blocking(move || drop(consumer));
        }
    }
}

impl LogReader {
    /// A reader of `topic`, as client `client_id` in the (prefixed) consumer group `group`.
    pub fn new(
        config: &KafkaConfig,
        client_id: &str,
        group: &str,
        topic: &str,
    ) -> Result<Self, InfraError> {
        let consumer: StreamConsumer = config
            .consumer_config(client_id, group)
            // Nothing is committed unless `commit` is called.
            .set("enable.auto.commit", "false")
            .create()?;
        Ok(Self {
            consumer: Arc::new(Closing(Some(consumer))),
            topic: topic.to_string(),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Every partition's span now; an error when the topic does not exist.
    pub async fn ends(&self) -> Result<PartitionEnds, InfraError> {
        self.blocking(|consumer, topic| {
            partitions(consumer, topic)?
                .into_iter()
                .map(|partition| {
                    let (low, high) = consumer.fetch_watermarks(topic, partition, QUERY_TIMEOUT)?;
                    Ok((partition, Span { low, high }))
                })
                .collect()
        })
        .await
    }

    /// The group's committed positions (next offsets to read) on the partitions it has
    /// committed on.
    pub async fn committed(&self) -> Result<BTreeMap<i32, i64>, InfraError> {
        self.blocking(|consumer, topic| {
            let mut wanted = TopicPartitionList::new();
            for partition in partitions(consumer, topic)? {
                wanted.add_partition(topic, partition);
            }
            let committed = consumer.committed_offsets(wanted, QUERY_TIMEOUT)?;
            Ok(committed
                .elements()
                .iter()
                .filter_map(|element| match element.offset() {
                    Offset::Offset(offset) => Some((element.partition(), offset)),
                    _ => None,
                })
                .collect())
        })
        .await
    }

    /// Commits `positions` (next offsets to read) as the group's, synchronously.
    pub async fn commit(&self, positions: &BTreeMap<i32, i64>) -> Result<(), InfraError> {
        if positions.is_empty() {
            return Ok(());
        }
        let mut offsets = TopicPartitionList::new();
        for (&partition, &next) in positions {
            offsets.add_partition_offset(&self.topic, partition, Offset::Offset(next))?;
        }
        self.blocking(move |consumer, _| Ok(consumer.commit(&offsets, CommitMode::Sync)?))
            .await
    }

    /// Reads from `from` up to `until` (each partition's `high` there), then ends.
    pub fn scan(&self, from: &StartAt, until: &PartitionEnds) -> Result<Scan, InfraError> {
        let mut remaining = BTreeMap::new();
        let mut assignment = TopicPartitionList::new();
        for (partition, span) in until.iter() {
            let start = from.offset(partition, span);
            if start < span.high {
                remaining.insert(partition, span.high);
                assignment.add_partition_offset(&self.topic, partition, Offset::Offset(start))?;
            }
        }
        self.consumer.assign(&assignment)?;
        Ok(Scan {
            reader: self.clone(),
            remaining: Some(remaining),
        })
    }

    /// Reads from `from` (on the partitions of `ends`) and keeps going as records arrive.
    pub fn follow(&self, from: &StartAt, ends: &PartitionEnds) -> Result<Scan, InfraError> {
        let mut assignment = TopicPartitionList::new();
        for (partition, span) in ends.iter() {
            let start = from.offset(partition, span);
            assignment.add_partition_offset(&self.topic, partition, Offset::Offset(start))?;
        }
        self.consumer.assign(&assignment)?;
        Ok(Scan {
            reader: self.clone(),
            remaining: None,
        })
    }

    /// librdkafka's metadata and offset queries block: on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        query: impl FnOnce(&StreamConsumer, &str) -> Result<T, InfraError> + Send + 'static,
    ) -> Result<T, InfraError> {
        let consumer = Arc::clone(&self.consumer);
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || query(&consumer, &topic))
            .await
            .map_err(InfraError::Task)?
    }
}

/// The partition ids of `topic`; an error when it does not exist.
fn partitions(consumer: &StreamConsumer, topic: &str) -> Result<Vec<i32>, InfraError> {
    let metadata = consumer.fetch_metadata(Some(topic), QUERY_TIMEOUT)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(InfraError::NoSuchTopic(topic.to_string()));
    }
    Ok(partitions)
}

/// Records of a [`LogReader::scan`] (bounded) or [`LogReader::follow`] (unbounded), in order
/// per partition.
pub struct Scan {
    reader: LogReader,
    /// Bounded: the end still to reach per partition; a partition leaves once read to its end.
    remaining: Option<BTreeMap<i32, i64>>,
}

impl Scan {
    /// The next record; `None` once a bounded scan has read every partition to its end.
    /// Waits as long as it takes: callers bound the wait with `tokio::time::timeout`.
    pub async fn next(&mut self) -> Option<Result<OwnedMessage, InfraError>> {
        loop {
            if self.remaining.as_ref().is_some_and(BTreeMap::is_empty) {
                return None;
            }
            let message = match self.reader.consumer.recv().await {
                Ok(message) => message.detach(),
                Err(error) => return Some(Err(error.into())),
            };
            let Some(remaining) = self.remaining.as_mut() else {
                return Some(Ok(message));
            };
            let partition = message.partition();
            let Some(&end) = remaining.get(&partition) else {
                continue;
            };
            if message.offset() >= end {
                continue;
            }
            if message.offset() + 1 >= end {
                remaining.remove(&partition);
            }
            return Some(Ok(message));
        }
    }

    /// [`Scan::next`], or [`InfraError::ReadStalled`] once the broker sent nothing for
    /// `stall` (a bounded scan knows there is more to read, so silence is a fault).
    pub async fn next_within(
        &mut self,
        stall: Duration,
    ) -> Result<Option<OwnedMessage>, InfraError> {
        match tokio::time::timeout(stall, self.next()).await {
            Ok(Some(message)) => message.map(Some),
            Ok(None) => Ok(None),
            Err(_) => Err(InfraError::ReadStalled {
                topic: self.reader.topic.clone(),
                waited: stall,
                unread: self.unfinished(),
            }),
        }
    }

    /// The records as a stream, to merge scans of several topics.
    pub fn into_stream(self) -> impl futures::Stream<Item = Result<OwnedMessage, InfraError>> {
        futures::stream::unfold(self, |mut scan| async move {
            let record = scan.next().await?;
            Some((record, scan))
        })
    }

    /// Partitions a bounded scan has not read to their end yet.
    pub fn unfinished(&self) -> usize {
        self.remaining.as_ref().map_or(0, BTreeMap::len)
    }
}

/// A record's header as text (lossy UTF-8), if the record has it.
pub fn header(message: &impl Message, key: &str) -> Option<String> {
    message.headers().and_then(|headers| {
        headers
            .iter()
            .find(|h| h.key == key)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_is_clamped_to_what_the_partition_holds() {
        let span = Span { low: 10, high: 20 };
        assert_eq!(StartAt::Beginning.offset(0, span), 10);
        assert_eq!(StartAt::End.offset(0, span), 20);
        assert_eq!(StartAt::Offset(3).offset(0, span), 10);
        assert_eq!(StartAt::Offset(15).offset(0, span), 15);
        assert_eq!(StartAt::Offset(99).offset(0, span), 20);
        let positions = StartAt::Positions(BTreeMap::from([(1, 12)]));
        assert_eq!(positions.offset(1, span), 12);
        assert_eq!(
            positions.offset(2, span),
            10,
            "unnamed partitions start at the beginning"
        );
    }

    #[test]
    fn lag_counts_from_the_start_where_nothing_was_read() {
        let ends: PartitionEnds = [(0, Span { low: 5, high: 9 }), (1, Span { low: 0, high: 4 })]
            .into_iter()
            .collect();
        let lag = ends.lag(&BTreeMap::from([(1, 3), (0, 2)]));
        assert_eq!(
            lag,
            vec![(0, 4), (1, 1)],
            "a position below low counts from low"
        );
        assert_eq!(ends.lag(&BTreeMap::new()), vec![(0, 4), (1, 4)]);
        assert_eq!(ends.records(), 8);
    }
}
