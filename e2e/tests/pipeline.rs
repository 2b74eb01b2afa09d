//! Upload -> S3 -> ImageUploaded -> processor -> ImageProcessed -> projector -> status query,
//! on the real stack.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use imgpipe_e2e::{corpus_files, Pipeline};
use serde_json::Value;
use sha2::{Digest, Sha256};

const SETTLE: Duration = Duration::from_secs(240);

fn longest_edge(variant: &Value) -> u64 {
    variant["width"]
        .as_u64()
        .unwrap()
        .max(variant["height"].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_corpus_photo_ends_ready_with_its_variants_stored() {
    let pipeline = Pipeline::start().await.expect("pipeline starts");
    let photos = corpus_files("photos");
    assert!(photos.len() >= 5, "corpus photos missing: {photos:?}");

    let mut accepted = Vec::new();
    for path in &photos {
        let body = std::fs::read(path).unwrap();
        let (status, response) = pipeline.upload(body.clone()).await.unwrap();
        assert_eq!(status, 202, "{}: {response}", path.display());
        assert_eq!(response["status"], "uploaded");
        assert_eq!(
            response["sha256"].as_str().unwrap(),
            hex::encode(Sha256::digest(&body)),
            "sha256 of {}",
            path.display()
        );
        accepted.push((path.clone(), response["id"].as_str().unwrap().to_string()));
    }

    for (path, id) in &accepted {
        let image = pipeline.wait_until_settled(id, SETTLE).await.unwrap();
        assert_eq!(image["status"], "ready", "{}: {image}", path.display());
        assert_eq!(image["spec_version"], 1);
        let (width, height) = (
            image["width"].as_u64().unwrap(),
            image["height"].as_u64().unwrap(),
        );
        let variants = image["variants"].as_array().unwrap();
        let mut names: Vec<&str> = variants
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["large", "medium", "thumb"], "{}", path.display());
        for variant in variants {
            let edge = match variant["name"].as_str().unwrap() {
                "thumb" => 256,
                "medium" => 1024,
                _ => 2048,
            };
            assert_eq!(
                longest_edge(variant),
                edge.min(width.max(height)),
                "{} {variant}",
                path.display()
            );
            // The aspect ratio survives within a pixel of rounding.
            let expected_short = (width.min(height) as f64 * longest_edge(variant) as f64
                / width.max(height) as f64)
                .round() as u64;
            let short = variant["width"]
                .as_u64()
                .unwrap()
                .min(variant["height"].as_u64().unwrap());
            assert!(expected_short.abs_diff(short) <= 1, "{variant}");

            // The object is really there, a WebP of the announced size and hash.
            let key = variant["key"].as_str().unwrap();
            let bytes = pipeline
                .store
                .get(key)
                .await
                .expect("variant object stored");
            assert_eq!(bytes.len() as u64, variant["bytes"].as_u64().unwrap());
            assert_eq!(hex::encode(Sha256::digest(&bytes)), variant["sha256"]);
            let decoded = image::load_from_memory_with_format(&bytes, image::ImageFormat::WebP)
                .expect("variant is a WebP");
            assert_eq!(
                u64::from(decoded.width()),
                variant["width"].as_u64().unwrap()
            );
            assert_eq!(
                u64::from(decoded.height()),
                variant["height"].as_u64().unwrap()
            );
        }
    }

    // Every image's render was timed stage by stage.
    let metrics = pipeline.processor_metrics().await;
    for stage in [
        "download", "render", "decode", "resize", "encode", "upload", "announce",
    ] {
        let series =
            format!("imgpipe_processor_stage_duration_seconds_count{{stage=\"{stage}\"}} ");
        let count: f64 = metrics
            .lines()
            .find_map(|line| line.strip_prefix(series.as_str()))
            .unwrap_or_else(|| panic!("{series} missing from:\n{metrics}"))
            .trim()
            .parse()
            .unwrap();
        assert!(count >= photos.len() as f64, "{series}{count}");
    }
    // And the projector timed each image from its upload to ready, once.
    let projector = pipeline.projector_metrics().await;
    let series = format!(
        "{}_count",
        imgpipe_projector::metrics::UPLOAD_TO_READY_SECONDS
    );
    assert_eq!(
        imgpipe_e2e::metrics::series_value(&projector, &series),
        Some(photos.len() as f64),
        "{series} in:\n{projector}"
    );
    pipeline.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_body_that_is_not_an_image_is_refused_and_a_broken_image_ends_failed() {
    let pipeline = Pipeline::start().await.expect("pipeline starts");

    // Not an image at all: refused at the door, nothing accepted.
    let (status, body) = pipeline
        .upload(b"this is a text file renamed to photo.jpg\n".to_vec())
        .await
        .unwrap();
    assert_eq!(status, 415, "{body}");
    assert_eq!(body["code"], "unsupported-media-type");

    let (status, body) = pipeline.upload(Vec::new()).await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "empty-body");

    // A real PNG cut in half: its header is fine, so it is accepted, and processing ends
    // with a failure reason instead of a crash.
    let png = std::fs::read(imgpipe_e2e::corpus_dir().join("photos/kde-Elarun-2560.png")).unwrap();
    let (status, accepted) = pipeline
        .upload(png[..png.len() / 2].to_vec())
        .await
        .unwrap();
    assert_eq!(status, 202, "{accepted}");
    let image = pipeline
        .wait_until_settled(accepted["id"].as_str().unwrap(), SETTLE)
        .await
        .unwrap();
    assert_eq!(image["status"], "failed", "{image}");
    assert_eq!(image["failure"]["code"], "undecodable", "{image}");
    assert!(!image["failure"]["reason"].as_str().unwrap().is_empty());
    assert_eq!(image["variants"].as_array().unwrap().len(), 0);

    // Damaged real-world files either yield pixels or fail with a reason; none hangs.
    for path in corpus_files("damaged") {
        let (status, accepted) = pipeline
            .upload(std::fs::read(&path).unwrap())
            .await
            .unwrap();
        if status != 202 {
            assert!(
                (400..500).contains(&status) && accepted["code"].is_string(),
                "{}: {status} {accepted}",
                path.display()
            );
            continue;
        }
        let image = pipeline
            .wait_until_settled(accepted["id"].as_str().unwrap(), SETTLE)
            .await
            .unwrap();
        match image["status"].as_str() {
            Some("ready") => assert!(!image["variants"].as_array().unwrap().is_empty()),
            _ => assert!(image["failure"]["code"].is_string(), "{image}"),
        }
    }
    pipeline.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploads_need_a_valid_key_and_clients_see_only_their_own_images() {
    let pipeline = Pipeline::start().await.expect("pipeline starts");
    let photo = imgpipe_e2e::fixtures::kite();

    let response = pipeline
        .http
        .post(pipeline.url("/v1/images"))
        .body(photo.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "missing-api-key");

    let response = pipeline
        .http
        .post(pipeline.url("/v1/images"))
        .bearer_auth("not-a-key")
        .body(photo.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "invalid-api-key");

    let (status, accepted) = pipeline.upload(photo).await.unwrap();
    assert_eq!(status, 202);
    let id = accepted["id"].as_str().unwrap();
    pipeline.wait_until_settled(id, SETTLE).await.unwrap();

    let response = pipeline
        .http
        .get(pipeline.url(&format!("/v1/images/{id}")))
        .bearer_auth(&pipeline.other_api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        404,
        "another client's image is not visible"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "image-not-found");

    let (status, body) = pipeline.image("not-a-uuid").await.unwrap();
    assert_eq!(status, 400);
    assert_eq!(body["code"], "invalid-image-id");

    // Prometheus metrics count requests by route template (never by image id) and status.
    let metrics = pipeline
        .http
        .get(pipeline.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for expected in [
        r#"imgpipe_ingest_requests_total{route="/v1/images",method="POST",status="202"}"#,
        r#"imgpipe_ingest_requests_total{route="/v1/images",method="POST",status="401"}"#,
        r#"imgpipe_ingest_requests_total{route="/v1/images/{id}",method="GET",status="404"}"#,
        "imgpipe_ingest_upload_bytes_total",
        "imgpipe_ingest_produce_duration_seconds",
    ] {
        assert!(
            metrics.contains(expected),
            "{expected} missing from:\n{metrics}"
        );
    }
    assert!(!metrics.contains(id), "no series per image id");
    pipeline.stop().await.unwrap();
}
