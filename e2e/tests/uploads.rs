//! Uploads stream to object storage as they arrive: a raw body of unknown length, one larger
//! than a multipart part, and multipart/form-data forms with metadata all end up stored byte
//! for byte under the image, and refused forms leave nothing behind.
#![allow(clippy::unwrap_used)]

use std::io::Cursor;
use std::time::Duration;

use imgpipe_e2e::Pipeline;
use reqwest::multipart::{Form, Part};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const SETTLE: Duration = Duration::from_secs(180);

fn photo(name: &str) -> Vec<u8> {
    std::fs::read(imgpipe_e2e::corpus_dir().join("photos").join(name)).unwrap()
}

/// A body sent in small chunks with no Content-Length, as a client streaming from disk does.
fn chunked(bytes: &[u8], chunk: usize) -> reqwest::Body {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        bytes.chunks(chunk).map(|c| Ok(c.to_vec())).collect();
    reqwest::Body::wrap_stream(futures::stream::iter(chunks))
}

/// An uncompressed RGB TIFF of noise: larger than one multipart part (8 MiB), and a real
/// image the processor can decode.
fn large_tiff() -> Vec<u8> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let image = image::RgbImage::from_fn(2200, 1700, |_, _| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let [r, g, b, ..] = state.to_le_bytes();
        image::Rgb([r, g, b])
    });
    let mut tiff = Cursor::new(Vec::new());
    image.write_to(&mut tiff, image::ImageFormat::Tiff).unwrap();
    tiff.into_inner()
}

async fn post(pipeline: &Pipeline, request: reqwest::RequestBuilder) -> (u16, Value) {
    let _ = pipeline;
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn stored_originals(pipeline: &Pipeline) -> Vec<String> {
    pipeline
        .store
        .list(&format!("{}/originals/", pipeline.namespace))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_body_of_unknown_length_larger_than_a_part_is_stored_byte_for_byte() {
    let pipeline = Pipeline::start().await.expect("pipeline starts");
    let tiff = large_tiff();
    assert!(tiff.len() > imgpipe_infra::storage::MULTIPART_PART_BYTES);

    let (status, accepted) = post(
        &pipeline,
        pipeline
            .http
            .post(pipeline.url("/v1/images"))
            .bearer_auth(&pipeline.api_key)
            .body(chunked(&tiff, 64 * 1024)),
    )
    .await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["format"], "tiff");
    assert_eq!(
        (accepted["width"].as_u64(), accepted["height"].as_u64()),
        (Some(2200), Some(1700))
    );
    assert_eq!(accepted["bytes"].as_u64(), Some(tiff.len() as u64));
    assert_eq!(accepted["sha256"], hex::encode(Sha256::digest(&tiff)));

    let id = accepted["id"].as_str().unwrap();
    let stored = pipeline
        .store
        .get(&pipeline.store.original_key(id.parse().unwrap()))
        .await
        .unwrap();
    assert!(
        stored.as_ref() == tiff.as_slice(),
        "the stored original differs from the upload"
    );

    let image = pipeline.wait_until_settled(id, SETTLE).await.unwrap();
    assert_eq!(image["status"], "ready", "{image}");
    assert_eq!(
        image["metadata"],
        json!({}),
        "a raw body has no metadata: {image}"
    );
    pipeline.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_multipart_form_upload_carries_its_metadata_and_bad_forms_are_refused() {
    let pipeline = Pipeline::start().await.expect("pipeline starts");
    let kite = photo("kde-Kite-2560.jpg");
    let upload = |form: Form| {
        pipeline
            .http
            .post(pipeline.url("/v1/images"))
            .bearer_auth(&pipeline.api_key)
            .multipart(form)
    };
    let file = || {
        // The client's declared type is ignored: the format comes from the bytes.
        Part::bytes(kite.clone())
            .file_name("kite.txt")
            .mime_str("text/plain")
            .unwrap()
    };

    let (status, accepted) = post(
        &pipeline,
        upload(
            Form::new()
                .text("metadata", r#"{"album": "kites", "source": "e2e"}"#)
                .part("file", file()),
        ),
    )
    .await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["format"], "jpeg");
    assert_eq!(accepted["bytes"].as_u64(), Some(kite.len() as u64));
    assert_eq!(accepted["sha256"], hex::encode(Sha256::digest(&kite)));
    assert_eq!(
        accepted["metadata"],
        json!({"album": "kites", "source": "e2e"})
    );
    let id = accepted["id"].as_str().unwrap().to_string();
    let stored = pipeline
        .store
        .get(&pipeline.store.original_key(id.parse().unwrap()))
        .await
        .unwrap();
    assert!(stored.as_ref() == kite.as_slice());

    // The file may come first, and metadata is optional.
    let (status, body) = post(
        &pipeline,
        upload(Form::new().part("file", file()).text("metadata", "{}")),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = post(&pipeline, upload(Form::new().part("file", file()))).await;
    assert_eq!(status, 202, "{body}");
    assert!(body.get("metadata").is_none(), "{body}");

    // Refused forms, each with its own code; none leaves an original behind.
    let refusals = [
        (
            Form::new().text("metadata", r#"{"a": "b"}"#),
            "missing-file",
        ),
        (
            Form::new().part("file", file()).text("caption", "hello"),
            "invalid-multipart",
        ),
        (
            Form::new().part("file", file()).part("file", file()),
            "invalid-multipart",
        ),
        (
            Form::new()
                .part("file", file())
                .text("metadata", r#"{"n": 1}"#),
            "invalid-metadata",
        ),
        (
            Form::new()
                .text("metadata", r#"{"bad key!": "x"}"#)
                .part("file", file()),
            "invalid-metadata",
        ),
        (
            Form::new().part("file", Part::bytes(b"plain text, not an image".to_vec())),
            "unsupported-media-type",
        ),
    ];
    for (form, code) in refusals {
        let (status, body) = post(&pipeline, upload(form)).await;
        assert!((400..500).contains(&status), "{code}: {status} {body}");
        assert_eq!(body["code"], code, "{body}");
    }
    assert_eq!(
        stored_originals(&pipeline).await.len(),
        3,
        "only the three accepted uploads have an original"
    );

    // The metadata travelled in the ImageUploaded event to the read model.
    let image = pipeline.wait_until_settled(&id, SETTLE).await.unwrap();
    assert_eq!(image["status"], "ready", "{image}");
    assert_eq!(
        image["metadata"],
        json!({"album": "kites", "source": "e2e"}),
        "{image}"
    );
    pipeline.stop().await.unwrap();
}
