//! The at-least-once consume loop shared by the workers.
//!
//! Each assigned partition gets a task of its own that handles its records one at a time, in
//! order: decode the event, run the handler, and store the record's offset only once the
//! handler's outputs are durable (librdkafka commits stored offsets in the background). So the
//! offset stored for a partition is always the highest one fully done, while the partitions
//! run side by side: one image in a slow retry holds up only the images behind it in its own
//! partition, and a process works on as many images at once as it has partitions (what bounds
//! the CPU work is the handler's business; the processor's renders wait on a semaphore sized to
//! the cores).
//!
//! One dispatcher polls the consumer, which keeps the member in the group and runs rebalances,
//! and hands each record to its partition's task through a short queue. When a queue is full
//! (its task is busy or backing off), the dispatcher keeps the record aside and pauses that
//! partition alone until the task catches up. A partition the group took away is noticed
//! within a second: its task drops what it had queued, finishes the record in hand and stores
//! its offset (which librdkafka refuses once the partition is gone: the new owner handles the
//! record again, and handlers are idempotent).
//!
//! Transient handler errors are retried with exponential backoff and jitter in the partition's
//! task; a record that cannot be decoded, a permanent error, a panic in the handler, or a
//! transient error that outlived its attempts goes to the dead-letter topic, and only then is
//! its offset stored.
//!
//! A handler can also say a dependency is known to be down ([`HandlerError::Unavailable`], from
//! an open circuit breaker). Then the record is neither failed nor counted as an attempt: the
//! dispatcher pauses the whole assignment, keeps polling (so the group keeps us and rebalances
//! run) until [`EventHandler::until_available`] resolves, resumes, and every task that met the
//! outage handles its record again. A partition assigned meanwhile is paused as its first record
//! arrives; that record waits in its task like the others.
//!
//! The loop reports what it sees to a [`ConsumerHealth`] (records arriving, records in hand,
//! the assignment, outages) and asks it every second whether the member is stalled: lag it
//! should be serving and nothing happening (`consume/health.rs` has the rule). Then it leaves
//! the group and joins again with a new client from `reconnect`: the member's tasks stop as on
//! shutdown (none has a record in hand, or it would not be stalled), the consumer is closed,
//! and the next one starts from the group's committed offsets.
//!
//! On shutdown the dispatcher stops fetching, each task finishes the attempt in hand (for up to
//! [`FINISH_GRACE`]) and stores its offset, records not started stay unstored (they are
//! redelivered), and the consumer is closed.

mod dead_letter;
pub mod health;
pub mod lag;
mod partition;

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use backon::ExponentialBuilder;
use imgpipe_schemas::headers::ErrorClass;
use imgpipe_schemas::Event;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, TopicPartitionList};
use tokio::sync::{mpsc, watch, Notify};

use crate::BoxError;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::registry::EventCodec;
use crate::InfraError;

pub use dead_letter::DeadLetterProducer;
pub use health::{ConsumerHealth, Stall, StallReason};

/// How long the record in hand may take to finish after shutdown began; past it, it is
/// dropped unstored and handled again after the restart.
pub const FINISH_GRACE: Duration = Duration::from_secs(10);
/// Records queued for one partition's task before the partition is paused. Small: queued
/// records of a partition taken away are dropped, and fetched again by its new owner.
const QUEUE_PER_PARTITION: usize = 16;
/// How often the dispatcher looks for partitions the group took away.
const ASSIGNMENT_CHECK: Duration = Duration::from_secs(1);

/// Where a record sits in the log.
#[derive(Debug, Clone)]
pub struct RecordPosition {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// A handler failure, classified so the loop knows whether retrying can help.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The infrastructure did not answer (S3 5xx or timeout, broker, database): retry.
    #[error("{class}: {source}")]
    Transient {
        class: ErrorClass,
        #[source]
        source: BoxError,
    },
    /// Retrying gives the same answer: dead-letter at once.
    #[error("{class}: {source}")]
    Permanent {
        class: ErrorClass,
        #[source]
        source: BoxError,
    },
    /// A dependency is known to be down (its circuit breaker is open): wait for
    /// [`EventHandler::until_available`], then handle the record again. Not an attempt.
    #[error("{class} unavailable: {source}")]
    Unavailable {
        class: ErrorClass,
        #[source]
        source: BoxError,
    },
}

impl HandlerError {
    pub fn transient(class: ErrorClass, error: impl Into<BoxError>) -> Self {
        Self::Transient {
            class,
            source: error.into(),
        }
    }

    pub fn permanent(class: ErrorClass, error: impl Into<BoxError>) -> Self {
        Self::Permanent {
            class,
            source: error.into(),
        }
    }

    pub fn unavailable(class: ErrorClass, error: impl Into<BoxError>) -> Self {
        Self::Unavailable {
            class,
            source: error.into(),
        }
    }

    fn class(&self) -> ErrorClass {
        match self {
            Self::Transient { class, .. }
            | Self::Permanent { class, .. }
            | Self::Unavailable { class, .. } => *class,
        }
    }
}

/// What a worker does with one event.
pub trait EventHandler: Send + Sync {
    fn handle(
        &self,
        event: &Event,
        position: &RecordPosition,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Resolves once the dependency behind a [`HandlerError::Unavailable`] may answer again.
    /// Handlers that never report one keep this default, which only spaces out the attempts.
    fn until_available(&self) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(Duration::from_secs(1))
    }
}

/// How hard to retry transient failures.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// `None`: retry until it works or the service stops (for handlers whose only dependency
    /// is one the whole service needs, like the projector's database).
    pub max_attempts: Option<usize>,
    pub min_delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    fn backoff(&self) -> ExponentialBuilder {
        let builder = ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_jitter();
        match self.max_attempts {
            Some(attempts) => builder.with_max_times(attempts.saturating_sub(1)),
            None => builder.without_max_times(),
        }
    }
}

/// Header names on dead-lettered records. The record keeps its key, value and headers.
pub mod dead_letter_headers {
    pub const ORIGINAL_TOPIC: &str = "dlq-original-topic";
    pub const ORIGINAL_PARTITION: &str = "dlq-original-partition";
    pub const ORIGINAL_OFFSET: &str = "dlq-original-offset";
    pub const ERROR_CLASS: &str = "dlq-error-class";
    pub const ERROR_MESSAGE: &str = "dlq-error-message";
    pub const ATTEMPTS: &str = "dlq-attempts";
    pub const CONSUMER_GROUP: &str = "dlq-consumer-group";
}

/// What the partition tasks of one group member share.
struct Shared<H> {
    consumer: Arc<StreamConsumer>,
    codec: EventCodec,
    handler: Arc<H>,
    dead_letters: DeadLetterProducer,
    retry: RetryPolicy,
    health: ConsumerHealth,
    /// Cancelled on shutdown, or when this member leaves the group to rejoin.
    shutdown: CancellationToken,
    /// Counts the outages that ended: a task that met an outage during epoch `n` waits until
    /// it is past `n`.
    available: watch::Receiver<u64>,
    /// A task met an outage during the epoch it sends.
    outage: mpsc::UnboundedSender<u64>,
    /// A task took a record off its queue: room for the records kept aside.
    drained: Notify,
}

type PartitionKey = (String, i32);

/// The dispatcher's view of one partition.
struct PartitionQueue {
    records: mpsc::Sender<OwnedMessage>,
    /// Records that found the queue full, oldest first; the partition is paused while any wait.
    held: VecDeque<OwnedMessage>,
    /// Cancelled when the group took the partition away.
    revoked: CancellationToken,
}

/// A consume loop's parts: the first consumer (created and subscribed), how to make another
/// when the member must rejoin, and what handles the records.
pub struct Consumption<H, C> {
    pub consumer: StreamConsumer,
    /// Creates and subscribes a new consumer, to rejoin the group after a stall.
    pub reconnect: C,
    pub codec: EventCodec,
    pub handler: H,
    pub dead_letters: DeadLetterProducer,
    pub retry: RetryPolicy,
    pub health: ConsumerHealth,
}

/// Why one member's loop ended.
enum MemberEnd {
    Shutdown,
    Rejoin,
}

/// Runs the loop until `shutdown` is cancelled, rejoining the group with a new consumer
/// whenever the member stalls; closes each consumer on a blocking thread (dropping one can
/// block for the session timeout when the broker is gone).
pub async fn run<H, C>(consumption: Consumption<H, C>, shutdown: CancellationToken)
where
    H: EventHandler + 'static,
    C: Fn() -> Result<StreamConsumer, InfraError>,
{
    let Consumption {
        mut consumer,
        reconnect,
        codec,
        handler,
        dead_letters,
        retry,
        health,
    } = consumption;
    let handler = Arc::new(handler);
    loop {
        let (available_tx, available) = watch::channel(0u64);
        let (outage, outages) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            consumer: Arc::new(consumer),
            codec: codec.clone(),
            handler: Arc::clone(&handler),
            dead_letters: dead_letters.clone(),
            retry,
            health: health.clone(),
            shutdown: shutdown.child_token(),
            available,
            outage,
            drained: Notify::new(),
        });
        if let MemberEnd::Shutdown = run_member(shared, available_tx, outages).await {
            return;
        }
        consumer = loop {
            match reconnect() {
                Ok(consumer) => break consumer,
                Err(error) => {
                    tracing::error!(error = %error, "cannot create a consumer to rejoin, retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        tracing::info!("rejoined the consumer group with a new client");
    }
}

/// One group member's life: dispatches records until shutdown or a stall, then lets its tasks
/// finish and closes its consumer.
async fn run_member<H: EventHandler + 'static>(
    shared: Arc<Shared<H>>,
    available_tx: watch::Sender<u64>,
    mut outages: mpsc::UnboundedReceiver<u64>,
) -> MemberEnd {
    let stop = shared.shutdown.clone();
    let mut dispatcher = Dispatcher {
        shared: Arc::clone(&shared),
        partitions: HashMap::new(),
        tasks: JoinSet::new(),
        in_outage: false,
        outage_paused: HashSet::new(),
    };
    // Resolves the current outage: a task waiting on the handler's `until_available`.
    let (outage_over_tx, mut outage_over) = mpsc::channel::<()>(1);
    let mut outage_waiter: Option<tokio::task::JoinHandle<()>> = None;
    let mut assignment_check = tokio::time::interval(ASSIGNMENT_CHECK);
    let end = loop {
        tokio::select! {
            () = stop.cancelled() => break MemberEnd::Shutdown,
            message = shared.consumer.recv() => match message {
                // Owned, so the record can be queued while the consumer keeps polling.
                Ok(message) => dispatcher.route(message.detach()),
                Err(error) => {
                    tracing::warn!(error = %error, "kafka receive failed");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            },
            Some(epoch) = outages.recv() => {
                // Reports from an outage that already ended are answered by the epoch's change.
                if !dispatcher.in_outage && epoch == *available_tx.borrow() {
                    dispatcher.pause_for_outage();
                    let shared = Arc::clone(&shared);
                    let over = outage_over_tx.clone();
                    outage_waiter = Some(tokio::spawn(async move {
                        shared.handler.until_available().await;
                        let _ = over.send(()).await;
                    }));
                }
            },
            Some(()) = outage_over.recv() => {
                outage_waiter = None;
                available_tx.send_modify(|epoch| *epoch += 1);
                dispatcher.resume_after_outage();
            },
            () = shared.drained.notified() => dispatcher.release_held(),
            _ = assignment_check.tick() => {
                dispatcher.stop_revoked();
                dispatcher.release_held();
                dispatcher.reap_finished();
                if let Some(reason) = shared.health.should_rejoin() {
                    let snapshot = shared.health.snapshot();
                    tracing::warn!(
                        %reason, lag = ?snapshot.lag,
                        assigned_partitions = snapshot.assigned_partitions,
                        idle_secs = snapshot.seconds_since_progress as u64,
                        "lag nobody serves: leaving the group to rejoin"
                    );
                    break MemberEnd::Rejoin;
                }
            },
        }
    };
    if let Some(waiter) = outage_waiter {
        waiter.abort();
    }
    // Queues close; each task sees the stop, finishes the record in hand and stores it.
    stop.cancel();
    dispatcher.partitions.clear();
    while let Some(joined) = dispatcher.tasks.join_next().await {
        if let Err(error) = joined {
            tracing::error!(error = %error, "a partition task failed");
        }
    }
    let consumer = Arc::clone(&shared.consumer);
    drop(dispatcher);
    drop(shared);
    close(consumer).await;
    end
}

struct Dispatcher<H> {
    shared: Arc<Shared<H>>,
    partitions: HashMap<PartitionKey, PartitionQueue>,
    tasks: JoinSet<()>,
    /// The assignment is paused until the handler's dependency answers again.
    in_outage: bool,
    /// The partitions paused for the outage.
    outage_paused: HashSet<PartitionKey>,
}

impl<H: EventHandler + 'static> Dispatcher<H> {
    fn route(&mut self, message: OwnedMessage) {
        self.shared.health.progressed();
        let key = (message.topic().to_string(), message.partition());
        if self.in_outage && self.outage_paused.insert(key.clone()) {
            // Assigned during the outage: pause it like the rest.
            pause(&self.shared.consumer, &key);
        }
        let alive = self
            .partitions
            .get(&key)
            .is_some_and(|queue| !queue.records.is_closed());
        if !alive {
            let mut queue = self.spawn(&key);
            if let Some(gone) = self.partitions.remove(&key) {
                // Not reached: a task ends only when revoked or at shutdown. Keep its records.
                tracing::error!(partition = key.1, "partition task gone, starting another");
                queue.held = gone.held;
            }
            self.partitions.insert(key.clone(), queue);
        }
        let Some(queue) = self.partitions.get_mut(&key) else {
            return;
        };
        let consumer = &self.shared.consumer;
        if !queue.held.is_empty() {
            queue.held.push_back(message);
            // Paused already; again in case the partition was revoked and assigned back.
            pause(consumer, &key);
            return;
        }
        if let Err(error) = queue.records.try_send(message) {
            let (mpsc::error::TrySendError::Full(message)
            | mpsc::error::TrySendError::Closed(message)) = error;
            queue.held.push_back(message);
            pause(consumer, &key);
        }
    }

    fn spawn(&mut self, key: &PartitionKey) -> PartitionQueue {
        let (records, receiver) = mpsc::channel(QUEUE_PER_PARTITION);
        let revoked = CancellationToken::new();
        self.tasks.spawn(partition::work(
            Arc::clone(&self.shared),
            receiver,
            revoked.clone(),
        ));
        tracing::debug!(topic = %key.0, partition = key.1, "partition task started");
        PartitionQueue {
            records,
            held: VecDeque::new(),
            revoked,
        }
    }

    /// Moves records kept aside into queues with room; resumes a partition whose records are
    /// all queued again (unless an outage holds the whole assignment).
    fn release_held(&mut self) {
        let mut resume = Vec::new();
        for (key, queue) in &mut self.partitions {
            if queue.held.is_empty() {
                continue;
            }
            while let Some(message) = queue.held.pop_front() {
                if let Err(error) = queue.records.try_send(message) {
                    let (mpsc::error::TrySendError::Full(message)
                    | mpsc::error::TrySendError::Closed(message)) = error;
                    queue.held.push_front(message);
                    break;
                }
            }
            if queue.held.is_empty() {
                resume.push(key.clone());
            }
        }
        if !self.in_outage {
            for key in resume {
                resume_partition(&self.shared.consumer, &key);
            }
        }
    }

    /// Stops the tasks of partitions no longer assigned to this member.
    fn stop_revoked(&mut self) {
        let Ok(assignment) = self.shared.consumer.assignment() else {
            return;
        };
        self.shared
            .health
            .set_assignment(assignment.elements().iter().map(|e| e.partition()));
        let consumer = &self.shared.consumer;
        self.partitions.retain(|key, queue| {
            let kept = assignment.find_partition(&key.0, key.1).is_some();
            if !kept {
                tracing::info!(topic = %key.0, partition = key.1, "partition revoked, its task stops");
                queue.revoked.cancel();
                if !queue.held.is_empty() {
                    // Paused for its task; should it come back, it must not come back paused.
                    resume_partition(consumer, key);
                }
            }
            kept
        });
    }

    fn reap_finished(&mut self) {
        while let Some(joined) = self.tasks.try_join_next() {
            if let Err(error) = joined {
                tracing::error!(error = %error, "a partition task failed");
            }
        }
    }

    fn pause_for_outage(&mut self) {
        self.in_outage = true;
        self.shared.health.set_waiting_on_dependency(true);
        let assignment = self.shared.consumer.assignment().unwrap_or_default();
        if let Err(error) = self.shared.consumer.pause(&assignment) {
            tracing::warn!(error = %error, "could not pause the assignment");
        }
        self.outage_paused = assignment.elements().iter().map(key_of).collect();
        tracing::warn!(
            partitions = assignment.count(),
            "a dependency is unavailable, consumption paused until it answers"
        );
    }

    fn resume_after_outage(&mut self) {
        self.in_outage = false;
        self.shared.health.set_waiting_on_dependency(false);
        // What was paused, also partitions revoked meanwhile (should they come back, they must
        // not come back paused), and what is assigned now.
        let assignment = self.shared.consumer.assignment().unwrap_or_default();
        let mut keys = std::mem::take(&mut self.outage_paused);
        keys.extend(assignment.elements().iter().map(key_of));
        let mut resume = TopicPartitionList::new();
        for key in keys {
            // A partition with records kept aside stays paused until its task has room.
            if self.partitions.get(&key).is_none_or(|q| q.held.is_empty()) {
                resume.add_partition(&key.0, key.1);
            }
        }
        if let Err(error) = self.shared.consumer.resume(&resume) {
            tracing::warn!(error = %error, "could not resume the assignment");
        }
        tracing::info!("dependency available again, consumption resumed");
    }
}

fn key_of(element: &rdkafka::topic_partition_list::TopicPartitionListElem<'_>) -> PartitionKey {
    (element.topic().to_string(), element.partition())
}

fn pause(consumer: &StreamConsumer, (topic, partition): &PartitionKey) {
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, *partition);
    if let Err(error) = consumer.pause(&list) {
        tracing::warn!(error = %error, partition, "could not pause a partition");
    }
}

fn resume_partition(consumer: &StreamConsumer, (topic, partition): &PartitionKey) {
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, *partition);
    // A partition revoked meanwhile is no longer ours to resume; librdkafka skips it.
    if let Err(error) = consumer.resume(&list) {
        tracing::warn!(error = %error, partition, "could not resume a partition");
    }
}

async fn close(consumer: Arc<StreamConsumer>) {
    consumer.unsubscribe();
    if let Err(error) = tokio::task::spawn_blocking(move || drop(consumer)).await {
        tracing::warn!(error = %error, "closing the consumer failed");
    }
}
