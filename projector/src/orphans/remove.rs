//! Removing one listing page's orphans, in batches: one at a time (a HEAD, two queries, an
//! append and a DELETE each) a sweep removed about 40 objects a second, so a million took
//! seven hours.
//!
//! The rules are the ones of one orphan, applied to the page at once: every candidate is
//! checked again (HEADs, a few at a time, and the read model in one query for the page), each
//! survivor's `OrphanRemoved` is appended (concurrently: the producer batches them), and only
//! the keys whose append the broker acknowledged are deleted, up to 1000 per `DeleteObjects`.

use std::collections::HashMap;

use futures::{StreamExt, TryStreamExt};
use imgpipe_infra::storage::{ObjectInfo, DELETE_MANY_MAX_KEYS};
use imgpipe_schemas::{Event, OrphanRemoved, Producer};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{classify, timestamp, Backend, Outcome, Reason, Verdict};
use crate::ProjectorError;

/// HEADs in flight at once: enough to hide a round trip, few enough not to flood the store.
const HEAD_CONCURRENCY: usize = 32;

/// Appends awaiting their acknowledgement at once. They go out in the producer's batches
/// (`linger.ms`), so this bounds memory, not requests.
const APPEND_CONCURRENCY: usize = 256;

/// An object the listing found to be an orphan, before its re-check.
#[derive(Debug, Clone)]
pub(super) struct Candidate {
    pub object: ObjectInfo,
    /// The image the key names; `None` for a key outside the layout.
    pub image_id: Option<Uuid>,
    pub reason: Reason,
}

/// What became of a page's candidates.
pub(super) struct Removal {
    /// One per candidate, in their order; `None` when its append failed: nothing was recorded
    /// and the object stays.
    pub outcomes: Vec<Option<Outcome>>,
    /// The first failed append. It ends the sweep (without the log nothing more can be removed
    /// with its audit record), once the keys whose appends were acknowledged are deleted.
    pub append_failed: Option<ProjectorError>,
}

pub(super) struct Remover<'a, B> {
    pub backend: &'a B,
    pub cutoff: OffsetDateTime,
    pub correlation_id: &'a str,
    pub producer: &'a Producer,
}

impl<B: Backend> Remover<'_, B> {
    /// Re-checks the candidates, appends an `OrphanRemoved` for each that is still an orphan,
    /// and deletes those the broker acknowledged. `Err` only when a re-check fails, before
    /// anything was appended.
    pub async fn remove(&self, candidates: &[Candidate]) -> Result<Removal, ProjectorError> {
        let rechecked = self.recheck(candidates).await?;
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(candidates.len());
        let mut events = Vec::new();
        for (index, (candidate, verdict)) in candidates.iter().zip(rechecked).enumerate() {
            match verdict {
                Ok((object, reason)) => {
                    events.push((index, self.event(candidate.image_id, &object, reason)));
                    outcomes.push(None);
                }
                Err(kept) => outcomes.push(Some(kept)),
            }
        }

        // The futures are made up front rather than by a closure inside the stream: a closure
        // there makes the sweep's future not `Send` for every lifetime, which `tokio::spawn`
        // of the periodic sweep needs.
        let appends: Vec<_> = events
            .iter()
            .map(|(index, event)| async move { (*index, self.backend.append(event).await) })
            .collect();
        let appended: Vec<(usize, Result<(), ProjectorError>)> = futures::stream::iter(appends)
            .buffered(APPEND_CONCURRENCY)
            .collect()
            .await;
        let mut acknowledged = Vec::with_capacity(appended.len());
        let mut append_failed = None;
        for (index, result) in appended {
            match result {
                Ok(()) => acknowledged.push((index, candidates[index].object.key.clone())),
                Err(error) => {
                    append_failed.get_or_insert(error);
                }
            }
        }

        for chunk in acknowledged.chunks(DELETE_MANY_MAX_KEYS) {
            let keys: Vec<String> = chunk.iter().map(|(_, key)| key.clone()).collect();
            for ((index, _), outcome) in chunk.iter().zip(self.delete(&keys).await) {
                outcomes[*index] = Some(outcome);
            }
        }
        Ok(Removal {
            outcomes,
            append_failed,
        })
    }

    /// For each candidate, the object as it is now and the reason it is still an orphan, or
    /// why it is kept: the object or the read model may have changed since the page was read.
    async fn recheck(
        &self,
        candidates: &[Candidate],
    ) -> Result<Vec<Result<(ObjectInfo, Reason), Outcome>>, ProjectorError> {
        let heads: Vec<_> = candidates
            .iter()
            .map(|candidate| self.backend.head(&candidate.object.key))
            .collect();
        let heads: Vec<Option<ObjectInfo>> = futures::stream::iter(heads)
            .buffered(HEAD_CONCURRENCY)
            .try_collect()
            .await?;
        let present: Vec<String> = heads.iter().flatten().map(|o| o.key.clone()).collect();
        let references = if present.is_empty() {
            HashMap::new()
        } else {
            self.backend.references_to(&present).await?
        };
        let mut ids: Vec<Uuid> = candidates.iter().filter_map(|c| c.image_id).collect();
        ids.sort_unstable();
        ids.dedup();
        let images = if ids.is_empty() {
            HashMap::new()
        } else {
            self.backend.images(&ids).await?
        };

        Ok(candidates
            .iter()
            .zip(heads)
            .map(|(candidate, head)| {
                let Some(object) = head else {
                    return Err(Outcome::Kept("already gone".into()));
                };
                if timestamp(object.last_modified_micros) >= self.cutoff {
                    return Err(Outcome::Kept(
                        "written again within the grace period".into(),
                    ));
                }
                let named_by = references.get(&object.key).map_or(&[][..], Vec::as_slice);
                let image = candidate.image_id.and_then(|id| images.get(&id));
                match classify(named_by, image, self.cutoff) {
                    Verdict::Orphan(reason) => Ok((object, reason)),
                    Verdict::Accounted | Verdict::BeingDeleted => {
                        Err(Outcome::Kept("accounted for on a re-check".into()))
                    }
                }
            })
            .collect())
    }

    fn event(&self, image_id: Option<Uuid>, object: &ObjectInfo, reason: Reason) -> Event {
        Event::new(
            image_id.unwrap_or(Uuid::nil()),
            self.correlation_id.to_string(),
            None,
            self.producer.clone(),
            OrphanRemoved {
                key: object.key.clone(),
                bytes: object.bytes,
                last_modified_micros: object.last_modified_micros,
                reason: reason.as_str().into(),
            },
        )
    }

    /// Deletes up to [`DELETE_MANY_MAX_KEYS`] keys whose `OrphanRemoved` is in the log: one
    /// outcome per key, in their order. A key the store could not remove is `DeleteFailed`,
    /// which the next sweep finds again. When the request fails as a whole, some keys may be
    /// gone all the same: a HEAD tells which.
    async fn delete(&self, keys: &[String]) -> Vec<Outcome> {
        let error = match self.backend.delete_many(keys).await {
            Ok(not_deleted) => {
                let failed: HashMap<&str, String> = not_deleted
                    .iter()
                    .map(|failure| (failure.key.as_str(), failure.to_string()))
                    .collect();
                return keys
                    .iter()
                    .map(|key| match failed.get(key.as_str()) {
                        None => Outcome::Removed,
                        Some(why) => {
                            tracing::warn!(key = %key, error = %why, "orphan recorded as removed but its delete failed; the next sweep retries");
                            Outcome::DeleteFailed(why.clone())
                        }
                    })
                    .collect();
            }
            Err(error) => error.to_string(),
        };
        tracing::warn!(keys = keys.len(), error = %error, "a batch delete of orphans failed; checking which keys are gone");
        let error = &error;
        let heads: Vec<_> = keys
            .iter()
            .map(|key| async move {
                match self.backend.head(key).await {
                    Ok(None) => Outcome::Removed,
                    Ok(Some(_)) => Outcome::DeleteFailed(error.clone()),
                    Err(head_error) => Outcome::DeleteFailed(format!(
                        "{error}; and whether it is gone is unknown: {head_error}"
                    )),
                }
            })
            .collect();
        futures::stream::iter(heads)
            .buffered(HEAD_CONCURRENCY)
            .collect()
            .await
    }
}
