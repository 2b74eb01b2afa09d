//! One partition's task: its records one at a time, in order, each retried, dead-lettered or
//! waited on as its outcome says, and its offset stored once done.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use backon::BackoffBuilder;
use futures::FutureExt;
use imgpipe_schemas::headers::ErrorClass;
use imgpipe_schemas::Event;
use rdkafka::consumer::Consumer;
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{EventHandler, HandlerError, RecordPosition, Shared, FINISH_GRACE};

enum Outcome {
    /// Handled or dead-lettered: store the offset.
    Done,
    /// A dependency is down: wait for it and handle the record again.
    Unavailable,
    Stopped,
}

/// Handles the partition's records until it is revoked, its queue closes or the service stops.
pub(super) async fn work<H: EventHandler + 'static>(
    shared: Arc<Shared<H>>,
    mut records: mpsc::Receiver<OwnedMessage>,
    revoked: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            biased;
            () = shared.shutdown.cancelled() => break,
            () = revoked.cancelled() => break,
            message = records.recv() => match message {
                Some(message) => message,
                None => break,
            },
        };
        shared.drained.notify_one();
        let in_hand = shared.health.in_hand();
        let record = handle(&shared, &message);
        tokio::pin!(record);
        let done = tokio::select! {
            done = &mut record => done,
            () = shared.shutdown.cancelled() => {
                // Finish the attempt in hand rather than redo it after the restart.
                tokio::time::timeout(FINISH_GRACE, &mut record).await.unwrap_or(false)
            }
        };
        drop(in_hand);
        if !done {
            // Stopped mid-record: leave its offset unstored so it is handled again.
            break;
        }
        // librdkafka stores the offset after this one: the next to read.
        if let Err(error) =
            shared
                .consumer
                .store_offset(message.topic(), message.partition(), message.offset())
        {
            // After a rebalance the partition may belong to another member; it will redo it.
            tracing::warn!(error = %error, partition = message.partition(), "could not store offset");
        }
    }
}

/// Handles one record to its end; false if the service stopped first.
async fn handle<H: EventHandler>(shared: &Shared<H>, message: &OwnedMessage) -> bool {
    loop {
        let epoch = *shared.available.borrow();
        match process(shared, message).await {
            Outcome::Done => return true,
            Outcome::Stopped => return false,
            Outcome::Unavailable => {
                // The dispatcher pauses the assignment and ends the outage for every task.
                let _ = shared.outage.send(epoch);
                let mut available = shared.available.clone();
                tokio::select! {
                    () = shared.shutdown.cancelled() => return false,
                    ended = available.wait_for(|now| *now > epoch) => {
                        if ended.is_err() {
                            return false;
                        }
                    }
                }
            }
        }
    }
}

/// Decodes the record and handles its event.
async fn process<H: EventHandler>(shared: &Shared<H>, message: &OwnedMessage) -> Outcome {
    let position = RecordPosition {
        topic: message.topic().to_string(),
        partition: message.partition(),
        offset: message.offset(),
    };
    match decode(shared, message, &position).await {
        Ok(event) => handle_event(shared, message, &event, &position).await,
        Err(outcome) => outcome,
    }
}

/// The record's event. Otherwise `Done` once an undecodable record is dead-lettered, or
/// `Stopped` if the service stops while the registry does not answer.
async fn decode<H: EventHandler>(
    shared: &Shared<H>,
    message: &OwnedMessage,
    position: &RecordPosition,
) -> Result<Event, Outcome> {
    let payload = message.payload().unwrap_or_default();
    let decoded = loop {
        // Only a registry that does not answer fails here; wait for it rather than
        // dead-letter records that are fine.
        match shared.codec.decode(payload).await {
            Ok(decoded) => break decoded,
            Err(error) => {
                tracing::warn!(error = %error, "schema registry unavailable, retrying");
                tokio::select! {
                    () = shared.shutdown.cancelled() => return Err(Outcome::Stopped),
                    () = tokio::time::sleep(shared.retry.max_delay) => {}
                }
            }
        }
    };
    match decoded {
        Ok(event) => Ok(event),
        Err(error) => {
            tracing::error!(
                topic = %position.topic, partition = position.partition,
                offset = position.offset, error = %error,
                "undecodable record, dead-lettering it"
            );
            let failure = HandlerError::permanent(ErrorClass::UndecodableRecord, error);
            shared.dead_letters.send(message, &failure, 1).await;
            Err(Outcome::Done)
        }
    }
}

/// Runs the handler until it succeeds or asks to wait for a dependency, retrying transient
/// failures with backoff; dead-letters the record once the handler gives up.
async fn handle_event<H: EventHandler>(
    shared: &Shared<H>,
    message: &OwnedMessage,
    event: &Event,
    position: &RecordPosition,
) -> Outcome {
    let mut delays = shared.retry.backoff().build();
    let mut attempts = 0usize;
    let error = loop {
        attempts += 1;
        match attempt(shared, event, position).await {
            Ok(()) => return Outcome::Done,
            Err(error @ HandlerError::Transient { .. }) => match delays.next() {
                Some(delay) => {
                    tracing::warn!(
                        image_id = %event.image_id, event_id = %event.event_id,
                        partition = position.partition, error = %error, attempts,
                        retry_in_ms = delay.as_millis() as u64, "transient failure, retrying"
                    );
                    tokio::select! {
                        () = shared.shutdown.cancelled() => return Outcome::Stopped,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
                None => break error,
            },
            Err(error @ HandlerError::Unavailable { .. }) => {
                tracing::warn!(
                    image_id = %event.image_id, event_id = %event.event_id, error = %error,
                    "dependency unavailable, the record waits for it"
                );
                return Outcome::Unavailable;
            }
            Err(error) => break error,
        }
    };
    tracing::error!(
        image_id = %event.image_id, event_id = %event.event_id,
        event_type = %event.event_type(), error = %error, attempts,
        "handler gave up, dead-lettering the record"
    );
    shared.dead_letters.send(message, &error, attempts).await;
    Outcome::Done
}

/// One run of the handler on the event.
async fn attempt<H: EventHandler>(
    shared: &Shared<H>,
    event: &Event,
    position: &RecordPosition,
) -> Result<(), HandlerError> {
    AssertUnwindSafe(shared.handler.handle(event, position))
        .catch_unwind()
        .await
        // A handler that panics on this record would panic on every attempt.
        .unwrap_or_else(|_| {
            Err(HandlerError::permanent(
                ErrorClass::HandlerPanicked,
                "the handler panicked on this record",
            ))
        })
}
