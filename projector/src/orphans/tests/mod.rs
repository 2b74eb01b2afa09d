//! The sweep's merge and decisions against a fake bucket, read model and log.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use imgpipe_infra::storage::{KeyNotDeleted, ObjectInfo, ObjectPage};
use imgpipe_infra::InfraError;
use imgpipe_schemas::{Event, OrphanRemoved, Payload};

use super::*;

mod batches;

const PREFIX: &str = "ns/";

fn micros(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000).unwrap()
}

fn hours_ago(hours: i64) -> OffsetDateTime {
    OffsetDateTime::now_utc() - time::Duration::hours(hours)
}

#[derive(Default)]
struct Fake {
    objects: Mutex<BTreeMap<String, ObjectInfo>>,
    /// key -> image, as `images.original_key` and `variants.object_key` have them.
    originals: BTreeMap<String, Uuid>,
    variants: BTreeMap<String, Uuid>,
    images: HashMap<Uuid, ImageState>,
    /// Keys whose HEAD finds them written just now (rewritten after the listing).
    rewritten: HashSet<String>,
    lag: u64,
    fail_append: bool,
    /// Keys whose `OrphanRemoved` the broker refuses.
    fail_append_for: HashSet<String>,
    /// Keys a `DeleteObjects` answers with a per-key error for.
    refuse_delete: Mutex<HashSet<String>>,
    /// Each `DeleteObjects` fails as a whole after removing this many of its keys.
    fail_delete_request_after: Option<usize>,
    appended: Mutex<Vec<Event>>,
    deleted: Mutex<Vec<String>>,
    /// The size of each `DeleteObjects` request.
    delete_batches: Mutex<Vec<usize>>,
    /// `append` and `delete` in the order they happened, by key.
    operations: Mutex<Vec<(&'static str, String)>>,
    references_to_calls: Mutex<usize>,
    marks: Mutex<BTreeMap<String, (Missing, OffsetDateTime)>>,
    largest_page: Mutex<usize>,
}

impl Fake {
    fn put(&self, key: &str, written: OffsetDateTime) {
        self.objects.lock().unwrap().insert(
            key.into(),
            ObjectInfo {
                key: key.into(),
                bytes: 42,
                last_modified_micros: micros(written),
            },
        );
    }

    fn image(&mut self, status: &str, updated_at: OffsetDateTime) -> Uuid {
        let image_id = Uuid::now_v7();
        self.images.insert(
            image_id,
            ImageState {
                image_id,
                status: status.into(),
                updated_at,
            },
        );
        image_id
    }

    fn stored(&self) -> Vec<String> {
        self.objects.lock().unwrap().keys().cloned().collect()
    }

    fn appended(&self) -> Vec<OrphanRemoved> {
        self.appended
            .lock()
            .unwrap()
            .iter()
            .map(|e| match &e.payload {
                Payload::OrphanRemoved(removed) => removed.clone(),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    fn error(message: &str) -> ProjectorError {
        ProjectorError::Infra(InfraError::Storage {
            operation: "fake",
            key: String::new(),
            source: message.into(),
            not_found: false,
        })
    }
}

impl Backend for Fake {
    fn prefix(&self, kind: Kind) -> String {
        match kind {
            Kind::Original => format!("{PREFIX}originals/"),
            Kind::Variant => format!("{PREFIX}variants/"),
        }
    }

    async fn list_objects(
        &self,
        prefix: &str,
        continuation: Option<String>,
        max_keys: i32,
    ) -> Result<ObjectPage, ProjectorError> {
        let objects = self.objects.lock().unwrap();
        let after = continuation.unwrap_or_default();
        let mut matching = objects
            .values()
            .filter(|o| o.key.starts_with(prefix) && o.key > after);
        let page: Vec<ObjectInfo> = matching
            .by_ref()
            .take(usize::try_from(max_keys).unwrap())
            .cloned()
            .collect();
        let more = matching.next().is_some();
        let mut largest = self.largest_page.lock().unwrap();
        *largest = (*largest).max(page.len());
        Ok(ObjectPage {
            next: more.then(|| page.last().unwrap().key.clone()),
            objects: page,
        })
    }

    async fn references(
        &self,
        kind: Kind,
        after: &str,
        limit: i64,
    ) -> Result<Vec<Reference>, ProjectorError> {
        let keys = match kind {
            Kind::Original => &self.originals,
            Kind::Variant => &self.variants,
        };
        let page: Vec<Reference> = keys
            .iter()
            .filter(|(key, _)| key.as_str() > after)
            .take(usize::try_from(limit).unwrap())
            .map(|(key, id)| Reference {
                key: key.clone(),
                image: self.images[id].clone(),
            })
            .collect();
        let mut largest = self.largest_page.lock().unwrap();
        *largest = (*largest).max(page.len());
        Ok(page)
    }

    async fn images(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, ImageState>, ProjectorError> {
        Ok(ids
            .iter()
            .filter_map(|id| self.images.get(id).map(|s| (*id, s.clone())))
            .collect())
    }

    async fn references_to(
        &self,
        keys: &[String],
    ) -> Result<HashMap<String, Vec<ImageState>>, ProjectorError> {
        *self.references_to_calls.lock().unwrap() += 1;
        Ok(keys
            .iter()
            .filter_map(|key| {
                let states: Vec<ImageState> = self
                    .originals
                    .get(key)
                    .into_iter()
                    .chain(self.variants.get(key))
                    .map(|id| self.images[id].clone())
                    .collect();
                (!states.is_empty()).then(|| (key.clone(), states))
            })
            .collect())
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, ProjectorError> {
        let objects = self.objects.lock().unwrap();
        Ok(objects.get(key).cloned().map(|mut object| {
            if self.rewritten.contains(key) {
                object.last_modified_micros = micros(OffsetDateTime::now_utc());
            }
            object
        }))
    }

    async fn append(&self, event: &Event) -> Result<(), ProjectorError> {
        let Payload::OrphanRemoved(removed) = &event.payload else {
            panic!("unexpected {event:?}");
        };
        if self.fail_append || self.fail_append_for.contains(&removed.key) {
            return Err(Self::error("broker down"));
        }
        self.appended.lock().unwrap().push(event.clone());
        self.operations
            .lock()
            .unwrap()
            .push(("append", removed.key.clone()));
        Ok(())
    }

    async fn delete_many(&self, keys: &[String]) -> Result<Vec<KeyNotDeleted>, ProjectorError> {
        assert!(
            keys.len() <= 1000,
            "{} keys in one DeleteObjects",
            keys.len()
        );
        self.delete_batches.lock().unwrap().push(keys.len());
        let refused = self.refuse_delete.lock().unwrap().clone();
        let mut not_deleted = Vec::new();
        for (n, key) in keys.iter().enumerate() {
            if self.fail_delete_request_after == Some(n) {
                return Err(Self::error("connection reset"));
            }
            if refused.contains(key) {
                not_deleted.push(KeyNotDeleted {
                    key: key.clone(),
                    code: Some("AccessDenied".into()),
                    message: Some("not yours".into()),
                });
                continue;
            }
            self.objects.lock().unwrap().remove(key);
            self.deleted.lock().unwrap().push(key.clone());
            self.operations
                .lock()
                .unwrap()
                .push(("delete", key.clone()));
        }
        Ok(not_deleted)
    }

    async fn mark_missing(&self, missing: &Missing) -> Result<(), ProjectorError> {
        self.marks.lock().unwrap().insert(
            missing.key.clone(),
            (missing.clone(), OffsetDateTime::now_utc()),
        );
        Ok(())
    }

    async fn clear_marks_before(&self, at: OffsetDateTime) -> Result<u64, ProjectorError> {
        let mut marks = self.marks.lock().unwrap();
        let before = marks.len();
        marks.retain(|_, (_, seen)| *seen >= at);
        Ok((before - marks.len()) as u64)
    }

    async fn read_model_lag(&self, _wait: Duration) -> Result<u64, ProjectorError> {
        Ok(self.lag)
    }
}

fn options(delete: bool) -> SweepOptions {
    SweepOptions::new(Duration::from_secs(3600), delete, "test")
}

async fn run(fake: &Fake, options: &SweepOptions) -> (Summary, Vec<Finding>) {
    let mut findings = Vec::new();
    let summary = sweep(fake, options, &mut |f: &Finding| findings.push(f.clone()))
        .await
        .unwrap();
    (summary, findings)
}

fn orphans(findings: &[Finding]) -> Vec<(String, Reason, Outcome)> {
    findings
        .iter()
        .filter_map(|f| match f {
            Finding::Orphan(o) => Some((o.key.clone(), o.reason, o.outcome.clone())),
            Finding::Missing(_) => None,
        })
        .collect()
}

/// A ready image with its original and v1 variants stored and named by the read model.
fn ready_image(fake: &mut Fake) -> Uuid {
    let id = fake.image("ready", hours_ago(3));
    let original = format!("{PREFIX}originals/{id}");
    fake.put(&original, hours_ago(3));
    fake.originals.insert(original, id);
    for name in ["thumb", "large"] {
        let key = format!("{PREFIX}variants/{id}/v1/{name}.webp");
        fake.put(&key, hours_ago(3));
        fake.variants.insert(key, id);
    }
    id
}

#[tokio::test]
async fn an_original_without_an_event_is_an_orphan_only_after_the_grace_period() {
    let mut fake = Fake::default();
    ready_image(&mut fake);
    let old = format!("{PREFIX}originals/{}", Uuid::now_v7());
    let young = format!("{PREFIX}originals/{}", Uuid::now_v7());
    fake.put(&old, hours_ago(2));
    fake.put(&young, OffsetDateTime::now_utc());

    let (summary, findings) = run(&fake, &options(false)).await;
    assert_eq!(
        orphans(&findings),
        [(old.clone(), Reason::NoEvent, Outcome::Listed)]
    );
    assert_eq!(summary.orphans_no_event, 1);
    assert_eq!(summary.recent_unreferenced, 1);
    assert_eq!(summary.objects_scanned, 5);
    assert_eq!(summary.references_scanned, 3);
    assert_eq!(summary.missing(), 0);
    assert!(fake.appended().is_empty(), "a dry run appends nothing");
    assert_eq!(fake.stored().len(), 5, "a dry run deletes nothing");
}

#[tokio::test]
async fn deleting_appends_the_audit_event_then_removes_the_object() {
    let mut fake = Fake::default();
    let id = ready_image(&mut fake);
    let unknown = Uuid::now_v7();
    let original = format!("{PREFIX}originals/{unknown}");
    let stale_variant = format!("{PREFIX}variants/{id}/v0/thumb.webp");
    let outside_layout = format!("{PREFIX}originals/not-an-id");
    for key in [&original, &stale_variant, &outside_layout] {
        fake.put(key, hours_ago(2));
    }

    let (summary, findings) = run(&fake, &options(true)).await;
    let mut found = orphans(&findings);
    found.sort_by(|a, b| a.0.cmp(&b.0));
    let mut expected = vec![
        (original.clone(), Reason::NoEvent, Outcome::Removed),
        (outside_layout.clone(), Reason::NoEvent, Outcome::Removed),
        (
            stale_variant.clone(),
            Reason::Unreferenced,
            Outcome::Removed,
        ),
    ];
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(found, expected);
    assert_eq!((summary.removed, summary.removed_bytes), (3, 3 * 42));
    for key in [&original, &stale_variant, &outside_layout] {
        assert!(!fake.stored().contains(key), "{key} removed");
    }
    assert_eq!(fake.stored().len(), 3, "the ready image's objects stay");

    let events = fake.appended.lock().unwrap().clone();
    let by_key: HashMap<String, (Uuid, OrphanRemoved)> = events
        .iter()
        .map(|e| match &e.payload {
            Payload::OrphanRemoved(r) => (r.key.clone(), (e.image_id, r.clone())),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(by_key[&original].0, unknown);
    assert_eq!(by_key[&original].1.reason, "no-event");
    assert_eq!(by_key[&original].1.bytes, 42);
    assert_eq!(
        by_key[&original].1.last_modified_micros,
        fake_micros_of(&findings, &original)
    );
    assert_eq!(by_key[&stale_variant].0, id);
    assert_eq!(by_key[&stale_variant].1.reason, "unreferenced");
    assert_eq!(by_key[&outside_layout].0, Uuid::nil());
    assert!(events
        .iter()
        .all(|e| e.correlation_id.starts_with("orphan-sweep-") && e.producer.service == "test"));
}

fn fake_micros_of(findings: &[Finding], key: &str) -> i64 {
    findings
        .iter()
        .find_map(|f| match f {
            Finding::Orphan(o) if o.key == key => Some(micros(o.last_modified)),
            _ => None,
        })
        .unwrap()
}

#[tokio::test]
async fn objects_of_a_deleted_image_are_orphans_once_the_deletion_is_older_than_the_grace() {
    let mut fake = Fake::default();
    let long_ago = fake.image("deleted", hours_ago(2));
    let just_now = fake.image("deleted", OffsetDateTime::now_utc());
    for id in [long_ago, just_now] {
        let original = format!("{PREFIX}originals/{id}");
        fake.put(&original, hours_ago(3));
        fake.originals.insert(original, id);
        // The variant rows are gone (ObjectsDeleted) but an object stayed behind.
        fake.put(
            &format!("{PREFIX}variants/{id}/v1/thumb.webp"),
            hours_ago(3),
        );
    }

    let (summary, findings) = run(&fake, &options(false)).await;
    let mut found: Vec<String> = orphans(&findings).into_iter().map(|o| o.0).collect();
    found.sort();
    assert_eq!(
        found,
        [
            format!("{PREFIX}originals/{long_ago}"),
            format!("{PREFIX}variants/{long_ago}/v1/thumb.webp"),
        ]
    );
    assert_eq!(summary.orphans_unreferenced, 2);
    assert_eq!(
        summary.missing(),
        0,
        "a deleted image's objects are never missing"
    );
}

#[tokio::test]
async fn a_missing_object_is_reported_and_marked_and_the_mark_cleared_once_it_is_back() {
    let mut fake = Fake::default();
    let id = ready_image(&mut fake);
    let gone = format!("{PREFIX}variants/{id}/v1/large.webp");
    let saved = fake.objects.lock().unwrap().remove(&gone).unwrap();
    // Missing too, but its image is deleted: nothing to report.
    let deleted = fake.image("deleted", hours_ago(2));
    fake.originals
        .insert(format!("{PREFIX}originals/{deleted}"), deleted);

    let (summary, findings) = run(&fake, &options(true)).await;
    assert_eq!(
        findings,
        [Finding::Missing(Missing {
            key: gone.clone(),
            kind: Kind::Variant,
            image_id: id,
            image_status: "ready".into(),
        })]
    );
    assert_eq!(
        (summary.missing_variants, summary.missing_originals),
        (1, 0)
    );
    assert!(fake.marks.lock().unwrap().contains_key(&gone));
    assert!(fake.appended().is_empty() && fake.deleted.lock().unwrap().is_empty());

    fake.objects.lock().unwrap().insert(gone.clone(), saved);
    let (summary, findings) = run(&fake, &options(false)).await;
    assert!(findings.is_empty(), "{findings:?}");
    assert_eq!(summary.marks_cleared, 1);
    assert!(fake.marks.lock().unwrap().is_empty());
}

#[tokio::test]
async fn the_merge_pages_through_both_sides_and_stays_inside_the_prefix() {
    let mut fake = Fake::default();
    let mut ids = Vec::new();
    for _ in 0..7 {
        ids.push(ready_image(&mut fake));
    }
    // Another deployment's keys, in the bucket and in a read model that names them.
    let other = fake.image("ready", hours_ago(3));
    fake.put(&format!("other/originals/{other}"), hours_ago(3));
    fake.put(&format!("zz/originals/{other}"), hours_ago(3));
    fake.originals
        .insert(format!("zz/originals/{other}"), other);
    // Every other image misses its thumb; two orphans sit between them.
    for id in ids.iter().step_by(2) {
        fake.objects
            .lock()
            .unwrap()
            .remove(&format!("{PREFIX}variants/{id}/v1/thumb.webp"));
    }
    fake.put(
        &format!("{PREFIX}originals/{}", Uuid::now_v7()),
        hours_ago(2),
    );
    fake.put(
        &format!("{PREFIX}variants/{}/v2/x.webp", ids[3]),
        hours_ago(2),
    );

    let mut options = options(false);
    options.page_size = 2;
    let (summary, findings) = run(&fake, &options).await;
    assert_eq!(summary.missing_variants, 4);
    assert_eq!(summary.orphans(), 2);
    assert_eq!(summary.objects_scanned, 7 * 3 - 4 + 2);
    assert_eq!(summary.references_scanned, 7 * 3);
    assert!(findings.iter().all(|f| match f {
        Finding::Orphan(o) => o.key.starts_with(PREFIX),
        Finding::Missing(m) => m.key.starts_with(PREFIX),
    }));
    assert_eq!(*fake.largest_page.lock().unwrap(), 2);
}

#[tokio::test]
async fn a_lagging_read_model_stops_deletion_but_not_listing() {
    let mut fake = Fake {
        lag: 3,
        ..Fake::default()
    };
    ready_image(&mut fake);
    let orphan = format!("{PREFIX}originals/{}", Uuid::now_v7());
    fake.put(&orphan, hours_ago(2));

    let error = sweep(&fake, &options(true), &mut |_: &Finding| {})
        .await
        .unwrap_err();
    assert!(
        matches!(error, ProjectorError::ReadModelBehind { lag: 3 }),
        "{error}"
    );
    assert!(fake.stored().contains(&orphan));

    let (summary, findings) = run(&fake, &options(false)).await;
    assert_eq!(summary.read_model_lag, 3);
    assert_eq!(orphans(&findings).len(), 1);
}

#[tokio::test]
async fn an_object_written_again_since_the_listing_is_kept() {
    let mut fake = Fake::default();
    let orphan = format!("{PREFIX}originals/{}", Uuid::now_v7());
    fake.put(&orphan, hours_ago(2));
    fake.rewritten.insert(orphan.clone());

    let (summary, findings) = run(&fake, &options(true)).await;
    assert_eq!(
        orphans(&findings),
        [(
            orphan.clone(),
            Reason::NoEvent,
            Outcome::Kept("written again within the grace period".into())
        )]
    );
    assert_eq!((summary.kept, summary.removed), (1, 0));
    assert!(fake.appended().is_empty());
    assert!(fake.stored().contains(&orphan));
}

#[tokio::test]
async fn without_the_log_nothing_is_deleted() {
    let fake = Fake {
        fail_append: true,
        ..Fake::default()
    };
    let orphan = format!("{PREFIX}originals/{}", Uuid::now_v7());
    fake.put(&orphan, hours_ago(2));
    assert!(sweep(&fake, &options(true), &mut |_: &Finding| {})
        .await
        .is_err());
    assert!(
        fake.stored().contains(&orphan),
        "no audit record, no delete"
    );
}

#[test]
fn image_ids_come_from_the_key_layout() {
    let id = Uuid::now_v7();
    assert_eq!(
        image_id_of(&format!("ns/originals/{id}"), "ns/originals/"),
        Some(id)
    );
    assert_eq!(
        image_id_of(&format!("ns/variants/{id}/v1/thumb.webp"), "ns/variants/"),
        Some(id)
    );
    assert_eq!(image_id_of("ns/originals/junk", "ns/originals/"), None);
    assert_eq!(
        image_id_of(&format!("other/originals/{id}"), "ns/originals/"),
        None
    );
}
