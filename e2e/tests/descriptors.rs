//! Every processed image carries its dominant colour and a BlurHash, from the processor's
//! rendering through the event and the read model to `GET /v1/images/{id}`.
#![allow(clippy::unwrap_used)]

use std::io::Cursor;
use std::time::Duration;

use imgpipe_e2e::{corpus_files, Pipeline};
use serde_json::Value;

const SETTLE: Duration = Duration::from_secs(240);

/// `#rrggbb` in lowercase hex, as the API promises.
fn parse_hex_color(value: &Value) -> [u8; 3] {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("dominant_color is not a string: {value}"));
    let digits = text
        .strip_prefix('#')
        .filter(|d| d.len() == 6 && d.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .unwrap_or_else(|| panic!("dominant_color {text} is not #rrggbb"));
    let channel = |i: usize| u8::from_str_radix(&digits[i..i + 2], 16).unwrap();
    [channel(0), channel(2), channel(4)]
}

/// A valid 4x3-component BlurHash: the crate decodes it, and its length is the one four by
/// three components make.
fn assert_valid_blurhash(value: &Value) -> Vec<u8> {
    let hash = value
        .as_str()
        .unwrap_or_else(|| panic!("blurhash is not a string: {value}"));
    assert_eq!(hash.len(), 1 + 1 + 4 + 2 * (4 * 3 - 1), "{hash}");
    blurhash::decode(hash, 32, 32, 1.0).unwrap_or_else(|e| panic!("blurhash {hash}: {e}"))
}

async fn upload_and_settle(pipeline: &Pipeline, body: Vec<u8>) -> Value {
    let (status, response) = pipeline.upload(body).await.unwrap();
    assert_eq!(status, 202, "{response}");
    let id = response["id"].as_str().unwrap();
    let image = pipeline.wait_until_settled(id, SETTLE).await.unwrap();
    assert_eq!(image["status"], "ready", "{image}");
    image
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn processed_images_report_their_dominant_colour_and_blurhash() {
    let pipeline = Pipeline::start().await.expect("pipeline starts");

    // A real photo: both descriptors are there and well-formed, and the dominant colour is
    // one the picture is really made of.
    let photo = corpus_files("photos")
        .into_iter()
        .find(|path| path.extension().is_some_and(|ext| ext == "jpg"))
        .expect("a JPEG in the corpus");
    let image = upload_and_settle(&pipeline, std::fs::read(&photo).unwrap()).await;
    let dominant = parse_hex_color(&image["dominant_color"]);
    assert_valid_blurhash(&image["blurhash"]);
    let thumb = image["variants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "thumb")
        .unwrap();
    let thumb = pipeline
        .store
        .get(thumb["key"].as_str().unwrap())
        .await
        .unwrap();
    let thumb = image::load_from_memory(&thumb).unwrap().into_rgb8();
    let near = thumb
        .pixels()
        .filter(|pixel| {
            pixel
                .0
                .iter()
                .zip(dominant)
                .all(|(channel, expected)| channel.abs_diff(expected) <= 24)
        })
        .count();
    let share = near as f64 / f64::from(thumb.width() * thumb.height());
    assert!(
        share >= 0.02,
        "{}: only {:.1}% of the thumbnail is near {}",
        photo.display(),
        share * 100.0,
        image["dominant_color"]
    );

    // A solid colour is its own dominant colour, and its placeholder is that colour too.
    let solid = image::RgbImage::from_pixel(300, 200, image::Rgb([200, 30, 30]));
    let mut png = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(solid)
        .write_to(&mut png, image::ImageFormat::Png)
        .unwrap();
    let image = upload_and_settle(&pipeline, png.into_inner()).await;
    assert_eq!(image["dominant_color"], "#c81e1e", "{image}");
    let placeholder = assert_valid_blurhash(&image["blurhash"]);
    for pixel in placeholder.chunks_exact(4) {
        let close = |value: u8, expected: u8| value.abs_diff(expected) <= 16;
        assert!(
            close(pixel[0], 200) && close(pixel[1], 30) && close(pixel[2], 30),
            "{pixel:?} in {}",
            image["blurhash"]
        );
    }

    pipeline.stop().await.unwrap();
}
