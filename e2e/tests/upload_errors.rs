//! Every way an upload can be refused at the door, each with a real body and its stable code,
//! and none of them leaves an object in storage or an image behind.
#![allow(clippy::unwrap_used)]

use imgpipe_e2e::Pipeline;
use serde_json::Value;

const LIMIT: u64 = 3_000_000;

fn corpus(path: &str) -> Vec<u8> {
    std::fs::read(imgpipe_e2e::corpus_dir().join(path)).unwrap()
}

/// A PNG that is only a signature and an IHDR chunk claiming `width` x `height`.
fn png_header(width: u32, height: u32) -> Vec<u8> {
    let mut png = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(b"IHDR");
    png.extend_from_slice(&width.to_be_bytes());
    png.extend_from_slice(&height.to_be_bytes());
    png.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
    png
}

async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_refused_upload_gets_its_code_and_leaves_nothing_behind() {
    let pipeline = Pipeline::start_with(|settings| settings.max_upload_bytes = LIMIT)
        .await
        .expect("pipeline starts");
    let post = || {
        pipeline
            .http
            .post(pipeline.url("/v1/images"))
            .bearer_auth(&pipeline.api_key)
    };
    let big = corpus("photos/kde-SafeLanding-5120.jpg");
    assert!(big.len() as u64 > LIMIT);
    let camera = corpus("exif/camera-DSCN0012.jpg");

    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        ("zero bytes", post().body(Vec::new()), 400, "empty-body"),
        (
            "text renamed .jpg",
            post()
                .header("content-type", "image/jpeg")
                .body(b"Dear diary, today I renamed a text file to photo.jpg.\n".to_vec()),
            415,
            "unsupported-media-type",
        ),
        (
            // A real camera JPEG cut inside its EXIF segment, before the frame header.
            "truncated JPEG header",
            post().body(camera[..11_000].to_vec()),
            422,
            "unreadable-image",
        ),
        (
            "PNG header claiming 60 MP",
            post().body(png_header(10_000, 6_000)),
            422,
            "image-too-large",
        ),
        (
            "PNG header with a side over the limit",
            post().body(png_header(30_000, 10)),
            422,
            "image-too-large",
        ),
        (
            "over the limit with Content-Length",
            post().body(big.clone()),
            413,
            "payload-too-large",
        ),
        (
            "over the limit without Content-Length",
            post().body(reqwest::Body::wrap_stream(futures::stream::iter(
                big.chunks(256 * 1024)
                    .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
                    .collect::<Vec<_>>(),
            ))),
            413,
            "payload-too-large",
        ),
        (
            "no API key",
            pipeline
                .http
                .post(pipeline.url("/v1/images"))
                .body(camera.clone()),
            401,
            "missing-api-key",
        ),
        (
            "wrong API key",
            pipeline
                .http
                .post(pipeline.url("/v1/images"))
                .bearer_auth("not-a-key")
                .body(camera.clone()),
            401,
            "invalid-api-key",
        ),
    ];
    for (what, request, status, code) in cases {
        let (got, body) = send(request).await;
        assert_eq!(
            (got, body["code"].as_str()),
            (status, Some(code)),
            "{what}: {body}"
        );
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {body}"
        );
    }

    let originals = pipeline
        .store
        .list(&format!("{}/originals/", pipeline.namespace))
        .await
        .unwrap();
    assert!(originals.is_empty(), "refused uploads left {originals:?}");
    let (status, listing) = pipeline.get("/v1/images").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(listing["images"].as_array().unwrap().len(), 0, "{listing}");
    pipeline.stop().await.unwrap();
}
