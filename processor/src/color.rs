//! Colour management. The variants are WebP without a profile, which every viewer shows as
//! sRGB, so pixels that came with another ICC profile (Display P3 from phones, Adobe RGB from
//! cameras, a grey gamma) are converted to sRGB before they are resized and encoded. Pure; no IO.

use std::sync::Arc;

use image::{ColorType, DynamicImage, ImageBuffer, Pixel};
use moxcms::{
    CmsError, ColorProfile, DataColorSpace, Layout, Transform16BitExecutor, Transform8BitExecutor,
    TransformExecutor, TransformOptions,
};

/// Pixels per call into the transform: enough to amortise the call, small enough that the
/// scratch buffer for an in-place conversion stays in cache and costs no second image.
const CHUNK_PIXELS: usize = 16 * 1024;

/// Largest difference, in 8-bit levels, between a probe colour and its conversion for which a
/// profile counts as sRGB: converting would change nothing anyone could see.
const SRGB_TOLERANCE: u8 = 1;

/// What [`to_srgb`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Conversion {
    /// No embedded profile: the pixels are sRGB by convention.
    NoProfile,
    /// The profile describes sRGB (or something indistinguishable at 8 bits), so the pixels
    /// were left alone: the cheap path of most cameras and editors.
    AlreadySrgb,
    /// The pixels were converted from the profile's colour space to sRGB.
    Converted,
    /// The profile cannot be applied to these pixels (malformed, or for other channels than
    /// the decoder produced, e.g. CMYK that the JPEG decoder already turned into RGB). The
    /// pixels are kept as they are, which is how a viewer ignoring the profile would show them.
    Unusable(UnusableProfile),
}

/// Why an embedded profile was not applied. Not a failure (the pixels are kept as they are and
/// the render goes on), so neither a [`crate::render::RenderError`], which fails the image, nor
/// a [`crate::ProcessorError`]; an error type so the CMS's cause stays its source in the log.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UnusableProfile {
    #[error("a profile of {0} bytes")]
    TooLarge(usize),
    #[error("malformed profile: {0}")]
    Malformed(#[source] CmsError),
    #[error("a {0:?} profile on RGB or grey pixels")]
    NotRgbOrGrey(DataColorSpace),
    #[error("a {space:?} profile on {pixels:?} pixels")]
    OtherPixels {
        space: DataColorSpace,
        pixels: ColorType,
    },
    #[error("no transform to sRGB: {0}")]
    NoTransform(#[source] CmsError),
    #[error("transform to sRGB: {0}")]
    Transform(#[source] CmsError),
}

/// Converts `image` from the colour space its embedded ICC profile describes to sRGB.
pub fn to_srgb(image: DynamicImage, icc_profile: Option<&[u8]>) -> (DynamicImage, Conversion) {
    let Some(icc_profile) = icc_profile else {
        return (image, Conversion::NoProfile);
    };
    // A JPEG's or WebP's profile is stored uncompressed, so only its file size bounds it;
    // real ones are kilobytes, and parsing a huge one costs time for nothing.
    if icc_profile.len() > crate::memory::MAX_ICC_PROFILE_BYTES {
        return (
            image,
            Conversion::Unusable(UnusableProfile::TooLarge(icc_profile.len())),
        );
    }
    let profile = match ColorProfile::new_from_slice(icc_profile) {
        Ok(profile) => profile,
        Err(error) => {
            return (
                image,
                Conversion::Unusable(UnusableProfile::Malformed(error)),
            )
        }
    };
    match is_srgb(&profile) {
        Ok(true) => return (image, Conversion::AlreadySrgb),
        Ok(false) => {}
        Err(error) => return (image, Conversion::Unusable(error)),
    }
    match convert(image, &profile) {
        (image, Ok(())) => (image, Conversion::Converted),
        (image, Err(error)) => (image, Conversion::Unusable(error)),
    }
}

/// Whether converting from `profile` to sRGB leaves every probe colour (a 9x9x9 grid for RGB,
/// a ramp for grey) where it is. Probing the transform itself, rather than comparing profile
/// tags, recognises every encoding of sRGB (v2, v4, compact, vendor copies) and nothing else.
pub fn is_srgb(profile: &ColorProfile) -> Result<bool, UnusableProfile> {
    let (layout, probe) = match profile.color_space {
        DataColorSpace::Rgb => {
            let levels: Vec<u8> = (0..=8u16).map(|i| (i * 255 / 8) as u8).collect();
            let mut probe = Vec::with_capacity(levels.len().pow(3) * 3);
            for &r in &levels {
                for &g in &levels {
                    for &b in &levels {
                        probe.extend([r, g, b]);
                    }
                }
            }
            (Layout::Rgb, probe)
        }
        DataColorSpace::Gray => (Layout::Gray, (0..=255u8).collect()),
        other => return Err(UnusableProfile::NotRgbOrGrey(other)),
    };
    let transform = transform_8bit(profile, layout, Layout::Rgb)?;
    let expected: Vec<u8> = match layout {
        Layout::Gray => probe.iter().flat_map(|&v| [v, v, v]).collect(),
        _ => probe.clone(),
    };
    let mut converted = vec![0; expected.len()];
    transform
        .transform(&probe, &mut converted)
        .map_err(UnusableProfile::Transform)?;
    Ok(converted
        .iter()
        .zip(&expected)
        .all(|(a, b)| a.abs_diff(*b) <= SRGB_TOLERANCE))
}

fn transform_8bit(
    profile: &ColorProfile,
    source: Layout,
    target: Layout,
) -> Result<Arc<Transform8BitExecutor>, UnusableProfile> {
    profile
        .create_transform_8bit(
            source,
            &ColorProfile::new_srgb(),
            target,
            TransformOptions::default(),
        )
        .map_err(UnusableProfile::NoTransform)
}

fn transform_16bit(
    profile: &ColorProfile,
    source: Layout,
    target: Layout,
) -> Result<Arc<Transform16BitExecutor>, UnusableProfile> {
    profile
        .create_transform_16bit(
            source,
            &ColorProfile::new_srgb(),
            target,
            TransformOptions::default(),
        )
        .map_err(UnusableProfile::NoTransform)
}

/// Converts in the image's own depth (16-bit stays 16-bit until the variants are made 8-bit);
/// grey becomes RGB, since sRGB is an RGB space, and alpha is carried through untouched.
fn convert(
    image: DynamicImage,
    profile: &ColorProfile,
) -> (DynamicImage, Result<(), UnusableProfile>) {
    match profile.color_space {
        DataColorSpace::Rgb => convert_rgb(image, profile),
        DataColorSpace::Gray => convert_grey(image, profile),
        space => other_pixels(space, image),
    }
}

/// RGB pixels under an RGB profile, converted where they are.
fn convert_rgb(
    image: DynamicImage,
    profile: &ColorProfile,
) -> (DynamicImage, Result<(), UnusableProfile>) {
    match image {
        DynamicImage::ImageRgb8(mut buffer) => {
            let converted = transform_8bit(profile, Layout::Rgb, Layout::Rgb)
                .and_then(|t| transform_in_place(t.as_ref(), &mut buffer, 3));
            (DynamicImage::ImageRgb8(buffer), converted)
        }
        DynamicImage::ImageRgba8(mut buffer) => {
            let converted = transform_8bit(profile, Layout::Rgba, Layout::Rgba)
                .and_then(|t| transform_in_place(t.as_ref(), &mut buffer, 4));
            (DynamicImage::ImageRgba8(buffer), converted)
        }
        image @ (DynamicImage::ImageRgb16(_) | DynamicImage::ImageRgb32F(_)) => {
            let mut buffer = image.into_rgb16();
            let converted = transform_16bit(profile, Layout::Rgb, Layout::Rgb)
                .and_then(|t| transform_in_place(t.as_ref(), &mut buffer, 3));
            (DynamicImage::ImageRgb16(buffer), converted)
        }
        image @ (DynamicImage::ImageRgba16(_) | DynamicImage::ImageRgba32F(_)) => {
            let mut buffer = image.into_rgba16();
            let converted = transform_16bit(profile, Layout::Rgba, Layout::Rgba)
                .and_then(|t| transform_in_place(t.as_ref(), &mut buffer, 4));
            (DynamicImage::ImageRgba16(buffer), converted)
        }
        image => other_pixels(DataColorSpace::Rgb, image),
    }
}

/// Grey pixels under a grey profile, converted into new RGB (or RGBA) pixels; on failure the
/// grey ones are kept.
fn convert_grey(
    image: DynamicImage,
    profile: &ColorProfile,
) -> (DynamicImage, Result<(), UnusableProfile>) {
    match image {
        DynamicImage::ImageLuma8(buffer) => {
            match transform_8bit(profile, Layout::Gray, Layout::Rgb)
                .and_then(|t| transform_into::<image::Rgb<u8>>(t.as_ref(), &buffer))
            {
                Ok(rgb) => (DynamicImage::ImageRgb8(rgb), Ok(())),
                Err(error) => (DynamicImage::ImageLuma8(buffer), Err(error)),
            }
        }
        DynamicImage::ImageLumaA8(buffer) => {
            match transform_8bit(profile, Layout::GrayAlpha, Layout::Rgba)
                .and_then(|t| transform_into::<image::Rgba<u8>>(t.as_ref(), &buffer))
            {
                Ok(rgba) => (DynamicImage::ImageRgba8(rgba), Ok(())),
                Err(error) => (DynamicImage::ImageLumaA8(buffer), Err(error)),
            }
        }
        DynamicImage::ImageLuma16(buffer) => {
            match transform_16bit(profile, Layout::Gray, Layout::Rgb)
                .and_then(|t| transform_into::<image::Rgb<u16>>(t.as_ref(), &buffer))
            {
                Ok(rgb) => (DynamicImage::ImageRgb16(rgb), Ok(())),
                Err(error) => (DynamicImage::ImageLuma16(buffer), Err(error)),
            }
        }
        DynamicImage::ImageLumaA16(buffer) => {
            match transform_16bit(profile, Layout::GrayAlpha, Layout::Rgba)
                .and_then(|t| transform_into::<image::Rgba<u16>>(t.as_ref(), &buffer))
            {
                Ok(rgba) => (DynamicImage::ImageRgba16(rgba), Ok(())),
                Err(error) => (DynamicImage::ImageLumaA16(buffer), Err(error)),
            }
        }
        image => other_pixels(DataColorSpace::Gray, image),
    }
}

/// A profile for other channels than the pixels have: they are left as they are.
fn other_pixels(
    space: DataColorSpace,
    image: DynamicImage,
) -> (DynamicImage, Result<(), UnusableProfile>) {
    let pixels = image.color();
    (image, Err(UnusableProfile::OtherPixels { space, pixels }))
}

/// Converts `pixels` where they are, a chunk at a time through a small scratch buffer.
fn transform_in_place<T: Copy + Default>(
    transform: &(dyn TransformExecutor<T> + Send + Sync),
    pixels: &mut [T],
    channels: usize,
) -> Result<(), UnusableProfile> {
    let chunk_len = CHUNK_PIXELS * channels;
    let mut scratch = vec![T::default(); chunk_len.min(pixels.len())];
    for chunk in pixels.chunks_mut(chunk_len) {
        let converted = &mut scratch[..chunk.len()];
        transform
            .transform(chunk, converted)
            .map_err(UnusableProfile::Transform)?;
        chunk.copy_from_slice(converted);
    }
    Ok(())
}

/// Converts grey `source` into a new buffer of `Target` pixels (RGB or RGBA).
fn transform_into<Target: Pixel>(
    transform: &(dyn TransformExecutor<Target::Subpixel> + Send + Sync),
    source: &ImageBuffer<impl Pixel<Subpixel = Target::Subpixel>, Vec<Target::Subpixel>>,
) -> Result<ImageBuffer<Target, Vec<Target::Subpixel>>, UnusableProfile>
where
    Target::Subpixel: Default,
{
    let (width, height) = source.dimensions();
    let mut target: ImageBuffer<Target, Vec<Target::Subpixel>> = ImageBuffer::new(width, height);
    transform
        .transform(source.as_raw(), &mut target)
        .map_err(UnusableProfile::Transform)?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma, LumaA, Rgb, RgbImage, Rgba};

    fn icc(profile: &ColorProfile) -> Vec<u8> {
        profile.encode().expect("encode the test profile")
    }

    fn solid_rgb(rgb: [u8; 3]) -> DynamicImage {
        DynamicImage::ImageRgb8(RgbImage::from_pixel(4, 3, Rgb(rgb)))
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
    fn without_a_profile_nothing_happens() {
        let (image, conversion) = to_srgb(solid_rgb([200, 100, 100]), None);
        assert_eq!(conversion, Conversion::NoProfile);
        assert_eq!(image.into_rgb8().get_pixel(0, 0).0, [200, 100, 100]);
    }

    #[test]
    fn an_srgb_profile_takes_the_cheap_path() {
        let profile = icc(&ColorProfile::new_srgb());
        let (image, conversion) = to_srgb(solid_rgb([200, 100, 100]), Some(&profile));
        assert_eq!(conversion, Conversion::AlreadySrgb);
        assert_eq!(image.into_rgb8().get_pixel(0, 0).0, [200, 100, 100]);
    }

    /// The expected values are the Display P3 to sRGB matrix applied by hand (both D65, the
    /// sRGB curve on both sides); colours inside both gamuts only get more saturated numbers,
    /// as the same colour needs more of sRGB's narrower primaries.
    #[test]
    fn display_p3_becomes_srgb() {
        let profile = icc(&ColorProfile::new_display_p3());
        let image = DynamicImage::ImageRgb8(RgbImage::from_fn(2, 1, |x, _| {
            if x == 0 {
                Rgb([200, 100, 100])
            } else {
                Rgb([100, 180, 60])
            }
        }));
        let (image, conversion) = to_srgb(image, Some(&profile));
        assert_eq!(conversion, Conversion::Converted);
        let image = image.into_rgb8();
        assert_close(&image.get_pixel(0, 0).0, &[215, 93, 97], 2);
        assert_close(&image.get_pixel(1, 0).0, &[65, 182, 27], 2);
    }

    #[test]
    fn sixteen_bit_pixels_convert_at_sixteen_bits_and_alpha_is_kept() {
        let profile = icc(&ColorProfile::new_display_p3());
        let pixel = Rgba([200 * 257, 100 * 257, 100 * 257, 77 * 257]);
        let image = DynamicImage::ImageRgba16(ImageBuffer::from_pixel(3, 2, pixel));
        let (image, conversion) = to_srgb(image, Some(&profile));
        assert_eq!(conversion, Conversion::Converted);
        assert!(matches!(image, DynamicImage::ImageRgba16(_)));
        let rgba = image.into_rgba8();
        assert_close(&rgba.get_pixel(2, 1).0, &[215, 93, 97, 77], 2);
        assert_eq!(rgba.get_pixel(2, 1).0[3], 77);
    }

    #[test]
    fn a_linear_grey_profile_brightens_the_midtones_into_srgb_grey() {
        // 50% linear light is 188 in sRGB's curve.
        let profile = icc(&ColorProfile::new_gray_with_gamma(1.0));
        let image = DynamicImage::ImageLuma8(GrayImage::from_pixel(5, 5, Luma([128])));
        let (image, conversion) = to_srgb(image, Some(&profile));
        assert_eq!(conversion, Conversion::Converted);
        assert!(matches!(image, DynamicImage::ImageRgb8(_)));
        assert_close(&image.into_rgb8().get_pixel(4, 4).0, &[188, 188, 188], 2);

        let with_alpha = DynamicImage::ImageLumaA8(ImageBuffer::from_pixel(5, 5, LumaA([128, 9])));
        let (image, _) = to_srgb(with_alpha, Some(&profile));
        assert_close(
            &image.into_rgba8().get_pixel(0, 0).0,
            &[188, 188, 188, 9],
            2,
        );
    }

    #[test]
    fn images_larger_than_a_chunk_are_converted_throughout() {
        let profile = icc(&ColorProfile::new_display_p3());
        let image = DynamicImage::ImageRgb8(RgbImage::from_pixel(301, 200, Rgb([200, 100, 100])));
        let (image, _) = to_srgb(image, Some(&profile));
        let image = image.into_rgb8();
        for pixel in image.pixels() {
            assert_close(&pixel.0, &[215, 93, 97], 2);
        }
    }

    #[test]
    fn an_unusable_profile_leaves_the_pixels_alone() {
        let (image, conversion) = to_srgb(solid_rgb([1, 2, 3]), Some(b"not a profile at all"));
        assert!(
            matches!(conversion, Conversion::Unusable(_)),
            "{conversion:?}"
        );
        assert_eq!(image.into_rgb8().get_pixel(0, 0).0, [1, 2, 3]);

        // A grey profile on RGB pixels describes channels these are not.
        let grey = icc(&ColorProfile::new_gray_with_gamma(1.0));
        let (image, conversion) = to_srgb(solid_rgb([1, 2, 3]), Some(&grey));
        assert!(
            matches!(conversion, Conversion::Unusable(_)),
            "{conversion:?}"
        );
        assert_eq!(image.into_rgb8().get_pixel(0, 0).0, [1, 2, 3]);
    }
}
