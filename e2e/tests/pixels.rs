//! Correct pixels through the whole pipeline: the nine EXIF orientations of one photo come out
//! as the same upright variants, a camera photo's EXIF and GPS position are in none of its
//! variants, and an animated GIF gives its first frame and says so (`animated`).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use image::codecs::gif::GifEncoder;
use image::{DynamicImage, Frame, Rgba, RgbaImage};
use imgpipe_e2e::{corpus_dir, Pipeline};
use serde_json::Value;

const SETTLE: Duration = Duration::from_secs(240);

async fn upload(pipeline: &Pipeline, corpus_path: &str) -> String {
    let body = std::fs::read(corpus_dir().join(corpus_path)).unwrap();
    let (status, response) = pipeline.upload(body).await.unwrap();
    assert_eq!(status, 202, "{corpus_path}: {response}");
    response["id"].as_str().unwrap().to_string()
}

async fn settle_ready(pipeline: &Pipeline, id: &str) -> Value {
    let image = pipeline.wait_until_settled(id, SETTLE).await.unwrap();
    assert_eq!(image["status"], "ready", "{image}");
    image
}

/// Every stored variant of a ready image: its name and bytes.
async fn variants(pipeline: &Pipeline, image: &Value) -> Vec<(String, Vec<u8>)> {
    let mut variants = Vec::new();
    for variant in image["variants"].as_array().unwrap() {
        let bytes = pipeline
            .store
            .get(variant["key"].as_str().unwrap())
            .await
            .unwrap();
        variants.push((
            variant["name"].as_str().unwrap().to_string(),
            bytes.to_vec(),
        ));
    }
    variants
}

/// The fourCCs of a WebP's RIFF chunks (and the VP8X flags byte, if there is one).
fn riff_chunks(webp: &[u8]) -> (Vec<String>, Option<u8>) {
    assert_eq!(&webp[..4], b"RIFF");
    assert_eq!(&webp[8..12], b"WEBP");
    let (mut chunks, mut flags) = (Vec::new(), None);
    let mut at = 12;
    while at + 8 <= webp.len() {
        let fourcc = &webp[at..at + 4];
        let size = u32::from_le_bytes(webp[at + 4..at + 8].try_into().unwrap()) as usize;
        if fourcc == b"VP8X" {
            flags = Some(webp[at + 8]);
        }
        chunks.push(String::from_utf8_lossy(fourcc).into_owned());
        at += 8 + size + (size & 1);
    }
    assert_eq!(at, webp.len(), "chunks end where the file ends");
    (chunks, flags)
}

/// Mean absolute difference per channel after shrinking both to 64 px, which averages away
/// the noise of nine separate JPEG encodes and the WebP encode; a turn or a flip differs by
/// tens.
fn mean_difference(a: &DynamicImage, b: &DynamicImage) -> [f64; 3] {
    let shrink = |image: &DynamicImage| {
        image
            .resize_exact(64, 43, image::imageops::FilterType::Triangle)
            .into_rgb8()
    };
    let (a, b) = (shrink(a), shrink(b));
    let mut sums = [0.0; 3];
    for (a, b) in a.pixels().zip(b.pixels()) {
        for (sum, (x, y)) in sums.iter_mut().zip(a.0.iter().zip(b.0)) {
            *sum += f64::from(x.abs_diff(y));
        }
    }
    sums.map(|sum| sum / f64::from(a.width() * a.height()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_exif_orientation_gives_the_same_upright_variants() {
    let pipeline = Pipeline::start().await.expect("pipeline starts");

    let mut ids = Vec::new();
    for orientation in 0..=8 {
        let name = format!("exif/orientation-landscape-{orientation}.jpg");
        ids.push((name.clone(), upload(&pipeline, &name).await));
    }
    let mut thumbs = Vec::new();
    for (name, id) in &ids {
        let image = settle_ready(&pipeline, id).await;
        // The dimensions are the upright ones, also for the files stored 1200x1800.
        assert_eq!(
            (&image["width"], &image["height"]),
            (&1800.into(), &1200.into()),
            "{name}: {image}"
        );
        let (_, thumb) = variants(&pipeline, &image)
            .await
            .into_iter()
            .find(|(variant, _)| variant == "thumb")
            .unwrap();
        thumbs.push((name, image::load_from_memory(&thumb).unwrap()));
    }

    // Orientation 1 is stored upright: every other must look like it.
    let reference = &thumbs[1].1;
    assert_eq!((reference.width(), reference.height()), (256, 171));
    let mirrored = mean_difference(reference, &reference.fliph());
    assert!(
        mirrored.iter().all(|d| *d > 20.0),
        "the measure sees a flip: {mirrored:?}"
    );
    for (name, thumb) in &thumbs {
        assert_eq!(
            (thumb.width(), thumb.height()),
            (reference.width(), reference.height()),
            "{name}"
        );
        let difference = mean_difference(reference, thumb);
        assert!(
            difference.iter().all(|d| *d < 3.0),
            "{name}: mean difference per channel {difference:?}"
        );
    }

    pipeline.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_variant_keeps_exif_xmp_or_the_gps_position() {
    let pipeline = Pipeline::start().await.expect("pipeline starts");
    let original = std::fs::read(corpus_dir().join("exif/camera-DSCN0012.jpg")).unwrap();
    assert!(
        original.windows(4).any(|w| w == b"Exif"),
        "the sample carries EXIF"
    );

    let id = upload(&pipeline, "exif/camera-DSCN0012.jpg").await;
    let image = settle_ready(&pipeline, &id).await;
    let variants = variants(&pipeline, &image).await;
    assert_eq!(variants.len(), 3, "{image}");
    for (name, webp) in &variants {
        let (chunks, flags) = riff_chunks(webp);
        assert!(
            chunks
                .iter()
                .all(|c| matches!(c.as_str(), "VP8 " | "VP8L" | "VP8X" | "ALPH")),
            "{name}: chunks {chunks:?}"
        );
        // VP8X flags: ICC 0x20, EXIF 0x08, XMP 0x04.
        assert_eq!(flags.unwrap_or(0) & 0x2c, 0, "{name}: VP8X flags {flags:?}");
        // libwebp is deterministic, so these byte checks cannot flicker on a chance match in
        // compressed data.
        for marker in [&b"GPS"[..], b"Exif", b"http://ns.adobe.com"] {
            assert!(
                !webp.windows(marker.len()).any(|w| w == marker),
                "{name} contains {:?}",
                String::from_utf8_lossy(marker)
            );
        }
    }

    pipeline.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_animated_gif_gives_its_first_frame_and_says_it_is_animated() {
    let pipeline = Pipeline::start().await.expect("pipeline starts");
    let (red, blue) = (Rgba([220, 20, 30, 255]), Rgba([20, 40, 210, 255]));
    let mut gif = Vec::new();
    {
        let mut encoder = GifEncoder::new(&mut gif);
        let frames = [red, blue, blue].map(|c| Frame::new(RgbaImage::from_pixel(300, 200, c)));
        encoder.encode_frames(frames).unwrap();
    }
    let (status, response) = pipeline.upload(gif).await.unwrap();
    assert_eq!(status, 202, "{response}");
    let animated = response["id"].as_str().unwrap().to_string();
    // Stills of both formats that can animate, and a JPEG.
    let mut still_gif = Vec::new();
    GifEncoder::new(&mut still_gif)
        .encode_frames([Frame::new(RgbaImage::from_pixel(300, 200, red))])
        .unwrap();
    let (status, response) = pipeline.upload(still_gif).await.unwrap();
    assert_eq!(status, 202, "{response}");
    let mut stills = vec![response["id"].as_str().unwrap().to_string()];
    for path in ["photos/gnome-licorice-l.webp", "photos/kde-Kite-2560.jpg"] {
        stills.push(upload(&pipeline, path).await);
    }

    let image = settle_ready(&pipeline, &animated).await;
    assert_eq!(image["animated"], true, "{image}");
    assert_eq!(
        (&image["width"], &image["height"]),
        (&300.into(), &200.into())
    );
    let (_, thumb) = variants(&pipeline, &image)
        .await
        .into_iter()
        .find(|(name, _)| name == "thumb")
        .unwrap();
    let thumb = image::load_from_memory(&thumb).unwrap().into_rgba8();
    let centre = thumb.get_pixel(thumb.width() / 2, thumb.height() / 2).0;
    assert!(
        centre.iter().zip(red.0).all(|(a, b)| a.abs_diff(b) <= 8),
        "the first frame is red: {centre:?}"
    );
    for id in &stills {
        let image = settle_ready(&pipeline, id).await;
        assert_eq!(image["animated"], false, "{image}");
    }

    pipeline.stop().await.unwrap();
}
