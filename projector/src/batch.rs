//! Applying a batch of records exactly once: the read-model changes of every record and the
//! partitions' new positions commit in one Postgres transaction, and the positions move by
//! compare-and-set, so a batch whose records some other writer already applied (another
//! instance after a rebalance, a rebuild swapped in) changes nothing and says so.

use std::collections::BTreeMap;
use std::time::Duration;

use imgpipe_infra::consume::{DeadLetterProducer, HandlerError, RecordPosition};
use imgpipe_infra::registry::EventCodec;
use imgpipe_schemas::headers::ErrorClass;
use imgpipe_schemas::{Event, SchemaError};
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use crate::db::{self, Outcome};
use crate::positions::{self, PositionMap};

/// What happens to a record that cannot be applied: one that cannot be decoded, or that
/// Postgres refuses for its data (SQLSTATE 22, 23), which would fail the same way forever.
#[derive(Clone)]
pub enum Rejects {
    /// The live projector copies it to the dead-letter topic before its batch commits.
    DeadLetter(DeadLetterProducer),
    /// A rebuild only counts it: the live projector dead-lettered the same record already.
    Count,
}

/// What a committed batch did.
#[derive(Debug, Default, Clone)]
pub struct BatchReport {
    /// The records the batch covered (after dropping those below the expected positions).
    pub records: usize,
    /// Each partition's position after the batch.
    pub positions: PositionMap,
    /// Events that changed the read models, by event type.
    pub applied: BTreeMap<&'static str, u64>,
    /// Events already applied before (their id is in the timeline).
    pub duplicates: u64,
    /// Records rejected (dead-lettered, or counted during a rebuild), by error class.
    pub rejected: BTreeMap<&'static str, u64>,
    /// For each image the batch turned ready for the first time: how long after its upload.
    pub first_ready_after_upload: Vec<Duration>,
}

impl BatchReport {
    pub fn add(&mut self, other: &BatchReport) {
        self.records += other.records;
        self.positions.extend(&other.positions);
        for (event_type, count) in &other.applied {
            *self.applied.entry(event_type).or_default() += count;
        }
        self.duplicates += other.duplicates;
        for (class, count) in &other.rejected {
            *self.rejected.entry(class).or_default() += count;
        }
        self.first_ready_after_upload
            .extend(&other.first_ready_after_upload);
    }
}

#[derive(Debug)]
pub enum BatchOutcome {
    Committed(BatchReport),
    /// A stored position was not the expected one: nothing was written; reload the
    /// positions and seek to them.
    Conflict,
}

/// One record, decoded.
struct Decoded<'a> {
    message: &'a OwnedMessage,
    position: RecordPosition,
    event: Result<Event, SchemaError>,
}

/// How a batch's events reach the read models.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApplyMode {
    /// One event at a time ([`db::apply`]): the live projector's way, which also times each
    /// image's first `ready`.
    #[default]
    PerEvent,
    /// The batch folded per image and written with a few set-based statements
    /// ([`db::bulk`]); a batch Postgres refuses is applied again one event at a time, so a
    /// bad record is still rejected alone. A rebuild's way: it needs no first-`ready` times.
    Bulk,
}

/// Applies batches of the events topic to the read models reached through `pool`.
#[derive(Clone)]
pub struct Applier {
    pub pool: PgPool,
    pub codec: EventCodec,
    pub rejects: Rejects,
    /// The events topic (with the deployment's prefix): the positions' key.
    pub topic: String,
    pub mode: ApplyMode,
}

impl Applier {
    /// Applies `records` (in the order received; several partitions may be mixed) in one
    /// transaction, moving each partition's position from `expected` to one past its last
    /// record. Records below a partition's expected position are already applied and left
    /// out. A database error other than a data or constraint error is returned, with nothing
    /// written, for the caller to retry.
    pub async fn apply(
        &self,
        records: &[OwnedMessage],
        expected: &PositionMap,
    ) -> Result<BatchOutcome, sqlx::Error> {
        let pending: Vec<&OwnedMessage> = records
            .iter()
            .filter(|m| m.offset() >= expected.get(&m.partition()).copied().unwrap_or(0))
            .collect();
        let mut next = PositionMap::new();
        for message in &pending {
            let entry = next.entry(message.partition()).or_insert(0);
            *entry = (*entry).max(message.offset() + 1);
        }
        if next.is_empty() {
            return Ok(BatchOutcome::Committed(BatchReport::default()));
        }
        let decoded = self.decode(&pending).await;
        if self.mode == ApplyMode::Bulk {
            match self.bulk_transaction(&decoded, expected, &next).await {
                Err(error) if is_permanent(&error) => {
                    tracing::warn!(error = %error, "a bulk batch was refused, applying it one event at a time");
                }
                outcome => return outcome,
            }
        }
        match self.transaction(&decoded, expected, &next, false).await {
            Err(error) if is_permanent(&error) => {
                // Some record's data is refused: do the batch again, each record behind a
                // savepoint, so that one record is rejected and the rest applied.
                tracing::warn!(error = %error, "a record was refused, applying the batch one record at a time");
                self.transaction(&decoded, expected, &next, true).await
            }
            outcome => outcome,
        }
    }

    async fn decode<'a>(&self, records: &[&'a OwnedMessage]) -> Vec<Decoded<'a>> {
        let mut decoded = Vec::with_capacity(records.len());
        for message in records {
            let payload = message.payload().unwrap_or_default();
            let event = loop {
                // Only a registry that does not answer fails here: wait for it rather than
                // reject records that are fine.
                match self.codec.decode(payload).await {
                    Ok(event) => break event,
                    Err(error) => {
                        tracing::warn!(error = %error, "schema registry unavailable, retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            };
            decoded.push(Decoded {
                message,
                position: RecordPosition {
                    topic: message.topic().to_string(),
                    partition: message.partition(),
                    offset: message.offset(),
                },
                event,
            });
        }
        decoded
    }

    /// Opens a batch's transaction and moves the positions first: a concurrent writer of the
    /// same partitions waits here, and the loser finds the position moved before it changed
    /// anything (`None`: a conflict, nothing written). Returns the report to fill.
    async fn begin(
        &self,
        records: usize,
        expected: &PositionMap,
        next: &PositionMap,
    ) -> Result<Option<(sqlx::Transaction<'static, sqlx::Postgres>, BatchReport)>, sqlx::Error>
    {
        let mut tx = self.pool.begin().await?;
        if !self.advance_positions(&mut tx, expected, next).await? {
            return Ok(None);
        }
        let report = BatchReport {
            records,
            positions: next.clone(),
            ..BatchReport::default()
        };
        Ok(Some((tx, report)))
    }

    /// One attempt at the batch; `careful` puts each record behind a savepoint.
    async fn transaction(
        &self,
        decoded: &[Decoded<'_>],
        expected: &PositionMap,
        next: &PositionMap,
        careful: bool,
    ) -> Result<BatchOutcome, sqlx::Error> {
        let Some((mut tx, mut report)) = self.begin(decoded.len(), expected, next).await? else {
            return Ok(BatchOutcome::Conflict);
        };
        let mut rejected = Vec::new();
        for record in decoded {
            match apply_record(&mut tx, record, careful).await? {
                Applied::Changed(event_type, first_ready) => {
                    *report.applied.entry(event_type).or_default() += 1;
                    report.first_ready_after_upload.extend(first_ready);
                }
                Applied::Duplicate => report.duplicates += 1,
                Applied::Rejected(error) => rejected.push((record.message, error)),
            }
        }
        // Before the commit: a crash in between dead-letters the records again on the retry
        // rather than losing them.
        self.reject(&rejected, &mut report).await;
        tx.commit().await?;
        Ok(BatchOutcome::Committed(report))
    }

    /// The batch in one transaction as [`Self::transaction`] does, its events applied together
    /// by [`db::bulk::apply_all`]. A data or constraint error comes back as the error, with
    /// nothing written, for the caller to apply the batch one event at a time.
    async fn bulk_transaction(
        &self,
        decoded: &[Decoded<'_>],
        expected: &PositionMap,
        next: &PositionMap,
    ) -> Result<BatchOutcome, sqlx::Error> {
        let Some((mut tx, mut report)) = self.begin(decoded.len(), expected, next).await? else {
            return Ok(BatchOutcome::Conflict);
        };
        let mut rejected = Vec::new();
        let mut events = Vec::with_capacity(decoded.len());
        for record in decoded {
            match &record.event {
                Ok(event) => events.push((event, &record.position)),
                Err(error) => rejected.push((record.message, undecodable(record, error))),
            }
        }
        let changed = db::bulk::apply_all(&mut tx, &events).await?;
        for ((event, _), changed) in events.iter().zip(changed) {
            if changed {
                *report
                    .applied
                    .entry(event.event_type().as_str())
                    .or_default() += 1;
            } else {
                report.duplicates += 1;
            }
        }
        self.reject(&rejected, &mut report).await;
        tx.commit().await?;
        Ok(BatchOutcome::Committed(report))
    }

    /// Moves each partition's position from `expected` to `next`; false if one was not at the
    /// expected position (dropping the transaction then undoes those already moved).
    async fn advance_positions(
        &self,
        tx: &mut PgConnection,
        expected: &PositionMap,
        next: &PositionMap,
    ) -> Result<bool, sqlx::Error> {
        for (&partition, &offset) in next {
            let moved = positions::advance(
                &mut *tx,
                &self.topic,
                partition,
                expected.get(&partition).copied(),
                offset,
            )
            .await?;
            if !moved {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Counts the rejected records by class and, for the live projector, dead-letters them.
    async fn reject(&self, rejected: &[(&OwnedMessage, HandlerError)], report: &mut BatchReport) {
        for (message, error) in rejected {
            let class = match error {
                HandlerError::Permanent { class, .. } => class.as_str(),
                _ => "rejected",
            };
            *report.rejected.entry(class).or_default() += 1;
            if let Rejects::DeadLetter(dead_letters) = &self.rejects {
                dead_letters.send(message, error, 1).await;
            }
        }
    }
}

/// What became of one record of a batch.
enum Applied {
    /// The event changed the read models: its type, and how long after its upload the image
    /// turned ready if this made it ready for the first time.
    Changed(&'static str, Option<Duration>),
    /// The event was applied before.
    Duplicate,
    /// The record cannot be applied.
    Rejected(HandlerError),
}

/// Applies one record in the batch's transaction (behind a savepoint if `careful`). Only an
/// error worth retrying the batch for comes back as an error.
async fn apply_record(
    tx: &mut PgConnection,
    record: &Decoded<'_>,
    careful: bool,
) -> Result<Applied, sqlx::Error> {
    let event = match &record.event {
        Ok(event) => event,
        Err(error) => return Ok(Applied::Rejected(undecodable(record, error))),
    };
    let applied = if careful {
        apply_behind_savepoint(tx, event, &record.position).await?
    } else {
        Ok(db::apply(tx, event, &record.position).await?)
    };
    Ok(match applied {
        Ok(Outcome::Duplicate) => Applied::Duplicate,
        Ok(Outcome::Changed) => Applied::Changed(event.event_type().as_str(), None),
        Ok(Outcome::FirstReady { after_upload }) => {
            Applied::Changed(event.event_type().as_str(), Some(after_upload))
        }
        Err(error) => {
            tracing::error!(
                image_id = %event.image_id, event_id = %event.event_id,
                event_type = %event.event_type(), error = %error,
                "the database refused the event, rejecting it"
            );
            Applied::Rejected(HandlerError::permanent(ErrorClass::DatabaseRejected, error))
        }
    })
}

/// The rejection of a record that does not decode.
fn undecodable(record: &Decoded<'_>, error: &SchemaError) -> HandlerError {
    tracing::error!(
        partition = record.position.partition, offset = record.position.offset,
        error = %error, "undecodable record, rejecting it"
    );
    // The decode error stays with the batch's record; the dead letter carries its text.
    HandlerError::permanent(ErrorClass::UndecodableRecord, error.to_string())
}

/// Applies one event behind a savepoint: a data or constraint error rolls back this event
/// only and comes back as `Ok(Err(..))`.
async fn apply_behind_savepoint(
    tx: &mut PgConnection,
    event: &Event,
    position: &RecordPosition,
) -> Result<Result<Outcome, sqlx::Error>, sqlx::Error> {
    sqlx::query("SAVEPOINT event").execute(&mut *tx).await?;
    match db::apply(&mut *tx, event, position).await {
        Ok(applied) => {
            sqlx::query("RELEASE SAVEPOINT event")
                .execute(&mut *tx)
                .await?;
            Ok(Ok(applied))
        }
        Err(error) if is_permanent(&error) => {
            sqlx::query("ROLLBACK TO SAVEPOINT event")
                .execute(&mut *tx)
                .await?;
            Ok(Err(error))
        }
        Err(error) => Err(error),
    }
}

/// Data errors (SQLSTATE class 22) and constraint violations (23) come back the same on every
/// attempt; everything else (connection lost, database down, serialization failure) is worth
/// retrying.
pub fn is_permanent(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code.starts_with("22") || code.starts_with("23"))
}
