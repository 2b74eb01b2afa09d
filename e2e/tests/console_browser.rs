//! The console in a real browser on the real stack (issue #17): Debian's chromium, driven by
//! selenium (`e2e/browser/console.py`) through the system chromedriver. It signs in, drops a
//! corpus photo on the upload page and sees it turn ready with its thumbnail without a reload,
//! sees a file that is no image refused in words, opens the image's timeline, looks at the
//! gallery at 360 px, and redrives a dead letter from the operator page after a dry run.
//! A screenshot of every page is written under the target dir (`console-screenshots/`).
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use imgpipe_e2e::dead_letters::write_dead_letter;
use imgpipe_e2e::fixtures::{stored_kite, KITE};
use imgpipe_e2e::{corpus_dir, tools, Pipeline};
use serde_json::Value;

/// Where the screenshots go: the target dir's scratch space, one folder a run.
fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_works_in_a_real_browser() {
    let chromedriver = tools::chromedriver();
    let python = tools::venv_tool("python");
    let pipeline = Pipeline::start().await.expect("pipeline starts");
    // A dead letter to redrive: an upload the processor gave up on.
    let lost = stored_kite(&pipeline).await;
    write_dead_letter(&pipeline, &lost, 1000, "imgpipe-processor").await;
    let not_an_image = std::env::temp_dir().join(format!("{}-notes.txt", pipeline.namespace));
    std::fs::write(&not_an_image, "plain text, not an image\n").unwrap();
    let shots = screenshots();

    let script = tools::workspace_root().join("e2e/browser/console.py");
    let env = [
        ("CONSOLE_URL", pipeline.url("")),
        ("CONSOLE_KEY", pipeline.admin_api_key.clone()),
        ("PHOTO", corpus_dir().join(KITE).display().to_string()),
        ("NOT_AN_IMAGE", not_an_image.display().to_string()),
        ("DEAD_LETTER", "0:0".to_string()),
        ("SHOTS", shots.display().to_string()),
        ("CHROMEDRIVER", chromedriver.display().to_string()),
    ];
    let run = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .envs(env)
            .output()
            .expect("python runs")
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    let seen: Value = serde_json::from_slice(&run.stdout)
        .unwrap_or_else(|e| panic!("the script's report: {e}\nstderr:\n{stderr}"));
    println!("{seen:#}");
    assert!(
        run.status.success() && seen.get("failure").is_none(),
        "the browser run failed ({}); screenshots in {}:\n{seen:#}\nstderr:\n{stderr}",
        run.status,
        shots.display()
    );

    // Signed in through the sign-in page, and back to the page asked for.
    assert!(
        seen["sign_in_url"]
            .as_str()
            .unwrap()
            .contains("/console/sign-in?next=/console/upload"),
        "{seen}"
    );
    assert!(seen["after_sign_in"]
        .as_str()
        .unwrap()
        .ends_with("/console/upload"));
    assert_eq!(seen["first_tab"], "Skip to content");

    // The refused file says why, in the API's words.
    let refused = seen["refused_text"].as_str().unwrap();
    assert!(
        refused.starts_with("415 unsupported-media-type"),
        "{refused}"
    );

    // The photo turned ready on the page it was dropped on, with its thumbnail, no reload.
    let id = seen["uploaded_id"].as_str().unwrap();
    assert_eq!(seen["marker"], "kept", "the page was not reloaded: {seen}");
    assert!(seen["upload_page_url"]
        .as_str()
        .unwrap()
        .ends_with("/console/upload"));
    assert_eq!(seen["thumb_width"], 256, "{seen}");
    let (status, image) = pipeline
        .request(
            reqwest::Method::GET,
            &pipeline.admin_api_key,
            &format!("/v1/images/{id}"),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{image}");
    assert_eq!(image["status"], "ready", "{image}");

    // Its timeline and variants.
    let timeline: Vec<&str> = seen["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(timeline, ["ImageUploaded", "ImageProcessed"], "{seen}");
    assert_eq!(
        seen["variant_links"],
        serde_json::json!(["thumb", "medium", "large"])
    );
    assert!(
        seen["gallery_ids"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g == id),
        "{seen}"
    );
    assert!(
        seen["gallery_placeholders"].as_i64().unwrap() >= 1,
        "{seen}"
    );
    assert!(seen["narrow_overflow"].as_i64().unwrap() <= 0, "{seen}");
    assert_eq!(seen["lag_tables"], 4, "{seen}");

    // The dead letter: previewed, then redriven, and the pipeline handles it.
    assert!(seen["pending_before"]
        .as_str()
        .unwrap()
        .starts_with("1 not yet redriven"));
    assert!(seen["preview"]
        .as_str()
        .unwrap()
        .starts_with("1 dead letters would move"));
    assert!(seen["redrive"]
        .as_str()
        .unwrap()
        .starts_with("1 dead letters moved"));
    assert!(seen["pending_after"]
        .as_str()
        .unwrap()
        .starts_with("0 not yet redriven"));
    let redriven = pipeline
        .wait_until_settled(&lost.image_id.to_string(), Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(redriven["status"], "ready", "{redriven}");

    for page in [
        "01-sign-in",
        "02-uploading",
        "03-ready",
        "04-image",
        "05-gallery",
        "06-gallery-360px",
        "07-operator",
        "08-dead-letters",
        "09-redrive-preview",
        "10-redriven",
    ] {
        let png = std::fs::read(shots.join(format!("{page}.png"))).unwrap();
        assert_eq!(&png[1..4], b"PNG", "{page}");
    }
    let _ = std::fs::remove_file(not_an_image);
    pipeline.stop().await.unwrap();
}
