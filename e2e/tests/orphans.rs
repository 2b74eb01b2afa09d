//! The orphan sweep on the real stack: an original stored without its event is found once it
//! is older than the grace period and removed with an OrphanRemoved event; a variant deleted
//! behind the pipeline's back is reported and marked, never dropped from the read model; a
//! variant of an older spec is an unreferenced orphan; a page of orphans goes in batch deletes
//! (`DeleteObjects`, 1000 keys a request) on the real object store; the projector's periodic
//! sweep does the same on its own.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use futures::StreamExt;
use imgpipe_e2e::Pipeline;
use imgpipe_infra::registry::EventCodec;
use imgpipe_infra::KafkaConfig;
use imgpipe_projector::orphans::{
    self, Finding, Kind, Missing, Orphan, Outcome, PeriodicSweep, Reason, StoreBackend, Summary,
    SweepOptions,
};
use imgpipe_schemas::{Event, Payload};
use rdkafka::Message;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Long enough that the objects a test writes are younger than it at first.
const GRACE: Duration = Duration::from_secs(3);

fn photo() -> Vec<u8> {
    imgpipe_e2e::fixtures::kite()
}

fn backend(pipeline: &Pipeline) -> StoreBackend {
    StoreBackend::new(
        pipeline.database.pool().unwrap(),
        pipeline.store.clone(),
        &pipeline.kafka,
        EventCodec::single_object(),
        "e2e-orphans",
    )
    .unwrap()
}

async fn sweep(
    backend: &StoreBackend,
    grace: Duration,
    delete: bool,
    page_size: i32,
) -> (Summary, Vec<Finding>) {
    let mut options = SweepOptions::new(grace, delete, "imgpipe-e2e");
    options.page_size = page_size;
    let mut findings = Vec::new();
    let summary = orphans::sweep(backend, &options, &mut |f: &Finding| {
        findings.push(f.clone())
    })
    .await
    .unwrap();
    (summary, findings)
}

fn orphan_findings(findings: &[Finding]) -> Vec<&Orphan> {
    findings
        .iter()
        .filter_map(|f| match f {
            Finding::Orphan(o) => Some(o),
            Finding::Missing(_) => None,
        })
        .collect()
}

/// Uploads the photo and waits until it is ready; its id and its variants' keys.
async fn ready_image(pipeline: &Pipeline) -> (Uuid, Vec<String>) {
    let (status, accepted) = pipeline.upload(photo()).await.unwrap();
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_string();
    let image = pipeline
        .wait_until_settled(&id, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(image["status"], "ready", "{image}");
    let keys = image["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["key"].as_str().unwrap().to_string())
        .collect();
    (id.parse().unwrap(), keys)
}

/// The event types the projector recorded for `image_id` (the timeline table, which also holds
/// events of images the read model never had).
async fn recorded_events(pipeline: &Pipeline, image_id: Uuid) -> Vec<String> {
    let pool = pipeline.database.pool().unwrap();
    let types: Vec<(String,)> = sqlx::query_as(
        "SELECT event_type FROM image_events WHERE image_id = $1 ORDER BY occurred_at, event_id",
    )
    .bind(image_id)
    .fetch_all(&pool)
    .await
    .unwrap();
    types.into_iter().map(|(t,)| t).collect()
}

async fn wait_for_recorded(pipeline: &Pipeline, image_id: Uuid, event_type: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !recorded_events(pipeline, image_id)
        .await
        .iter()
        .any(|t| t == event_type)
    {
        assert!(
            Instant::now() < deadline,
            "{event_type} of {image_id} never projected"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every event on the events topic, from the start up to its current end.
async fn events_on_topic(kafka: &KafkaConfig) -> Vec<Event> {
    imgpipe_e2e::read_topic(kafka, &kafka.topics().events)
        .await
        .unwrap()
        .iter()
        .map(|record| imgpipe_schemas::decode(record.payload().unwrap_or_default()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_original_without_its_event_is_removed_with_an_audit_event_after_the_grace_period() {
    let pipeline = Pipeline::start().await.expect("pipeline starts");
    let (ready, _) = ready_image(&pipeline).await;
    // An upload whose event was never appended: the original alone.
    let orphan_id = Uuid::now_v7();
    let orphan_key = pipeline.store.original_key(orphan_id);
    let orphan_bytes = photo();
    pipeline
        .store
        .put(&orphan_key, orphan_bytes.clone().into(), "image/jpeg")
        .await
        .unwrap();
    let backend = backend(&pipeline);

    // Within the grace period it is nobody's business yet; the ready image is accounted for.
    let (summary, findings) = sweep(&backend, Duration::from_secs(3600), true, 1000).await;
    assert!(findings.is_empty(), "{findings:?}");
    assert_eq!(summary.objects_scanned, 5, "{summary:?}");
    assert_eq!(summary.references_scanned, 4, "{summary:?}");
    assert_eq!(summary.recent_unreferenced, 1, "{summary:?}");
    assert_eq!(summary.read_model_lag, 0);

    tokio::time::sleep(GRACE + Duration::from_secs(1)).await;

    // A dry run lists it and leaves it.
    let (summary, findings) = sweep(&backend, GRACE, false, 1000).await;
    let found = orphan_findings(&findings);
    assert_eq!(found.len(), 1, "{findings:?}");
    assert_eq!(found[0].key, orphan_key);
    assert_eq!(found[0].kind, Kind::Original);
    assert_eq!(found[0].image_id, Some(orphan_id));
    assert_eq!(found[0].reason, Reason::NoEvent);
    assert_eq!(found[0].outcome, Outcome::Listed);
    assert_eq!(found[0].bytes, orphan_bytes.len() as i64);
    assert_eq!(summary.orphans_no_event, 1);
    assert!(pipeline.store.exists(&orphan_key).await.unwrap());

    // --delete: the audit event first, then the object.
    let (summary, findings) = sweep(&backend, GRACE, true, 1000).await;
    let found = orphan_findings(&findings);
    assert_eq!(found.len(), 1, "{findings:?}");
    assert_eq!(found[0].outcome, Outcome::Removed);
    assert_eq!(
        (summary.removed, summary.removed_bytes),
        (1, orphan_bytes.len() as u64)
    );
    assert!(!pipeline.store.exists(&orphan_key).await.unwrap());
    let ready_original = pipeline.store.original_key(ready);
    assert!(pipeline.store.exists(&ready_original).await.unwrap());

    let removed: Vec<(Uuid, imgpipe_schemas::OrphanRemoved)> = events_on_topic(&pipeline.kafka)
        .await
        .into_iter()
        .filter_map(|event| match event.payload {
            Payload::OrphanRemoved(removed) => Some((event.image_id, removed)),
            _ => None,
        })
        .collect();
    assert_eq!(removed.len(), 1, "{removed:?}");
    let (image_id, event) = &removed[0];
    assert_eq!(*image_id, orphan_id);
    assert_eq!(event.key, orphan_key);
    assert_eq!(event.reason, "no-event");
    assert_eq!(event.bytes, orphan_bytes.len() as i64);
    let written_secs = event.last_modified_micros / 1_000_000;
    let now_secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (now_secs - 120..=now_secs).contains(&written_secs),
        "last modified {written_secs}, now {now_secs}"
    );
    wait_for_recorded(&pipeline, orphan_id, "OrphanRemoved").await;
    assert_eq!(
        recorded_events(&pipeline, orphan_id).await,
        ["OrphanRemoved"]
    );

    // Nothing is left to find.
    let (summary, findings) = sweep(&backend, GRACE, true, 1000).await;
    assert!(findings.is_empty(), "{findings:?}");
    assert_eq!(summary.objects_scanned, 4);
    pipeline.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_variant_is_marked_and_a_variant_of_an_older_spec_is_an_orphan() {
    let pipeline = Pipeline::start().await.expect("pipeline starts");
    let (id, variant_keys) = ready_image(&pipeline).await;
    // Behind the pipeline's back: one variant disappears, and one of spec version 0 (which
    // no result names any more) is still there.
    let thumb = variant_keys
        .iter()
        .find(|k| k.ends_with("/thumb.webp"))
        .unwrap()
        .clone();
    let thumb_bytes = pipeline.store.get(&thumb).await.unwrap();
    pipeline.store.delete(&thumb).await.unwrap();
    let stale = pipeline.store.variant_key(id, 0, "thumb", "webp");
    pipeline
        .store
        .put(&stale, thumb_bytes.clone(), "image/webp")
        .await
        .unwrap();
    tokio::time::sleep(GRACE + Duration::from_secs(1)).await;

    // Two keys a page, so both sides of the merge are read in several pages.
    let backend = backend(&pipeline);
    let (summary, findings) = sweep(&backend, GRACE, true, 2).await;
    assert_eq!(
        findings
            .iter()
            .filter(|f| matches!(f, Finding::Missing(_)))
            .collect::<Vec<_>>(),
        [&Finding::Missing(Missing {
            key: thumb.clone(),
            kind: Kind::Variant,
            image_id: id,
            image_status: "ready".into(),
        })]
    );
    let found = orphan_findings(&findings);
    assert_eq!(found.len(), 1, "{findings:?}");
    assert_eq!(
        (&found[0].key, found[0].reason, &found[0].outcome),
        (&stale, Reason::Unreferenced, &Outcome::Removed)
    );
    assert_eq!(found[0].image_id, Some(id));
    assert_eq!(summary.objects_scanned, 4, "{summary:?}");
    assert_eq!(summary.references_scanned, 4, "{summary:?}");
    assert!(!pipeline.store.exists(&stale).await.unwrap());

    // Marked for operators; the read model still names the variant.
    let pool = pipeline.database.pool().unwrap();
    let marks: Vec<(String, Uuid, String)> =
        sqlx::query_as("SELECT object_key, image_id, kind FROM missing_objects")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(marks, [(thumb.clone(), id, "variant".to_string())]);
    let (_, image) = pipeline.image(&id.to_string()).await.unwrap();
    assert_eq!(image["status"], "ready");
    assert_eq!(image["variants"].as_array().unwrap().len(), 3, "{image}");

    // The removal is in the image's timeline.
    wait_for_recorded(&pipeline, id, "OrphanRemoved").await;
    let (types, events) = pipeline.timeline(&id.to_string()).await.unwrap();
    assert_eq!(
        types,
        ["ImageUploaded", "ImageProcessed", "OrphanRemoved"],
        "{events:?}"
    );

    // Once the object is back, the next sweep clears the mark.
    pipeline
        .store
        .put(&thumb, thumb_bytes, "image/webp")
        .await
        .unwrap();
    let (summary, findings) = sweep(&backend, GRACE, false, 2).await;
    assert!(findings.is_empty(), "{findings:?}");
    assert_eq!(summary.marks_cleared, 1);
    let (marks,): (i64,) = sqlx::query_as("SELECT count(*) FROM missing_objects")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(marks, 0);
    pipeline.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_page_of_orphans_is_removed_with_batch_deletes_on_the_real_store() {
    let pipeline = Pipeline::start().await.expect("pipeline starts");
    let store = &pipeline.store;
    // More than one DeleteObjects takes, in one listing page.
    let keys: Vec<String> = (0..1100)
        .map(|_| store.original_key(Uuid::now_v7()))
        .collect();
    futures::stream::iter(&keys)
        .map(|key| store.put(key, "x".into(), "image/jpeg"))
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<()>, _>>()
        .unwrap();
    tokio::time::sleep(GRACE + Duration::from_secs(1)).await;

    let backend = backend(&pipeline);
    let (summary, findings) = sweep(&backend, GRACE, true, 1500).await;
    assert_eq!(
        (summary.removed, summary.delete_failed, summary.kept),
        (1100, 0, 0),
        "{summary:?}"
    );
    assert!(orphan_findings(&findings)
        .iter()
        .all(|o| o.outcome == Outcome::Removed));
    assert_eq!(
        store.list(&store.originals_prefix()).await.unwrap(),
        Vec::<String>::new()
    );
    let removed = events_on_topic(&pipeline.kafka)
        .await
        .into_iter()
        .filter(|event| matches!(event.payload, Payload::OrphanRemoved(_)))
        .count();
    assert_eq!(removed, 1100);

    // The store's call itself: a key that is not there is no error; over 1000 is refused
    // before anything is sent.
    let kept = store.original_key(Uuid::now_v7());
    store.put(&kept, "x".into(), "image/jpeg").await.unwrap();
    let not_deleted = store
        .delete_many(&[store.original_key(Uuid::now_v7()), kept.clone()])
        .await
        .unwrap();
    assert!(not_deleted.is_empty(), "{not_deleted:?}");
    assert!(!store.exists(&kept).await.unwrap());
    store.put(&kept, "x".into(), "image/jpeg").await.unwrap();
    let too_many = vec![kept.clone(); 1001];
    assert!(store.delete_many(&too_many).await.is_err());
    assert!(store.exists(&kept).await.unwrap());
    pipeline.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_periodic_sweep_removes_an_orphan_once_it_is_past_the_grace_period() {
    let pipeline = Pipeline::start().await.expect("pipeline starts");
    let orphan_id = Uuid::now_v7();
    let orphan_key = pipeline.store.original_key(orphan_id);
    pipeline
        .store
        .put(&orphan_key, photo().into(), "image/jpeg")
        .await
        .unwrap();
    let periodic = PeriodicSweep::new(
        backend(&pipeline),
        SweepOptions::new(GRACE, true, "imgpipe-projector"),
        Duration::from_secs(1),
    );
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(periodic.run(shutdown.clone()));

    // The audit event is appended before the delete: wait for both.
    wait_for_recorded(&pipeline, orphan_id, "OrphanRemoved").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while pipeline.store.exists(&orphan_key).await.unwrap() {
        assert!(Instant::now() < deadline, "{orphan_key} never removed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shutdown.cancel();
    task.await.unwrap();
    pipeline.stop().await.unwrap();
}
