//! The API keeps the promises its OpenAPI document makes: schemathesis (property-based, from
//! the document) runs every check, stateful phase included, against a real pipeline; and a
//! client reads and deletes what it just uploaded, before the projector has applied it.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use imgpipe_e2e::{tools, Pipeline};

/// schemathesis' `st`, from the venv `scripts/venv` creates (once) and names.
fn schemathesis() -> PathBuf {
    tools::venv_tool("st")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schemathesis_finds_no_broken_promise() {
    let st = schemathesis();
    let pipeline = Pipeline::start().await.expect("pipeline starts");
    let document = pipeline.url("/v1/openapi.json");
    let config = tools::workspace_root().join("e2e/schemathesis.toml");
    let authorization = format!("Authorization: Bearer {}", pipeline.api_key);
    // Run from a scratch directory: schemathesis may leave files where it runs.
    let scratch = std::env::temp_dir().join(format!("imgpipe-st-{}", pipeline.namespace));
    std::fs::create_dir_all(&scratch).unwrap();
    let run = tokio::task::spawn_blocking(move || {
        Command::new(st)
            .current_dir(&scratch)
            .arg("--config-file")
            .arg(config)
            .args(["--no-color", "run", &document])
            .args(["--checks", "all"])
            // Soft deletion is documented: see e2e/schemathesis.toml.
            .args(["--exclude-checks", "use_after_free"])
            // A status stream does not end while the image is there: every case would run into
            // the request timeout. tests/stream.rs holds the stream to its document.
            .args(["--exclude-operation-id", "stream_image"])
            .args(["--phases", "examples,coverage,fuzzing,stateful"])
            .args(["--header", &authorization])
            // Reproducible: a fixed seed and no examples carried over from earlier runs.
            .args(["--seed", "20261129", "--generation-database", "none"])
            .args(["--max-examples", "50"])
            .args(["--request-timeout", "30"])
            .output()
            .expect("st runs")
    })
    .await
    .unwrap();
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    // Shown with --nocapture on success too: the phases, scenarios and cases run.
    println!("{report}");
    assert!(
        run.status.success(),
        "schemathesis: {}\n{report}",
        run.status
    );
    pipeline.stop().await.unwrap();
}

/// Read-your-writes: with the projector held still (the read model's `images` locked against
/// writes, as a projector far behind would be), the image a 202 announced reads `uploaded`
/// with what the 202 said, and DELETE accepts its deletion; once the projector moves on, the
/// image ends deleted, and ingest's record of the upload is pruned.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_reads_and_deletes_before_the_projector_applies_it() {
    let pipeline = Pipeline::start().await.expect("pipeline starts");
    let pool = pipeline.database.pool().unwrap();
    let mut hold = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE images IN EXCLUSIVE MODE")
        .execute(&mut *hold)
        .await
        .unwrap();

    let photo = imgpipe_e2e::fixtures::kite();
    let (status, accepted) = pipeline.upload(photo).await.unwrap();
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_string();

    let (status, image) = pipeline.image(&id).await.unwrap();
    assert_eq!(status, 200, "{image}");
    assert_eq!(image["status"], "uploaded");
    for field in ["format", "width", "height", "bytes", "sha256"] {
        assert_eq!(image[field], accepted[field], "{field}: {image}");
    }
    assert_eq!(image["variants"], serde_json::json!([]));
    let (status, timeline) = pipeline
        .get(&format!("/v1/images/{id}/events"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{timeline}");

    let path = format!("/v1/images/{id}");
    let (status, deleting) = pipeline
        .request(reqwest::Method::DELETE, &pipeline.api_key, &path)
        .await
        .unwrap();
    assert_eq!(
        (status, deleting["status"].as_str()),
        (202, Some("deleting"))
    );
    // Another client still sees nothing.
    let (status, _) = pipeline
        .request(reqwest::Method::GET, &pipeline.other_api_key, &path)
        .await
        .unwrap();
    assert_eq!(status, 404);

    hold.rollback().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (status, image) = pipeline.image(&id).await.unwrap();
        if status == 200 && image["status"] == "deleted" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not deleted: {image}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (events, _) = pipeline.timeline(&id).await.unwrap();
    assert_eq!(
        events.iter().filter(|e| *e == "ImageDeleted").count(),
        1,
        "{events:?}"
    );

    // Once the read model has the image, the next upload prunes ingest's record of it.
    let photo = imgpipe_e2e::fixtures::kite();
    let (status, _) = pipeline.upload(photo).await.unwrap();
    assert_eq!(status, 202);
    let (kept,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM accepted_uploads WHERE image_id = $1::uuid")
            .bind(&id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(kept, 0);
    pipeline.stop().await.unwrap();
}
