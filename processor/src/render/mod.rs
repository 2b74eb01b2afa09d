//! Pure image work: decode once, convert an embedded ICC profile's colours to sRGB, resize in a
//! cascade, apply the EXIF orientation on the way, encode lossy WebP with each variant's own
//! settings (no metadata: no EXIF, GPS, XMP or profile survives), and describe the colours
//! from a small downscale. No IO; the caller runs it on a blocking thread.
//!
//! Memory: the original's bytes are freed once decoded; the full-size pixels are the only
//! full-size buffer (alpha is premultiplied in place, the orientation is applied to the first
//! variant rather than to them), and they are freed as soon as the first variant is resized
//! out of them, before any encoding.

mod decode;
mod encode;

use std::io::Cursor;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, MulDiv, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::metadata::Orientation;
use image::ImageDecoder;
use imgpipe_infra::BoxError;
use imgpipe_schemas::ReasonCode;

pub use decode::decode_upright_srgb;

use crate::descriptors;
use crate::memory::{self, DecodeShape};

/// Longest edge of the downscale the descriptors are computed from: at most 4,096 pixels, plenty
/// for a coarse colour histogram and a 4x3 BlurHash, and cheap next to any variant.
const DESCRIPTOR_EDGE: u32 = 64;

/// What to render: every size at most `max_edge` on its longest edge, never upscaled.
#[derive(Debug, Clone, PartialEq)]
pub struct VariantSpec {
    pub version: i32,
    pub sizes: Vec<VariantSize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VariantSize {
    pub name: String,
    pub max_edge: u32,
    pub webp: WebpSettings,
}

impl VariantSize {
    /// A size encoded with the default [`WebpSettings`].
    pub fn new(name: impl Into<String>, max_edge: u32) -> Self {
        Self {
            name: name.into(),
            max_edge,
            webp: WebpSettings::default(),
        }
    }
}

/// How a variant is encoded: part of the variant spec, so a change of them is a new spec
/// version like a change of sizes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WebpSettings {
    /// 0-100: libwebp's quality factor.
    pub quality: f32,
    /// 0-6: libwebp's effort; higher is slower and smaller at the same quality.
    pub method: u8,
}

impl Default for WebpSettings {
    /// What a variant gets when neither its spec entry nor `IMGPIPE_PROCESSOR_WEBP_QUALITY` /
    /// `IMGPIPE_PROCESSOR_WEBP_METHOD` say otherwise.
    fn default() -> Self {
        Self {
            quality: 80.0,
            method: 4,
        }
    }
}

/// Checked against the header before any pixel is decoded.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_pixels: u64,
    pub max_side: u32,
    /// The most the decoder may allocate for one image (its pixels, profile and metadata);
    /// the processor's memory budget.
    pub max_alloc: u64,
}

/// Why an image cannot be rendered. Each is permanent: the same bytes fail the same way. The
/// render's outcome, not a failure of the processor (so not a [`crate::ProcessorError`]
/// variant): the handler publishes it as `ImageFailed` with its [`ReasonCode`].
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("not an image format imgpipe decodes")]
    UnsupportedFormat,
    #[error("{width}x{height} is over the limit")]
    TooLarge { width: u32, height: u32 },
    /// Decoding would need more memory than the processor allows one image, or an ICC profile
    /// inflates past [`memory::MAX_ICC_PROFILE_BYTES`].
    #[error("over the memory limit: {0}")]
    OverMemoryLimit(#[source] BoxError),
    #[error("cannot decode the image: {0}")]
    Undecodable(#[source] BoxError),
    /// A codec panicked on these bytes (it would on every attempt).
    #[error("cannot decode the image: decoder crashed: {0}")]
    DecoderCrashed(#[source] tokio::task::JoinError),
    #[error("cannot encode the variant: {0}")]
    Encode(#[source] BoxError),
    #[error("cannot encode the variant: blurhash: {0}")]
    Blurhash(#[source] blurhash::Error),
}

impl RenderError {
    /// The stable reason code that goes into `ImageFailed`.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            RenderError::UnsupportedFormat => ReasonCode::UnsupportedFormat,
            RenderError::TooLarge { .. } | RenderError::OverMemoryLimit(_) => {
                ReasonCode::ImageTooLarge
            }
            RenderError::Undecodable(_) | RenderError::DecoderCrashed(_) => ReasonCode::Undecodable,
            RenderError::Encode(_) | RenderError::Blurhash(_) => ReasonCode::EncodeFailed,
        }
    }
}

#[derive(Debug)]
pub struct Rendered {
    /// After orientation.
    pub width: u32,
    pub height: u32,
    pub variants: Vec<RenderedVariant>,
    /// `#rrggbb`; `None` when every pixel is fully transparent.
    pub dominant_color: Option<String>,
    pub blurhash: String,
    /// The original has more than one frame; the variants show the first.
    pub animated: bool,
    /// Where the time went, for the processor's stage metrics.
    pub timings: StageTimings,
}

/// Time spent in each step of [`render`].
#[derive(Debug, Default, Clone, Copy)]
pub struct StageTimings {
    /// Header checks, decoding, colour conversion, orientation, to 8-bit pixels.
    pub decode: Duration,
    /// Every resize of the cascade, and the descriptors' downscale and hashing.
    pub resize: Duration,
    /// WebP encoding of every variant.
    pub encode: Duration,
}

#[derive(Debug)]
pub struct RenderedVariant {
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub webp: Vec<u8>,
}

/// Renders every variant of `spec` from the original's bytes, which it frees once decoded.
pub fn render(bytes: Bytes, spec: &VariantSpec, limits: Limits) -> Result<Rendered, RenderError> {
    let mut timings = StageTimings::default();
    let animated = is_animated(&bytes);
    let started = Instant::now();
    let decoded = decode::decode(&bytes, limits)?;
    drop(bytes);
    let (width, height) = decoded.upright_size();
    timings.decode = started.elapsed();

    // Largest first, each resized from the previous one: a cascade does most of the work on
    // already-small images, and no variant is ever upscaled.
    let mut order: Vec<&VariantSize> = spec.sizes.iter().collect();
    order.sort_by_key(|size| std::cmp::Reverse(size.max_edge));
    let mut cascade = Cascade::new(decoded);
    let mut variants = Vec::with_capacity(order.len());
    for size in order {
        let (w, h) = fit(width, height, size.max_edge);
        let started = Instant::now();
        let pixels = cascade.upright_at(w, h)?;
        timings.resize += started.elapsed();
        let started = Instant::now();
        let webp = encode::webp(pixels, size.webp)?;
        timings.encode += started.elapsed();
        variants.push(RenderedVariant {
            name: size.name.clone(),
            width: w,
            height: h,
            webp,
        });
    }
    // Report in the spec's order, not the cascade's.
    variants.sort_by_key(|v| spec.sizes.iter().position(|s| s.name == v.name));
    // The cascade ends on the smallest variant, so the descriptors' downscale starts there.
    let started = Instant::now();
    let descriptors = cascade.describe()?;
    timings.resize += started.elapsed();
    Ok(Rendered {
        width,
        height,
        variants,
        dominant_color: descriptors.dominant_color,
        blurhash: descriptors.blurhash,
        animated,
        timings,
    })
}

/// The pixels of the last step, each step resized from the one before. The original's are
/// stored as the file has them; the first resize works in that frame (turning a full-size
/// image copies it) and the orientation is applied to its result.
struct Cascade {
    pixels: Image<'static>,
    orientation: Orientation,
    resizer: Resizer,
}

impl Cascade {
    fn new(decoded: decode::Decoded) -> Self {
        Self {
            pixels: decoded.pixels,
            orientation: decoded.orientation,
            resizer: Resizer::new(),
        }
    }

    /// The image upright at `width` x `height` (no larger than the last step).
    fn upright_at(&mut self, width: u32, height: u32) -> Result<&Image<'static>, RenderError> {
        let stored = if decode::swaps_axes(self.orientation) {
            (height, width)
        } else {
            (width, height)
        };
        if stored != (self.pixels.width(), self.pixels.height()) {
            let source = std::mem::replace(&mut self.pixels, Image::new(1, 1, PixelType::U8x3));
            self.pixels = resize(&mut self.resizer, source, stored)?;
        }
        if self.orientation != Orientation::NoTransforms {
            let pixels = std::mem::replace(&mut self.pixels, Image::new(1, 1, PixelType::U8x3));
            let mut image = decode::to_dynamic(pixels)?;
            image.apply_orientation(self.orientation);
            self.orientation = Orientation::NoTransforms;
            self.pixels = eight_bit_pixels(image)?;
        }
        Ok(&self.pixels)
    }

    fn describe(mut self) -> Result<Descriptors, RenderError> {
        describe(&self.pixels, &mut self.resizer)
    }
}

/// Lanczos3 from `source`, which it consumes: with alpha, the colours are premultiplied in
/// the source's own buffer (the resizer would otherwise premultiply into a full-size copy)
/// and divided back in the result, the same arithmetic the resizer does.
fn resize(
    resizer: &mut Resizer,
    mut source: Image<'static>,
    (width, height): (u32, u32),
) -> Result<Image<'static>, RenderError> {
    let resize_error = |e: BoxError| RenderError::Encode(e);
    let alpha = source.pixel_type() == PixelType::U8x4;
    let mul_div = MulDiv::default();
    if alpha {
        mul_div
            .multiply_alpha_inplace(&mut source)
            .map_err(|e| resize_error(e.into()))?;
    }
    let mut target = Image::new(width, height, source.pixel_type());
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3))
        .use_alpha(false);
    resizer
        .resize(&source, &mut target, &options)
        .map_err(|e| resize_error(e.into()))?;
    drop(source);
    if alpha {
        mul_div
            .divide_alpha_inplace(&mut target)
            .map_err(|e| resize_error(e.into()))?;
    }
    Ok(target)
}

/// An upright variant back as the resizer's pixels (RGB8 or RGBA8, no copy).
fn eight_bit_pixels(image: image::DynamicImage) -> Result<Image<'static>, RenderError> {
    let (width, height) = (image.width(), image.height());
    let (buffer, pixel_type) = match image {
        image::DynamicImage::ImageRgba8(rgba) => (rgba.into_raw(), PixelType::U8x4),
        other => (other.into_rgb8().into_raw(), PixelType::U8x3),
    };
    Image::from_vec_u8(width, height, buffer, pixel_type).map_err(|e| RenderError::Encode(e.into()))
}

/// Whether a GIF or WebP has more than one frame, read from its block and chunk headers without
/// decoding a pixel (a GIF's second frame is found by skipping the first one's compressed data).
/// Other formats, and files too broken to tell, are stills: the decode already succeeded on
/// the first frame, which is what the variants show either way.
pub fn is_animated(bytes: &[u8]) -> bool {
    match image::guess_format(bytes) {
        Ok(image::ImageFormat::Gif) => {
            let mut options = gif::DecodeOptions::new();
            options.skip_frame_decoding(true);
            let Ok(mut decoder) = options.read_info(Cursor::new(bytes)) else {
                return false;
            };
            let mut frames = 0;
            while frames < 2 {
                match decoder.next_frame_info() {
                    Ok(Some(_)) => frames += 1,
                    _ => break,
                }
            }
            frames > 1
        }
        Ok(image::ImageFormat::WebP) => image_webp::WebPDecoder::new(Cursor::new(bytes))
            .is_ok_and(|decoder| decoder.num_frames() > 1),
        _ => false,
    }
}

struct Descriptors {
    dominant_color: Option<String>,
    blurhash: String,
}

/// Computes the colour descriptors from a `DESCRIPTOR_EDGE` downscale of `image`.
fn describe(image: &Image<'_>, resizer: &mut Resizer) -> Result<Descriptors, RenderError> {
    let (w, h) = fit(image.width(), image.height(), DESCRIPTOR_EDGE);
    let mut small = Image::new(w, h, image.pixel_type());
    // An area average: every source pixel counts in proportion and, unlike Lanczos, no ringing
    // invents colours at edges that the histogram would then count.
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Box));
    resizer
        .resize(image, &mut small, &options)
        .map_err(|e| RenderError::Encode(e.into()))?;
    let rgba = match image.pixel_type() {
        PixelType::U8x4 => small.into_vec(),
        _ => small
            .buffer()
            .chunks_exact(3)
            .flat_map(|rgb| [rgb[0], rgb[1], rgb[2], u8::MAX])
            .collect(),
    };
    let blurhash = descriptors::blurhash(w, h, &rgba).map_err(RenderError::Blurhash)?;
    Ok(Descriptors {
        dominant_color: descriptors::dominant_color(&rgba).map(descriptors::hex_color),
        blurhash,
    })
}

/// What the header says about rendering an image, read without decoding a pixel.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    pub width: u32,
    pub height: u32,
    /// The most memory rendering it holds at once ([`memory::estimate_peak_bytes`]).
    pub peak_bytes: u64,
}

/// Reads the header (limits checked) and estimates what rendering the image for `spec` costs
/// in memory, so the render can wait for that much of the budget before it starts.
pub fn probe(bytes: &[u8], spec: &VariantSpec, limits: Limits) -> Result<Probe, RenderError> {
    let mut decoder = decode::open_decoder(bytes, limits)?;
    let (width, height) = decoder.dimensions();
    let has_icc_profile = decoder.icc_profile().ok().flatten().is_some();
    let shape = DecodeShape {
        width,
        height,
        color: decoder.color_type(),
        has_icc_profile,
        input_bytes: bytes.len(),
        largest_variant_edge: spec.sizes.iter().map(|s| s.max_edge).max().unwrap_or(0),
    };
    Ok(Probe {
        width,
        height,
        peak_bytes: memory::estimate_peak_bytes(&shape),
    })
}

/// The size that fits in a `max_edge` square keeping the aspect ratio; never larger than the
/// original, never zero.
pub fn fit(width: u32, height: u32, max_edge: u32) -> (u32, u32) {
    let longest = width.max(height);
    if longest <= max_edge {
        return (width, height);
    }
    let scale = f64::from(max_edge) / f64::from(longest);
    let w = ((f64::from(width) * scale).round() as u32).clamp(1, max_edge);
    let h = ((f64::from(height) * scale).round() as u32).clamp(1, max_edge);
    (w, h)
}

#[cfg(test)]
mod tests {
    use image::DynamicImage;

    use super::*;

    fn spec() -> VariantSpec {
        VariantSpec {
            version: 1,
            sizes: vec![
                VariantSize::new("thumb", 64),
                VariantSize::new("large", 1000),
            ],
        }
    }

    const LIMITS: Limits = Limits {
        max_pixels: 1_000_000,
        max_side: 4_000,
        max_alloc: 512 * 1024 * 1024,
    };

    fn png(width: u32, height: u32, alpha: bool) -> Vec<u8> {
        let image = if alpha {
            DynamicImage::new_rgba8(width, height)
        } else {
            DynamicImage::new_rgb8(width, height)
        };
        let mut out = Cursor::new(Vec::new());
        image
            .write_to(&mut out, image::ImageFormat::Png)
            .expect("encode test png");
        out.into_inner()
    }

    #[test]
    fn fit_keeps_aspect_and_never_upscales() {
        assert_eq!(fit(2560, 1600, 256), (256, 160));
        assert_eq!(fit(1600, 2560, 256), (160, 256));
        assert_eq!(fit(100, 50, 256), (100, 50));
        assert_eq!(fit(10_000, 1, 256), (256, 1));
    }

    #[test]
    fn renders_every_size_in_spec_order_as_webp() {
        let rendered = render(Bytes::from(png(300, 200, false)), &spec(), LIMITS).unwrap();
        assert_eq!((rendered.width, rendered.height), (300, 200));
        let names: Vec<_> = rendered.variants.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["thumb", "large"]);
        let thumb = &rendered.variants[0];
        assert_eq!((thumb.width, thumb.height), (64, 43));
        assert_eq!(&thumb.webp[..4], b"RIFF");
        assert_eq!(&thumb.webp[8..12], b"WEBP");
        // Not upscaled: the 1000 px variant keeps the original size.
        let large = &rendered.variants[1];
        assert_eq!((large.width, large.height), (300, 200));
        let decoded = image::load_from_memory(&large.webp).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (300, 200));
    }

    fn solid_png(width: u32, height: u32, rgb: [u8; 3]) -> Vec<u8> {
        let image = image::RgbImage::from_pixel(width, height, image::Rgb(rgb));
        let mut out = Cursor::new(Vec::new());
        DynamicImage::ImageRgb8(image)
            .write_to(&mut out, image::ImageFormat::Png)
            .expect("encode test png");
        out.into_inner()
    }

    #[test]
    fn describes_the_colours_of_what_it_renders() {
        let rendered = render(
            Bytes::from(solid_png(300, 200, [200, 30, 30])),
            &spec(),
            LIMITS,
        )
        .unwrap();
        assert_eq!(rendered.dominant_color.as_deref(), Some("#c81e1e"));
        assert_eq!(rendered.blurhash.len(), 28);
        // The placeholder is that red too, within BlurHash's quantisation (its encoder's float
        // noise on a flat image comes back as faint AC components).
        let placeholder = blurhash::decode(&rendered.blurhash, 8, 8, 1.0).unwrap();
        for pixel in placeholder.chunks_exact(4) {
            let close = |value: u8, expected: u8| value.abs_diff(expected) <= 16;
            assert!(
                close(pixel[0], 200) && close(pixel[1], 30) && close(pixel[2], 30),
                "{pixel:?} in {}",
                rendered.blurhash
            );
        }
    }

    #[test]
    fn the_dominant_colour_is_the_majority_not_the_average() {
        // Left 70% red, right 30% blue: the average would be a purple nobody sees.
        let image = image::RgbImage::from_fn(300, 200, |x, _| {
            if x < 210 {
                image::Rgb([220, 20, 30])
            } else {
                image::Rgb([20, 40, 210])
            }
        });
        let mut png = Cursor::new(Vec::new());
        DynamicImage::ImageRgb8(image)
            .write_to(&mut png, image::ImageFormat::Png)
            .unwrap();
        let rendered = render(Bytes::from(png.into_inner()), &spec(), LIMITS).unwrap();
        assert_eq!(rendered.dominant_color.as_deref(), Some("#dc141e"));
    }

    #[test]
    fn a_fully_transparent_image_has_no_dominant_colour() {
        let rendered = render(Bytes::from(png(100, 100, true)), &spec(), LIMITS).unwrap();
        assert_eq!(rendered.dominant_color, None);
        assert_eq!(rendered.blurhash.len(), 28);
    }

    #[test]
    fn keeps_alpha() {
        let rendered = render(Bytes::from(png(100, 100, true)), &spec(), LIMITS).unwrap();
        let decoded = image::load_from_memory(&rendered.variants[0].webp).unwrap();
        assert!(decoded.color().has_alpha());
    }

    #[test]
    fn rejects_over_limit_before_decoding() {
        let error = render(Bytes::from(png(2_000, 1_000, false)), &spec(), LIMITS).unwrap_err();
        assert_eq!(error.reason_code(), ReasonCode::ImageTooLarge);
    }

    #[test]
    fn text_and_truncated_images_fail_with_a_reason() {
        let error = render(
            Bytes::from_static(b"hello, this is not an image"),
            &spec(),
            LIMITS,
        )
        .unwrap_err();
        assert_eq!(error.reason_code(), ReasonCode::UnsupportedFormat);
        let bytes = png(300, 200, false);
        let half = bytes.len() / 2;
        let error = render(Bytes::from(bytes).slice(..half), &spec(), LIMITS).unwrap_err();
        assert_eq!(error.reason_code(), ReasonCode::Undecodable);
    }
}
