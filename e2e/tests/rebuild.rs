//! `rebuild` on the real stack while the API serves and uploads keep coming: the rebuilt
//! tables equal the live ones (plus what was appended meanwhile), the API never answers an
//! error during the swap, the live projector's later writes land in the new tables, ingest's
//! Idempotency-Key reservations survive, and nothing of the old or the next schema is left.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use imgpipe_e2e::Pipeline;
use imgpipe_projector::rebuild::{self, Options, Phase, Progress, Quiet};
use sqlx::PgPool;

/// Every row of every table as text, by table, in a stable order. The positions without
/// their `updated_at`, which is when they were written, not what.
async fn snapshot(pool: &PgPool) -> BTreeMap<String, Vec<String>> {
    let mut tables = BTreeMap::new();
    for (table, query) in [
        ("images", "SELECT t::text FROM images t ORDER BY image_id"),
        (
            "variants",
            "SELECT t::text FROM variants t ORDER BY image_id, name",
        ),
        (
            "image_events",
            "SELECT t::text FROM image_events t ORDER BY event_id",
        ),
        (
            "projection_positions",
            "SELECT topic || ' ' || partition || ' ' || next_offset FROM projection_positions \
             ORDER BY topic, partition",
        ),
        (
            "idempotency_keys",
            "SELECT t::text FROM idempotency_keys t ORDER BY owner, key",
        ),
    ] {
        let rows: Vec<String> = sqlx::query_scalar(query).fetch_all(pool).await.unwrap();
        tables.insert(table.to_string(), rows);
    }
    tables
}

async fn upload(pipeline: &Pipeline, body: &[u8], idempotency_key: Option<&str>) -> (u16, String) {
    let mut request = pipeline
        .http
        .post(pipeline.url("/v1/images"))
        .bearer_auth(&pipeline.api_key)
        .body(body.to_vec());
    if let Some(key) = idempotency_key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap();
    (status, body["id"].as_str().unwrap_or_default().to_string())
}

/// What the reader saw while the rebuild ran.
#[derive(Default)]
struct Watch {
    errors: Mutex<Vec<String>>,
    requests: AtomicU64,
    new_ids: Mutex<Vec<String>>,
}

impl Watch {
    fn error(&self, what: String) {
        self.errors.lock().unwrap().push(what);
    }
}

/// Opens the reader's uploads once the rebuild replays: it has counted the live rows by then,
/// so its `before` counts are the images uploaded before it started, whatever the reader does.
struct OpenUploadsWhenReplaying(Arc<AtomicBool>);

impl Progress for OpenUploadsWhenReplaying {
    fn phase(&mut self, phase: Phase) {
        if phase == Phase::Replaying {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

/// Reads every known image, the listing and a timeline in a loop, and uploads a small image
/// every few rounds once `uploads` is open, until `stop`. Any answer but 200 (202 for uploads) is an error, except a
/// 404 for a new image not yet projected; once seen, a new image must never be missing again.
async fn hammer(
    pipeline: Arc<Pipeline>,
    known: Vec<String>,
    watch: Arc<Watch>,
    uploads: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) {
    let small = std::fs::read(imgpipe_e2e::corpus_dir().join("exif/camera-Canon_40D.jpg")).unwrap();
    let mut seen = BTreeSet::new();
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        for id in &known {
            let (status, body) = pipeline.image(id).await.unwrap();
            if status != 200 {
                watch.error(format!("GET image {id}: {status} {body}"));
            }
            watch.requests.fetch_add(1, Ordering::Relaxed);
        }
        let (status, body) = pipeline.get("/v1/images?limit=200").await.unwrap();
        if status != 200 {
            watch.error(format!("listing: {status} {body}"));
        }
        let id = &known[round as usize % known.len()];
        let (status, body) = pipeline
            .get(&format!("/v1/images/{id}/events"))
            .await
            .unwrap();
        if status != 200 || body["events"].as_array().is_none_or(|e| e.is_empty()) {
            watch.error(format!("timeline {id}: {status} {body}"));
        }
        watch.requests.fetch_add(2, Ordering::Relaxed);
        if round % 3 == 0 && uploads.load(Ordering::Relaxed) {
            let (status, id) = upload(&pipeline, &small, None).await;
            if status == 202 {
                watch.new_ids.lock().unwrap().push(id);
            } else {
                watch.error(format!("upload: {status}"));
            }
        }
        let new_ids = watch.new_ids.lock().unwrap().clone();
        for id in new_ids {
            let (status, body) = pipeline.image(&id).await.unwrap();
            match status {
                200 => {
                    seen.insert(id);
                }
                404 if !seen.contains(&id) => {}
                _ => watch.error(format!("GET new image {id}: {status} {body}")),
            }
        }
    }
}

/// Polls `condition` until it holds; fails the test after a minute.
async fn wait_for(condition: impl Fn() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn leftover_schemas(pool: &PgPool, namespace: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE nspname LIKE $1 || '\\_%'")
        .bind(namespace)
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_while_serving_gives_identical_tables_and_never_an_error() {
    let pipeline = Arc::new(Pipeline::start().await.expect("pipeline starts"));
    let corpus = imgpipe_e2e::corpus_dir();
    let mut files: Vec<_> = imgpipe_e2e::corpus_files("exif")
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    files.push(corpus.join("damaged/image01088.jpg"));
    files.push(corpus.join("photos/kde-PastelHills-3200.jpg"));
    let mut ids = Vec::new();
    for (n, file) in files.iter().cycle().take(20).enumerate() {
        let body = std::fs::read(file).unwrap();
        // One upload with an Idempotency-Key: ingest's own state, which a rebuild must keep.
        let key = (n == 0).then_some("rebuild-order-1");
        let (status, id) = upload(&pipeline, &body, key).await;
        assert_eq!(status, 202, "{}", file.display());
        ids.push(id);
    }
    let mut statuses = BTreeMap::<String, usize>::new();
    for id in &ids {
        let image = pipeline
            .wait_until_settled(id, Duration::from_secs(180))
            .await
            .unwrap();
        *statuses
            .entry(image["status"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    // A deleted image too, so every kind of event is replayed.
    let (status, _) = pipeline
        .request(
            reqwest::Method::DELETE,
            &pipeline.api_key,
            &format!("/v1/images/{}", ids[1]),
        )
        .await
        .unwrap();
    assert_eq!(status, 202);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, image) = pipeline.image(&ids[1]).await.unwrap();
        if image["status"] == "deleted" && image["variants"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "not deleted: {image}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    pipeline
        .wait_until_projected(Duration::from_secs(60))
        .await
        .unwrap();
    let pool = pipeline.database.pool().unwrap();
    let before = snapshot(&pool).await;
    assert_eq!(before["images"].len(), 20, "{statuses:?}");
    // The upload's Idempotency-Key and the deleted image's deletion claim.
    assert_eq!(before["idempotency_keys"].len(), 2);

    let watch = Arc::new(Watch::default());
    let uploads = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn(hammer(
        Arc::clone(&pipeline),
        ids.clone(),
        Arc::clone(&watch),
        Arc::clone(&uploads),
        Arc::clone(&stop),
    ));
    // The reader is going before the rebuild starts.
    wait_for(
        || watch.requests.load(Ordering::Relaxed) > 0,
        "the reader's first request",
    )
    .await;
    let requests_before = watch.requests.load(Ordering::Relaxed);
    let summary = rebuild::run(
        &pipeline.projector_config,
        &Options::default(),
        &mut OpenUploadsWhenReplaying(Arc::clone(&uploads)),
    )
    .await
    .expect("rebuild runs");
    let requests_during = watch.requests.load(Ordering::Relaxed) - requests_before;
    // Keep reading and uploading after the swap, a few uploads more: the live projector must go
    // on writing into the new tables (each upload settles, below).
    let uploads_at_swap = watch.new_ids.lock().unwrap().len();
    wait_for(
        || watch.new_ids.lock().unwrap().len() >= uploads_at_swap + 2,
        "two uploads after the swap",
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    reader.await.unwrap();
    let errors = watch.errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "the API answered errors: {errors:#?}");
    assert!(requests_during > 0, "no request ran during the rebuild");
    assert!(summary.swapped, "{summary:?}");
    assert!(
        summary.records >= before["image_events"].len() as u64,
        "{summary:?}"
    );
    assert_eq!(summary.tables["images"].before, 20);
    assert_eq!(summary.tables["idempotency_keys"].after, 2);

    // Every image uploaded during and after the rebuild is projected and settles.
    let new_ids = watch.new_ids.lock().unwrap().clone();
    assert!(!new_ids.is_empty(), "no upload ran during the rebuild");
    for id in &new_ids {
        pipeline
            .wait_until_settled(id, Duration::from_secs(180))
            .await
            .unwrap();
    }
    pipeline
        .wait_until_projected(Duration::from_secs(60))
        .await
        .unwrap();
    let after = snapshot(&pool).await;
    for table in ["images", "variants", "image_events", "idempotency_keys"] {
        let rows: BTreeSet<&String> = after[table].iter().collect();
        let missing: Vec<&String> = before[table].iter().filter(|r| !rows.contains(r)).collect();
        assert!(
            missing.is_empty(),
            "{table} lost or changed rows: {missing:#?}"
        );
    }
    assert_eq!(after["images"].len(), 20 + new_ids.len());

    // The Idempotency-Key reservation moved across: the same request is answered again.
    let first = std::fs::read(&files[0]).unwrap();
    let response = pipeline
        .http
        .post(pipeline.url("/v1/images"))
        .bearer_auth(&pipeline.api_key)
        .header("idempotency-key", "rebuild-order-1")
        .body(first)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["idempotent-replayed"], "true");

    // With nothing appended meanwhile, a second rebuild gives exactly the tables there are.
    let again = rebuild::run(&pipeline.projector_config, &Options::default(), &mut Quiet)
        .await
        .expect("second rebuild runs");
    assert!(again.swapped);
    assert_eq!(snapshot(&pool).await, after);
    assert!(leftover_schemas(&pool, &pipeline.namespace)
        .await
        .is_empty());

    // A dry run replays into the next schema and drops it, leaving the live tables alone.
    let dry = rebuild::run(
        &pipeline.projector_config,
        &Options {
            dry_run: true,
            ..Options::default()
        },
        &mut Quiet,
    )
    .await
    .unwrap();
    assert!(!dry.swapped);
    for (table, rows) in &dry.tables {
        // A dry run does not move the kept tables (ingest's own state) into its schema.
        if !imgpipe_projector::rebuild::KEPT.contains(&table.as_str()) {
            assert_eq!(rows.before, rows.after, "{table}: {dry:?}");
        }
    }
    assert_eq!(snapshot(&pool).await, after);
    assert!(leftover_schemas(&pool, &pipeline.namespace)
        .await
        .is_empty());

    // The projector reports what it applied.
    let metrics = pipeline.projector_metrics().await;
    for expected in [
        "imgpipe_projector_events_applied_total{event_type=\"ImageUploaded\"}",
        "imgpipe_projector_events_applied_total{event_type=\"ObjectsDeleted\"}",
        "imgpipe_projector_batch_duration_seconds_bucket",
        "imgpipe_consumer_lag{group=\"imgpipe-projector\",partition=",
    ] {
        assert!(
            metrics.contains(expected),
            "{expected} missing from:\n{metrics}"
        );
    }

    pool.close().await;
    Arc::try_unwrap(pipeline)
        .ok()
        .expect("the reader is done")
        .stop()
        .await
        .unwrap();
}
