//! Correct pixels: every variant is upright whatever the EXIF orientation, in sRGB whatever
//! the embedded ICC profile, carries no metadata, and grey, 16-bit, alpha, palette and
//! animated originals come out as the right WebP. Real corpus photos where the point is real
//! camera files, small generated images for the rest.
#![allow(clippy::unwrap_used)]

use std::io::Cursor;
use std::path::PathBuf;

use bytes::Bytes;

use image::codecs::gif::GifEncoder;
use image::codecs::png::PngEncoder;
use image::{
    DynamicImage, Frame, ImageBuffer, ImageDecoder, ImageEncoder, ImageReader, Luma, LumaA, Rgb,
    RgbImage, Rgba, RgbaImage,
};
use imgpipe_processor::color;
use imgpipe_processor::render::{self, render, Limits, Rendered, VariantSize, VariantSpec};

const LIMITS: Limits = Limits {
    max_pixels: 50_000_000,
    max_side: 20_000,
    max_alloc: 512 * 1024 * 1024,
};

fn spec() -> VariantSpec {
    VariantSpec {
        version: 1,
        sizes: vec![
            VariantSize::new("thumb", 256),
            VariantSize::new("large", 2048),
        ],
    }
}

fn corpus(path: &str) -> Vec<u8> {
    let dir = std::env::var_os("IMGPIPE_CORPUS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus"));
    let path = dir.join(path);
    std::fs::read(&path).unwrap_or_else(|e| panic!("corpus file {}: {e}", path.display()))
}

fn decoded_thumb(rendered: &Rendered) -> DynamicImage {
    let thumb = rendered
        .variants
        .iter()
        .find(|v| v.name == "thumb")
        .unwrap();
    let decoded = image::load_from_memory(&thumb.webp).unwrap();
    assert_eq!(
        (decoded.width(), decoded.height()),
        (thumb.width, thumb.height)
    );
    decoded
}

/// The fourCCs of a WebP's RIFF chunks, checking the container is well formed on the way.
fn riff_chunks(webp: &[u8]) -> Vec<String> {
    assert_eq!(&webp[..4], b"RIFF");
    assert_eq!(&webp[8..12], b"WEBP");
    let riff_size = u32::from_le_bytes(webp[4..8].try_into().unwrap()) as usize;
    assert_eq!(riff_size + 8, webp.len(), "RIFF size");
    let mut chunks = Vec::new();
    let mut at = 12;
    while at < webp.len() {
        let fourcc = &webp[at..at + 4];
        let size = u32::from_le_bytes(webp[at + 4..at + 8].try_into().unwrap()) as usize;
        if fourcc == b"VP8X" {
            // The extended header's flags announce ICC (0x20), EXIF (0x08), XMP (0x04) and
            // animation (0x02); none may be set, alpha (0x10) may.
            let flags = webp[at + 8];
            assert_eq!(flags & 0x2e, 0, "VP8X flags {flags:#04x}");
        }
        chunks.push(String::from_utf8_lossy(fourcc).into_owned());
        // Chunks are padded to an even size.
        at += 8 + size + (size & 1);
    }
    assert_eq!(at, webp.len(), "chunks end where the RIFF ends");
    chunks
}

fn assert_no_metadata(rendered: &Rendered) {
    for variant in &rendered.variants {
        let chunks = riff_chunks(&variant.webp);
        assert!(
            chunks
                .iter()
                .all(|c| matches!(c.as_str(), "VP8 " | "VP8L" | "VP8X" | "ALPH")),
            "{}: chunks {chunks:?}",
            variant.name
        );
    }
}

/// Mean absolute difference per channel of two same-sized RGB images, after both are
/// shrunk to 64 px: the nine orientation files are nine separate JPEG encodes, and the
/// shrink averages their codec noise away while any turn or flip still differs by tens.
fn mean_difference(a: &DynamicImage, b: &DynamicImage) -> [f64; 3] {
    assert_eq!((a.width(), a.height()), (b.width(), b.height()));
    let shrink = |image: &DynamicImage| {
        image
            .resize(64, 64, image::imageops::FilterType::Triangle)
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

#[test]
fn all_nine_exif_orientations_render_the_same_upright_picture() {
    // Orientation 1 is stored upright, so its thumbnail is the reference.
    let reference = render(
        Bytes::copy_from_slice(&corpus("exif/orientation-landscape-1.jpg")),
        &spec(),
        LIMITS,
    )
    .unwrap();
    let reference = decoded_thumb(&reference);
    assert_eq!((reference.width(), reference.height()), (256, 171));

    // The measure sees a wrong orientation: a mirrored picture is far off.
    let mirrored = reference.fliph();
    let off = mean_difference(&reference, &mirrored);
    assert!(off.iter().all(|d| *d > 20.0), "mirrored differs by {off:?}");

    for orientation in 0..=8 {
        let name = format!("exif/orientation-landscape-{orientation}.jpg");
        let rendered = render(Bytes::copy_from_slice(&corpus(&name)), &spec(), LIMITS).unwrap();
        assert_eq!((rendered.width, rendered.height), (1800, 1200), "{name}");
        let large = rendered
            .variants
            .iter()
            .find(|v| v.name == "large")
            .unwrap();
        assert_eq!((large.width, large.height), (1800, 1200), "{name}");
        let difference = mean_difference(&reference, &decoded_thumb(&rendered));
        assert!(
            difference.iter().all(|d| *d < 3.0),
            "{name}: mean difference per channel {difference:?}"
        );
        assert_no_metadata(&rendered);
    }
}

#[test]
fn camera_metadata_and_gps_are_gone_from_every_variant() {
    let original = corpus("exif/camera-DSCN0012.jpg");
    let mut decoder = ImageReader::new(Cursor::new(&original))
        .with_guessed_format()
        .unwrap()
        .into_decoder()
        .unwrap();
    let exif = decoder
        .exif_metadata()
        .unwrap()
        .expect("the sample has EXIF");
    assert!(
        exif.windows(2)
            .any(|w| w == [0x88, 0x25] || w == [0x25, 0x88]),
        "the sample's EXIF has a GPS directory"
    );
    for name in [
        "camera-DSCN0012.jpg",
        "camera-Canon_40D.jpg",
        "camera-Nikon_D70.jpg",
    ] {
        let rendered = render(
            Bytes::copy_from_slice(&corpus(&format!("exif/{name}"))),
            &spec(),
            LIMITS,
        )
        .unwrap();
        assert_no_metadata(&rendered);
        for variant in &rendered.variants {
            let mut decoder =
                image::codecs::webp::WebPDecoder::new(Cursor::new(&variant.webp)).unwrap();
            assert_eq!(decoder.exif_metadata().unwrap(), None, "{name}");
            assert_eq!(decoder.icc_profile().unwrap(), None, "{name}");
        }
    }
}

/// The corpus' ICC samples are real cameras' sRGB profiles: they must be recognised as sRGB,
/// so the common camera JPEG pays no conversion.
#[test]
fn camera_srgb_profiles_take_the_cheap_path() {
    for name in ["camera-Canon_40D.jpg", "camera-Nikon_D70.jpg"] {
        let original = corpus(&format!("exif/{name}"));
        let mut decoder = ImageReader::new(Cursor::new(&original))
            .with_guessed_format()
            .unwrap()
            .into_decoder()
            .unwrap();
        let icc = decoder
            .icc_profile()
            .unwrap()
            .expect("the sample has a profile");
        let pixels = DynamicImage::ImageRgb8(RgbImage::from_pixel(2, 2, Rgb([200, 100, 100])));
        let (pixels, conversion) = color::to_srgb(pixels, Some(&icc));
        assert_eq!(conversion, color::Conversion::AlreadySrgb, "{name}");
        assert_eq!(pixels.into_rgb8().get_pixel(0, 0).0, [200, 100, 100]);
    }
}

fn png_with_profile(image: &DynamicImage, icc: Option<Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = PngEncoder::new(&mut out);
    if let Some(icc) = icc {
        encoder.set_icc_profile(icc).unwrap();
    }
    encoder
        .write_image(
            image.as_bytes(),
            image.width(),
            image.height(),
            image.color().into(),
        )
        .unwrap();
    out
}

fn centre(image: &DynamicImage) -> [u8; 4] {
    image
        .to_rgba8()
        .get_pixel(image.width() / 2, image.height() / 2)
        .0
}

fn assert_close(actual: &[u8], expected: &[u8], tolerance: u8) {
    assert!(
        actual
            .iter()
            .zip(expected)
            .all(|(a, e)| a.abs_diff(*e) <= tolerance),
        "{actual:?} is not within {tolerance} of {expected:?}"
    );
}

#[test]
fn a_wide_gamut_original_is_converted_to_srgb() {
    // The same numbers mean a more saturated red in Display P3 than in sRGB; untagged they
    // are sRGB and stay as they are.
    let pixels = DynamicImage::ImageRgb8(RgbImage::from_pixel(300, 200, Rgb([200, 100, 100])));
    let p3 = moxcms::ColorProfile::new_display_p3().encode().unwrap();
    let tagged = render(
        Bytes::copy_from_slice(&png_with_profile(&pixels, Some(p3))),
        &spec(),
        LIMITS,
    )
    .unwrap();
    let untagged = render(
        Bytes::copy_from_slice(&png_with_profile(&pixels, None)),
        &spec(),
        LIMITS,
    )
    .unwrap();
    // The P3 to sRGB matrix by hand gives (215, 93, 97); lossy WebP adds a level or two.
    assert_close(&centre(&decoded_thumb(&tagged))[..3], &[215, 93, 97], 3);
    assert_close(&centre(&decoded_thumb(&untagged))[..3], &[200, 100, 100], 3);
    assert_no_metadata(&tagged);
}

#[test]
fn sixteen_bit_originals_become_eight_bit_by_value() {
    // 0xC810 is 78% of full scale: 199 in 8 bits (the low byte alone would be 16).
    let pixels = DynamicImage::ImageRgb16(ImageBuffer::from_pixel(
        300,
        200,
        Rgb([0xC810, 0x4000, 0xFFFF]),
    ));
    let rendered = render(
        Bytes::copy_from_slice(&png_with_profile(&pixels, None)),
        &spec(),
        LIMITS,
    )
    .unwrap();
    let thumb = decoded_thumb(&rendered);
    assert_eq!((thumb.width(), thumb.height()), (256, 171));
    assert_close(&centre(&thumb)[..3], &[199, 64, 255], 3);
    assert!(!thumb.color().has_alpha());
}

#[test]
fn grey_originals_become_rgb_and_keep_their_alpha() {
    let grey = DynamicImage::ImageLuma8(ImageBuffer::from_pixel(200, 300, Luma([90])));
    let rendered = render(
        Bytes::copy_from_slice(&png_with_profile(&grey, None)),
        &spec(),
        LIMITS,
    )
    .unwrap();
    let thumb = decoded_thumb(&rendered);
    assert_eq!((thumb.width(), thumb.height()), (171, 256));
    assert_close(&centre(&thumb), &[90, 90, 90, 255], 2);

    // Left half opaque, right half 25% opaque.
    let grey_alpha = DynamicImage::ImageLumaA16(ImageBuffer::from_fn(400, 100, |x, _| {
        LumaA([40_000, if x < 200 { u16::MAX } else { 0x4000 }])
    }));
    let rendered = render(
        Bytes::copy_from_slice(&png_with_profile(&grey_alpha, None)),
        &spec(),
        LIMITS,
    )
    .unwrap();
    let thumb = decoded_thumb(&rendered);
    assert_eq!((thumb.width(), thumb.height()), (256, 64));
    assert!(thumb.color().has_alpha());
    let thumb = thumb.into_rgba8();
    assert_close(&thumb.get_pixel(30, 32).0, &[156, 156, 156, 255], 3);
    assert_close(&thumb.get_pixel(220, 32).0, &[156, 156, 156, 64], 3);
}

#[test]
fn palette_originals_keep_their_transparency() {
    // An indexed PNG: index 0 fully transparent, 1 red, 2 half-transparent blue.
    let (width, height) = (300, 120);
    let indices: Vec<u8> = (0..width * height)
        .map(|i| match (i % width) / 100 {
            0 => 0,
            1 => 1,
            _ => 2,
        })
        .collect();
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, width, height);
    encoder.set_color(png::ColorType::Indexed);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_palette(vec![0, 0, 0, 220, 20, 30, 20, 40, 210]);
    encoder.set_trns(vec![0, 255, 128]);
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(&indices).unwrap();
    writer.finish().unwrap();

    let rendered = render(Bytes::copy_from_slice(&bytes), &spec(), LIMITS).unwrap();
    let thumb = decoded_thumb(&rendered);
    assert_eq!((thumb.width(), thumb.height()), (256, 102));
    assert!(thumb.color().has_alpha());
    let thumb = thumb.into_rgba8();
    assert_eq!(thumb.get_pixel(40, 50).0[3], 0);
    assert_close(&thumb.get_pixel(128, 50).0, &[220, 20, 30, 255], 4);
    assert_close(&thumb.get_pixel(215, 50).0, &[20, 40, 210, 128], 4);
    assert_no_metadata(&rendered);
}

const RED: Rgba<u8> = Rgba([220, 20, 30, 255]);
const BLUE: Rgba<u8> = Rgba([20, 40, 210, 255]);

#[test]
fn an_animated_gif_renders_its_first_frame() {
    let mut gif = Vec::new();
    {
        let mut encoder = GifEncoder::new(&mut gif);
        let frames =
            [RED, BLUE, BLUE].map(|colour| Frame::new(RgbaImage::from_pixel(120, 80, colour)));
        encoder.encode_frames(frames).unwrap();
    }
    let rendered = render(Bytes::copy_from_slice(&gif), &spec(), LIMITS).unwrap();
    assert_eq!((rendered.width, rendered.height), (120, 80));
    assert_close(&centre(&decoded_thumb(&rendered)), &RED.0, 6);
    assert_no_metadata(&rendered);
    assert!(rendered.animated, "three frames are an animation");
}

#[test]
fn a_gif_of_one_frame_is_not_animated() {
    let mut gif = Vec::new();
    {
        let mut encoder = GifEncoder::new(&mut gif);
        encoder
            .encode_frames([Frame::new(RgbaImage::from_pixel(120, 80, RED))])
            .unwrap();
    }
    let rendered = render(Bytes::copy_from_slice(&gif), &spec(), LIMITS).unwrap();
    assert_close(&centre(&decoded_thumb(&rendered)), &RED.0, 6);
    assert!(!rendered.animated);
}

#[test]
fn an_animated_webp_renders_its_first_frame() {
    let (width, height) = (120, 80);
    let red = RgbaImage::from_pixel(width, height, RED);
    let blue = RgbaImage::from_pixel(width, height, BLUE);
    let mut config = webp::WebPConfig::new().unwrap();
    config.lossless = 1;
    let mut encoder = webp::AnimEncoder::new(width, height, &config);
    encoder.add_frame(webp::AnimFrame::from_rgba(&red, width, height, 0));
    encoder.add_frame(webp::AnimFrame::from_rgba(&blue, width, height, 500));
    let animation = encoder.try_encode().unwrap().to_vec();
    assert!(riff_chunks_raw(&animation).contains(&"ANMF".to_string()));

    let rendered = render(Bytes::copy_from_slice(&animation), &spec(), LIMITS).unwrap();
    assert_eq!((rendered.width, rendered.height), (width, height));
    assert_close(&centre(&decoded_thumb(&rendered)), &RED.0, 6);
    assert_no_metadata(&rendered);
    assert!(rendered.animated, "two frames are an animation");

    // A still WebP (one of the variants just made) is not.
    let still = &rendered.variants[0].webp;
    assert!(
        !render(Bytes::copy_from_slice(still), &spec(), LIMITS)
            .unwrap()
            .animated
    );
}

/// The chunk names without [`riff_chunks`]' checks, for inputs that may be animated.
fn riff_chunks_raw(webp: &[u8]) -> Vec<String> {
    let mut chunks = Vec::new();
    let mut at = 12;
    while at + 8 <= webp.len() {
        let size = u32::from_le_bytes(webp[at + 4..at + 8].try_into().unwrap()) as usize;
        chunks.push(String::from_utf8_lossy(&webp[at..at + 4]).into_owned());
        at += 8 + size + (size & 1);
    }
    chunks
}

#[test]
fn an_icc_profile_inflating_past_its_limit_fails_before_decoding() {
    let small = DynamicImage::new_rgb8(32, 32);
    // 64 MiB of profile in a few KiB of PNG.
    let bomb = png_with_profile(&small, Some(vec![0; 64 * 1024 * 1024]));
    assert!(bomb.len() < 1024 * 1024, "{}", bomb.len());
    let error = render(Bytes::copy_from_slice(&bomb), &spec(), LIMITS).unwrap_err();
    assert_eq!(
        error.reason_code(),
        imgpipe_schemas::ReasonCode::ImageTooLarge,
        "{error}"
    );
    assert!(
        render::probe(&bomb, &spec(), LIMITS).is_err(),
        "nor is it probed"
    );
}

#[test]
fn the_probe_weighs_the_decoded_pixel_type() {
    let (width, height) = (300u64, 200u64);
    let rgba16 = png_with_profile(&DynamicImage::new_rgba16(300, 200), None);
    let rgb8 = png_with_profile(&DynamicImage::new_rgb8(300, 200), None);
    let heavy = render::probe(&rgba16, &spec(), LIMITS).unwrap();
    let light = render::probe(&rgb8, &spec(), LIMITS).unwrap();
    assert_eq!((heavy.width, heavy.height), (300, 200));
    // 8 bytes a pixel decoded next to their 4-byte 8-bit copy.
    assert!(heavy.peak_bytes >= width * height * 12, "{heavy:?}");
    assert!(light.peak_bytes < heavy.peak_bytes, "{light:?} {heavy:?}");
}
