//! The orphan sweep, both ways: objects in storage that no event accounts for (after a grace
//! period), and read-model rows whose objects are missing. ARCHITECTURE.md ("Orphans") says why
//! it works the way it does.
//!
//! It walks the bucket one listing page at a time, in key order, beside the read model's keys
//! in the same order (a merge of two sorted streams), so neither side is ever held whole. A
//! page's orphans are removed together (`remove.rs`): re-checked in one batch, their events
//! appended concurrently, the objects deleted 1000 keys a request.

mod backend;
mod periodic;
mod remove;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use imgpipe_schemas::Producer;
use time::OffsetDateTime;
use uuid::Uuid;

pub use backend::{Backend, StoreBackend};
pub use periodic::{OrphanSweepSettings, PeriodicSweep};
use remove::{Candidate, Remover};

use crate::ProjectorError;

/// What an object is, by the directory it is under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Original,
    Variant,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Original => "original",
            Kind::Variant => "variant",
        }
    }
}

/// Why an object is an orphan (the `reason` of `OrphanRemoved`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No event ever named the image the key belongs to: an original whose upload was never
    /// announced (or a key outside the layout).
    NoEvent,
    /// The image is known but nothing current names this object: a variant of an older spec,
    /// or an object left behind by a deletion.
    Unreferenced,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoEvent => "no-event",
            Reason::Unreferenced => "unreferenced",
        }
    }
}

/// What became of an orphan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Listed only: a dry run, or a sweep that does not delete.
    Listed,
    /// Its `OrphanRemoved` event is in the log and the object is gone.
    Removed,
    /// A re-check just before deleting found it accounted for, rewritten or already gone, so
    /// it was left alone.
    Kept(String),
    /// Its `OrphanRemoved` event is in the log but the delete failed; the next sweep finds the
    /// object again.
    DeleteFailed(String),
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Listed => "listed",
            Outcome::Removed => "removed",
            Outcome::Kept(_) => "kept",
            Outcome::DeleteFailed(_) => "delete-failed",
        }
    }

    /// Why it was kept, or why the delete failed.
    pub fn detail(&self) -> Option<&str> {
        match self {
            Outcome::Kept(why) | Outcome::DeleteFailed(why) => Some(why),
            Outcome::Listed | Outcome::Removed => None,
        }
    }
}

/// An object no event accounts for, older than the grace period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    pub key: String,
    pub kind: Kind,
    /// The image the key names; `None` for a key outside the layout.
    pub image_id: Option<Uuid>,
    pub bytes: i64,
    pub last_modified: OffsetDateTime,
    pub reason: Reason,
    pub outcome: Outcome,
}

/// An object the read model names that is not in storage. Reported and marked in
/// `missing_objects`; the sweep never changes the image itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub key: String,
    pub kind: Kind,
    pub image_id: Uuid,
    pub image_status: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    Orphan(Orphan),
    Missing(Missing),
}

/// Sees the findings as the sweep makes them (it keeps none itself).
pub trait Observer {
    fn finding(&mut self, finding: &Finding);

    /// After each listing page.
    fn progress(&mut self, _kind: Kind, _summary: &Summary) {}
}

impl<F: FnMut(&Finding)> Observer for F {
    fn finding(&mut self, finding: &Finding) {
        self(finding)
    }
}

#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// Only objects written longer ago than this can be orphans: an upload in flight has its
    /// original stored before its event is appended.
    pub grace: Duration,
    /// Remove the orphans (each after its `OrphanRemoved` event is acknowledged, a page of
    /// them at a time); otherwise only list them.
    pub delete: bool,
    /// Keys per listing page and per read-model page.
    pub page_size: i32,
    /// How long to wait for the projector to catch up with the log before sweeping.
    pub lag_wait: Duration,
    /// Who ran the sweep, for the `OrphanRemoved` events.
    pub producer: Producer,
}

impl SweepOptions {
    pub fn new(grace: Duration, delete: bool, service: &str) -> Self {
        Self {
            grace,
            delete,
            page_size: 1000,
            lag_wait: Duration::from_secs(60),
            producer: Producer {
                service: service.to_string(),
                version: env!("CARGO_PKG_VERSION").into(),
            },
        }
    }
}

/// Counts of one sweep.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub objects_scanned: u64,
    pub references_scanned: u64,
    /// Objects nothing references yet, written within the grace period: left for a later
    /// sweep (most are uploads or results whose events are on their way).
    pub recent_unreferenced: u64,
    pub orphans_no_event: u64,
    pub orphans_unreferenced: u64,
    pub orphan_bytes: u64,
    pub removed: u64,
    pub removed_bytes: u64,
    pub kept: u64,
    pub delete_failed: u64,
    pub missing_originals: u64,
    pub missing_variants: u64,
    /// `missing_objects` rows dropped because their object is back or their image deleted.
    pub marks_cleared: u64,
    /// Events the projector had not yet applied when the sweep began (0: caught up).
    pub read_model_lag: u64,
}

impl Summary {
    pub fn orphans(&self) -> u64 {
        self.orphans_no_event + self.orphans_unreferenced
    }

    pub fn missing(&self) -> u64 {
        self.missing_originals + self.missing_variants
    }
}

/// The state of the image behind a key, as the read model has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageState {
    pub image_id: Uuid,
    pub status: String,
    pub updated_at: OffsetDateTime,
}

impl ImageState {
    fn is_deleted(&self) -> bool {
        self.status == "deleted"
    }
}

/// A key the read model names, with its image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub key: String,
    pub image: ImageState,
}

/// Runs one sweep over the deployment's originals and variants, handing each finding to
/// `observer` as it is made.
///
/// With `delete`, it first waits (up to `lag_wait`) for the projector to have applied every
/// event appended before the sweep began, and refuses to delete if it has not: otherwise a
/// read model that lags would make recent uploads look like orphans. A listing-only sweep goes
/// on regardless and reports the lag in its summary.
pub async fn sweep<B: Backend>(
    backend: &B,
    options: &SweepOptions,
    observer: &mut impl Observer,
) -> Result<Summary, ProjectorError> {
    let started_at = OffsetDateTime::now_utc();
    let grace = time::Duration::try_from(options.grace).unwrap_or(time::Duration::MAX);
    let cutoff = started_at
        .checked_sub(grace)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let lag = backend.read_model_lag(options.lag_wait).await?;
    if lag > 0 && options.delete {
        return Err(ProjectorError::ReadModelBehind { lag });
    }
    let mut sweeper = Sweeper {
        backend,
        options,
        observer,
        cutoff,
        correlation_id: format!("orphan-sweep-{}", Uuid::now_v7()),
        summary: Summary {
            read_model_lag: lag,
            ..Summary::default()
        },
    };
    sweeper.scan(Kind::Original).await?;
    sweeper.scan(Kind::Variant).await?;
    // Only a complete sweep knows which marks no longer hold.
    sweeper.summary.marks_cleared = backend.clear_marks_before(started_at).await?;
    Ok(sweeper.summary)
}

/// What the read model says about an object nothing current references.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// A live image references it.
    Accounted,
    /// Its image was deleted within the grace period: the processor is removing its objects.
    BeingDeleted,
    Orphan(Reason),
}

/// `references`: the images whose rows name the key; `image`: the image the key names.
fn classify(
    references: &[ImageState],
    image: Option<&ImageState>,
    cutoff: OffsetDateTime,
) -> Verdict {
    if references.iter().any(|r| !r.is_deleted()) {
        return Verdict::Accounted;
    }
    let deleted_recently = |state: &ImageState| state.is_deleted() && state.updated_at >= cutoff;
    if references.iter().chain(image).any(deleted_recently) {
        return Verdict::BeingDeleted;
    }
    if references.is_empty() && image.is_none() {
        Verdict::Orphan(Reason::NoEvent)
    } else {
        Verdict::Orphan(Reason::Unreferenced)
    }
}

/// The image id a key names: `{prefix}{id}` for originals, `{prefix}{id}/...` for variants.
fn image_id_of(key: &str, prefix: &str) -> Option<Uuid> {
    let rest = key.strip_prefix(prefix)?;
    let id = rest.split('/').next()?;
    Uuid::parse_str(id).ok()
}

fn timestamp(micros: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

struct Sweeper<'a, B, O> {
    backend: &'a B,
    options: &'a SweepOptions,
    observer: &'a mut O,
    cutoff: OffsetDateTime,
    correlation_id: String,
    summary: Summary,
}

impl<B: Backend, O: Observer> Sweeper<'_, B, O> {
    /// Merges the listing under `kind`'s prefix with the read model's keys under it.
    async fn scan(&mut self, kind: Kind) -> Result<(), ProjectorError> {
        let prefix = self.backend.prefix(kind);
        let mut references = References::new(kind, &prefix, i64::from(self.options.page_size));
        let mut continuation = None;
        loop {
            let page = self
                .backend
                .list_objects(&prefix, continuation.take(), self.options.page_size)
                .await?;
            self.summary.objects_scanned += page.objects.len() as u64;
            let mut unreferenced = Vec::new();
            // The page's orphans, removed together once the page is read.
            let mut candidates = Vec::new();
            for object in page.objects {
                while let Some(reference) = references
                    .next_below(self.backend, Some(&object.key))
                    .await?
                {
                    self.summary.references_scanned += 1;
                    self.check_missing(kind, reference).await?;
                }
                let named_by = references.take_equal(self.backend, &object.key).await?;
                self.summary.references_scanned += named_by.len() as u64;
                let states: Vec<ImageState> = named_by.into_iter().map(|r| r.image).collect();
                if states.iter().any(|s| !s.is_deleted()) {
                    continue;
                }
                if timestamp(object.last_modified_micros) >= self.cutoff {
                    self.summary.recent_unreferenced += 1;
                    continue;
                }
                if states.is_empty() {
                    unreferenced.push(object);
                } else if let Verdict::Orphan(reason) = classify(&states, None, self.cutoff) {
                    candidates.push(Candidate {
                        object,
                        image_id: states.first().map(|s| s.image_id),
                        reason,
                    });
                }
            }
            // The images the page's unreferenced keys name, in one query.
            let ids: Vec<Uuid> = unreferenced
                .iter()
                .filter_map(|o| image_id_of(&o.key, &prefix))
                .collect();
            let images = if ids.is_empty() {
                HashMap::new()
            } else {
                self.backend.images(&ids).await?
            };
            for object in unreferenced {
                let image_id = image_id_of(&object.key, &prefix);
                let image = image_id.and_then(|id| images.get(&id));
                if let Verdict::Orphan(reason) = classify(&[], image, self.cutoff) {
                    candidates.push(Candidate {
                        object,
                        image_id,
                        reason,
                    });
                }
            }
            self.orphans(kind, candidates).await?;
            self.observer.progress(kind, &self.summary);
            match page.next {
                Some(next) => continuation = Some(next),
                None => break,
            }
        }
        while let Some(reference) = references.next_below(self.backend, None).await? {
            self.summary.references_scanned += 1;
            self.check_missing(kind, reference).await?;
        }
        Ok(())
    }

    /// Lists a page's orphans, or removes them (see [`Remover::remove`]), and reports each.
    async fn orphans(
        &mut self,
        kind: Kind,
        candidates: Vec<Candidate>,
    ) -> Result<(), ProjectorError> {
        if candidates.is_empty() {
            return Ok(());
        }
        if !self.options.delete {
            for candidate in candidates {
                self.record(kind, candidate, Outcome::Listed);
            }
            return Ok(());
        }
        let remover = Remover {
            backend: self.backend,
            cutoff: self.cutoff,
            correlation_id: &self.correlation_id,
            producer: &self.options.producer,
        };
        let removal = remover.remove(&candidates).await?;
        for (candidate, outcome) in candidates.into_iter().zip(removal.outcomes) {
            if let Some(outcome) = outcome {
                self.record(kind, candidate, outcome);
            }
        }
        match removal.append_failed {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    fn record(&mut self, kind: Kind, candidate: Candidate, outcome: Outcome) {
        let Candidate {
            object,
            image_id,
            reason,
        } = candidate;
        let bytes = u64::try_from(object.bytes).unwrap_or(0);
        match reason {
            Reason::NoEvent => self.summary.orphans_no_event += 1,
            Reason::Unreferenced => self.summary.orphans_unreferenced += 1,
        }
        self.summary.orphan_bytes += bytes;
        match &outcome {
            Outcome::Listed => {}
            Outcome::Removed => {
                self.summary.removed += 1;
                self.summary.removed_bytes += bytes;
            }
            Outcome::Kept(_) => self.summary.kept += 1,
            Outcome::DeleteFailed(_) => self.summary.delete_failed += 1,
        }
        self.observer.finding(&Finding::Orphan(Orphan {
            key: object.key,
            kind,
            image_id,
            bytes: object.bytes,
            last_modified: timestamp(object.last_modified_micros),
            reason,
            outcome,
        }));
    }

    /// A key the read model names that the listing did not have: confirmed with a HEAD and a
    /// second look at the read model (the listing is a moving snapshot), then reported and
    /// marked.
    async fn check_missing(
        &mut self,
        kind: Kind,
        reference: Reference,
    ) -> Result<(), ProjectorError> {
        if reference.image.is_deleted() || self.backend.head(&reference.key).await?.is_some() {
            return Ok(());
        }
        let mut references = self
            .backend
            .references_to(std::slice::from_ref(&reference.key))
            .await?;
        let named_by = references.remove(&reference.key).unwrap_or_default();
        let Some(live) = named_by.into_iter().find(|r| !r.is_deleted()) else {
            return Ok(());
        };
        let missing = Missing {
            key: reference.key,
            kind,
            image_id: live.image_id,
            image_status: live.status,
        };
        self.backend.mark_missing(&missing).await?;
        match kind {
            Kind::Original => self.summary.missing_originals += 1,
            Kind::Variant => self.summary.missing_variants += 1,
        }
        self.observer.finding(&Finding::Missing(missing));
        Ok(())
    }
}

/// The read model's keys under one prefix, in key order, a page at a time.
struct References {
    kind: Kind,
    prefix: String,
    /// Keyset cursor: the last key fetched.
    after: String,
    page_size: i64,
    buffer: VecDeque<Reference>,
    exhausted: bool,
}

impl References {
    fn new(kind: Kind, prefix: &str, page_size: i64) -> Self {
        Self {
            kind,
            prefix: prefix.to_string(),
            // Every key under the prefix sorts after the prefix itself.
            after: prefix.to_string(),
            page_size: page_size.max(1),
            buffer: VecDeque::new(),
            exhausted: false,
        }
    }

    async fn front<B: Backend>(
        &mut self,
        backend: &B,
    ) -> Result<Option<&Reference>, ProjectorError> {
        if self.buffer.is_empty() && !self.exhausted {
            let page = backend
                .references(self.kind, &self.after, self.page_size)
                .await?;
            if (page.len() as i64) < self.page_size {
                self.exhausted = true;
            }
            if let Some(last) = page.last() {
                self.after = last.key.clone();
            }
            for reference in page {
                // Keys under one prefix are contiguous in key order: the first one outside it
                // ends the prefix.
                if !reference.key.starts_with(&self.prefix) {
                    self.exhausted = true;
                    break;
                }
                self.buffer.push_back(reference);
            }
        }
        Ok(self.buffer.front())
    }

    /// The next reference if its key sorts before `key` (the next one, when `None`).
    async fn next_below<B: Backend>(
        &mut self,
        backend: &B,
        key: Option<&str>,
    ) -> Result<Option<Reference>, ProjectorError> {
        let below = self
            .front(backend)
            .await?
            .is_some_and(|r| key.is_none_or(|key| r.key.as_str() < key));
        Ok(if below { self.buffer.pop_front() } else { None })
    }

    /// Every reference to exactly `key` (normally one).
    async fn take_equal<B: Backend>(
        &mut self,
        backend: &B,
        key: &str,
    ) -> Result<Vec<Reference>, ProjectorError> {
        let mut equal = Vec::new();
        while self.front(backend).await?.is_some_and(|r| r.key == key) {
            equal.extend(self.buffer.pop_front());
        }
        Ok(equal)
    }
}
