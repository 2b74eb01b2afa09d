//! From the original's bytes to the 8-bit sRGB pixels the cascade resizes, holding as little
//! at once as the codecs allow: the header is checked before any pixel is decoded, colour
//! conversion works in place where it can, opaque alpha is dropped in place, and the EXIF
//! orientation is not applied here (turning a full-size image copies it) but handed to the
//! cascade, which applies it to the first, much smaller, variant.

use std::io::Cursor;

use fast_image_resize::images::Image;
use fast_image_resize::PixelType;
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageReader};

use super::{Limits, RenderError};
use crate::color::{self, Conversion};
use crate::memory;

/// The original's pixels as stored in the file (not yet upright), 8-bit RGB or RGBA, sRGB.
pub(super) struct Decoded {
    pub pixels: Image<'static>,
    /// What makes them upright; the cascade applies it after its first resize.
    pub orientation: Orientation,
}

impl Decoded {
    /// The size once upright.
    pub fn upright_size(&self) -> (u32, u32) {
        let (w, h) = (self.pixels.width(), self.pixels.height());
        if swaps_axes(self.orientation) {
            (h, w)
        } else {
            (w, h)
        }
    }
}

/// Whether `orientation` turns the image a quarter, so width and height trade places.
pub(super) fn swaps_axes(orientation: Orientation) -> bool {
    matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}

/// Decodes with the limits checked on the header first and converts the pixels to sRGB if an
/// ICC profile says they are something else. Grey becomes RGB, 16-bit and float become 8-bit
/// (rounded), a palette is already expanded by the decoder; alpha stays unless every pixel is
/// opaque. An animation (GIF, WebP) decodes to its first frame.
pub(super) fn decode(bytes: &[u8], limits: Limits) -> Result<Decoded, RenderError> {
    let mut decoder = open_decoder(bytes, limits)?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let icc_profile = decoder.icc_profile().ok().flatten();
    let image = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
    let (image, conversion) = color::to_srgb(image, icc_profile.as_deref());
    if let Conversion::Unusable(reason) = conversion {
        tracing::debug!(%reason, "ICC profile ignored");
    }
    Ok(Decoded {
        pixels: eight_bit(image)?,
        orientation,
    })
}

/// Upright and sRGB in one image, for callers that want the whole picture at full size (the
/// pixel tests compare against it); the render itself never builds this.
pub fn decode_upright_srgb(bytes: &[u8], limits: Limits) -> Result<DynamicImage, RenderError> {
    let decoded = decode(bytes, limits)?;
    let mut image = to_dynamic(decoded.pixels)?;
    image.apply_orientation(decoded.orientation);
    Ok(image)
}

/// 8-bit RGB or RGBA for the resizer: RGB8 and RGBA8 without a copy, other types converted.
fn eight_bit(image: DynamicImage) -> Result<Image<'static>, RenderError> {
    let (width, height) = (image.width(), image.height());
    let image = if image.color().has_alpha() {
        let mut rgba = image.into_rgba8().into_raw();
        if rgba.chunks_exact(4).all(|pixel| pixel[3] == u8::MAX) {
            drop_alpha_in_place(&mut rgba);
            Image::from_vec_u8(width, height, rgba, PixelType::U8x3)
        } else {
            Image::from_vec_u8(width, height, rgba, PixelType::U8x4)
        }
    } else {
        Image::from_vec_u8(width, height, image.into_rgb8().into_raw(), PixelType::U8x3)
    };
    image.map_err(|e| RenderError::Undecodable(e.into()))
}

/// RGBA to RGB inside the same buffer: every pixel moves to an index at or before its own, so
/// a forward pass never overwrites one it has yet to read. The buffer then shrinks, which for
/// a large one (mapped by the allocator) gives the quarter back without copying.
fn drop_alpha_in_place(rgba: &mut Vec<u8>) {
    let pixels = rgba.len() / 4;
    for i in 0..pixels {
        rgba.copy_within(i * 4..i * 4 + 3, i * 3);
    }
    rgba.truncate(pixels * 3);
    rgba.shrink_to_fit();
}

/// The resizer's pixels back as an image crate image, without a copy.
pub(super) fn to_dynamic(pixels: Image<'static>) -> Result<DynamicImage, RenderError> {
    let (width, height, alpha) = (
        pixels.width(),
        pixels.height(),
        pixels.pixel_type() == PixelType::U8x4,
    );
    let buffer = pixels.into_vec();
    let image = if alpha {
        image::RgbaImage::from_raw(width, height, buffer).map(DynamicImage::ImageRgba8)
    } else {
        image::RgbImage::from_raw(width, height, buffer).map(DynamicImage::ImageRgb8)
    };
    image.ok_or_else(|| RenderError::Encode("pixel buffer of the wrong size".into()))
}

/// A decoder past the header, with the limits checked: dimensions, an ICC profile that would
/// inflate past its limit, and the allocation limit handed to the decoder itself.
pub(super) fn open_decoder(
    bytes: &[u8],
    limits: Limits,
) -> Result<impl ImageDecoder + '_, RenderError> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| RenderError::Undecodable(e.into()))?;
    if reader.format().is_none() {
        return Err(RenderError::UnsupportedFormat);
    }
    if memory::png_icc_profile_too_large(bytes) {
        return Err(RenderError::OverMemoryLimit(
            format!(
                "the ICC profile inflates past {} bytes",
                memory::MAX_ICC_PROFILE_BYTES
            )
            .into(),
        ));
    }
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_alloc = Some(limits.max_alloc);
    reader.limits(decoder_limits);
    let decoder = reader.into_decoder().map_err(decode_error)?;
    let (width, height) = decoder.dimensions();
    if width > limits.max_side
        || height > limits.max_side
        || u64::from(width) * u64::from(height) > limits.max_pixels
    {
        return Err(RenderError::TooLarge { width, height });
    }
    Ok(decoder)
}

fn decode_error(error: image::ImageError) -> RenderError {
    match error {
        image::ImageError::Unsupported(_) => RenderError::UnsupportedFormat,
        image::ImageError::Limits(limit) => RenderError::OverMemoryLimit(limit.into()),
        other => RenderError::Undecodable(other.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpha_is_dropped_in_place_keeping_every_colour() {
        let mut rgba: Vec<u8> = (0..4 * 1000).map(|i| (i % 251) as u8).collect();
        let expected: Vec<u8> = rgba
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect();
        drop_alpha_in_place(&mut rgba);
        assert_eq!(rgba, expected);
    }

    #[test]
    fn only_an_opaque_image_loses_its_alpha() {
        let opaque = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
            3,
            2,
            image::Rgba([10, 20, 30, 255]),
        ));
        let pixels = eight_bit(opaque).unwrap();
        assert_eq!(pixels.pixel_type(), PixelType::U8x3);
        assert_eq!(pixels.buffer(), [10, 20, 30].repeat(6).as_slice());
        let mut translucent = image::RgbaImage::from_pixel(3, 2, image::Rgba([10, 20, 30, 255]));
        translucent.put_pixel(2, 1, image::Rgba([10, 20, 30, 254]));
        let pixels = eight_bit(DynamicImage::ImageRgba8(translucent)).unwrap();
        assert_eq!(pixels.pixel_type(), PixelType::U8x4);
    }
}
