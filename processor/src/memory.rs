//! The processor's memory budget. Before a render starts, its peak memory is estimated from the
//! image's header (pixels, the decoded pixel type, whether colour conversion or orientation
//! makes a copy); the render then holds that much of the budget until it ends, so renders
//! running at once never together count more than the budget. A render estimated larger than
//! the whole budget takes all of it and runs alone: it is never refused for the budget alone,
//! and never waits for more than there is.

use std::sync::Arc;

use image::ColorType;
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

/// The budget counts in KiB: a tokio semaphore acquires at most `u32::MAX` permits at once.
const UNIT_BYTES: u64 = 1024;

/// The largest ICC profile inflated. Real profiles are kilobytes (a few hundred KiB with big
/// lookup tables); a PNG's compressed one can claim hundreds of MiB from a few KiB.
pub const MAX_ICC_PROFILE_BYTES: usize = 4 * 1024 * 1024;

/// Decoder state beyond the pixels: zlib windows, row buffers, an ICC profile, text chunks.
const DECODER_OVERHEAD_BYTES: u64 = 8 * 1024 * 1024;

/// The bytes renders may hold at once.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    permits: Arc<Semaphore>,
    total_units: u32,
}

impl MemoryBudget {
    pub fn new(bytes: u64) -> Self {
        let total_units = u32::try_from(bytes.div_ceil(UNIT_BYTES))
            .unwrap_or(u32::MAX)
            .clamp(1, u32::try_from(Semaphore::MAX_PERMITS).unwrap_or(u32::MAX));
        Self {
            permits: Arc::new(Semaphore::new(total_units as usize)),
            total_units,
        }
    }

    /// Waits until `bytes` of the budget are free and holds them until the permit is dropped.
    /// More than the whole budget waits for all of it.
    pub async fn reserve(&self, bytes: u64) -> Result<OwnedSemaphorePermit, AcquireError> {
        let units = u32::try_from(bytes.div_ceil(UNIT_BYTES))
            .unwrap_or(u32::MAX)
            .clamp(1, self.total_units);
        Arc::clone(&self.permits).acquire_many_owned(units).await
    }

    /// What is not held right now.
    pub fn available_bytes(&self) -> u64 {
        self.permits.available_permits() as u64 * UNIT_BYTES
    }

    pub fn total_bytes(&self) -> u64 {
        u64::from(self.total_units) * UNIT_BYTES
    }
}

/// What the header tells about an image's decoding, for [`estimate_peak_bytes`].
#[derive(Debug, Clone, Copy)]
pub struct DecodeShape {
    pub width: u32,
    pub height: u32,
    /// The pixel type the decoder produces.
    pub color: ColorType,
    /// An embedded ICC profile: grey becomes RGB and float becomes 16-bit, each in a new buffer.
    pub has_icc_profile: bool,
    /// The compressed original, held until the pixels are decoded.
    pub input_bytes: usize,
    /// The longest edge of the largest variant: the resizer's buffers grow with it.
    pub largest_variant_edge: u32,
}

/// The most memory rendering an image of this shape holds at once, in bytes: the larger of
/// the decoding peak (the compressed original, the decoded pixels, a converted copy of them
/// next to the original one, then the 8-bit RGB(A) copy the resizer works on) and the
/// resizing peak (the 8-bit pixels, the resizer's intermediate rows and two variants; the
/// compressed original is freed by then). Orientation and alpha premultiplication add no
/// full-size copy: the render applies the one to the first variant and does the other in place.
pub fn estimate_peak_bytes(shape: &DecodeShape) -> u64 {
    let pixels = u64::from(shape.width) * u64::from(shape.height);
    let color = shape.color;
    let native = u64::from(color.bytes_per_pixel());
    let channels = if color.has_alpha() { 4 } else { 3 };
    let is_grey = color.channel_count() <= 2;
    let is_float = matches!(color, ColorType::Rgb32F | ColorType::Rgba32F);
    let wide = color.bytes_per_pixel() / color.channel_count() > 1;
    // Colour conversion works at 8 or 16 bits, in RGB(A).
    let (converted, conversion_copies) = if shape.has_icc_profile && (is_grey || is_float) {
        (channels * if wide { 2 } else { 1 }, true)
    } else {
        (native, false)
    };
    let mut decode_peak = native;
    if conversion_copies {
        decode_peak = decode_peak.max(native + converted);
    }
    // Only 8-bit RGB and RGBA become the resizer's pixels without a copy.
    let eight_bit_in_place = converted == channels && !wide && !is_grey;
    if !eight_bit_in_place {
        decode_peak = decode_peak.max(converted + channels);
    }
    let longest = u64::from(shape.width.max(shape.height));
    // Variants are never upscaled.
    let edge = u64::from(shape.largest_variant_edge).min(longest);
    let resize_extra = channels * (edge * longest + 2 * edge * edge);
    let decoding = decode_peak * pixels + shape.input_bytes as u64;
    decoding.max(channels * pixels + resize_extra) + DECODER_OVERHEAD_BYTES
}

/// Whether a PNG's compressed ICC profile (its `iCCP` chunk) inflates past
/// [`MAX_ICC_PROFILE_BYTES`], found by walking the chunk headers and inflating at most that
/// much. The decoder would inflate it all (up to its whole allocation limit) before the first
/// pixel. Not a PNG, or no profile: false.
pub fn png_icc_profile_too_large(bytes: &[u8]) -> bool {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    let Some(mut rest) = bytes.strip_prefix(SIGNATURE) else {
        return false;
    };
    while rest.len() >= 8 {
        let length = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let kind = &rest[4..8];
        let Some(data) = rest.get(8..8 + length) else {
            return false;
        };
        match kind {
            b"iCCP" => {
                // keyword, NUL, compression method (0: zlib), the zlib stream.
                let Some(stream) = data
                    .iter()
                    .position(|b| *b == 0)
                    .and_then(|nul| data.get(nul + 2..))
                else {
                    return false;
                };
                return matches!(
                    fdeflate::decompress_to_vec_bounded(stream, MAX_ICC_PROFILE_BYTES),
                    Err(fdeflate::BoundedDecompressionError::OutputTooLarge { .. })
                );
            }
            b"IDAT" | b"IEND" => return false,
            _ => {}
        }
        // length, type, data, CRC
        rest = rest.get(12 + length..).unwrap_or_default();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn shape(width: u32, height: u32, color: ColorType) -> DecodeShape {
        DecodeShape {
            width,
            height,
            color,
            has_icc_profile: false,
            input_bytes: 0,
            largest_variant_edge: 2048,
        }
    }

    #[test]
    fn the_estimate_counts_the_decoded_type_and_its_copies() {
        // 48 MP of 16-bit RGBA: 8 bytes a pixel decoded, next to the 4 of its 8-bit copy.
        let rgba16 = estimate_peak_bytes(&shape(8000, 6000, ColorType::Rgba16));
        assert!(rgba16 >= 48_000_000 * 12, "{rgba16}");
        assert!(rgba16 < 48_000_000 * 12 + 64 * MIB, "{rgba16}");
        // 8-bit RGB needs no copy to become the resizer's pixels; resizing adds its buffers.
        let rgb8 = estimate_peak_bytes(&shape(8000, 6000, ColorType::Rgb8));
        assert!(rgb8 >= 48_000_000 * 3, "{rgb8}");
        assert!(rgb8 < 48_000_000 * 3 + 96 * MIB, "{rgb8}");
        // Grey with alpha becomes RGBA: 2 bytes a pixel decoded, 4 more for the copy.
        let grey_alpha = estimate_peak_bytes(&shape(7000, 7000, ColorType::La8));
        assert!(grey_alpha >= 49_000_000 * 6, "{grey_alpha}");
        // A profile on 16-bit grey with alpha: RGBA16 next to it, then RGBA8 next to that.
        let profiled = estimate_peak_bytes(&DecodeShape {
            has_icc_profile: true,
            ..shape(7000, 7000, ColorType::La16)
        });
        assert!(profiled >= 49_000_000 * 12, "{profiled}");
        // The compressed original counts while the pixels are decoded, not once it is freed:
        // a small one hides under the resizing peak, a large one raises the decoding peak.
        let with_small_input = estimate_peak_bytes(&DecodeShape {
            input_bytes: 20_000_000,
            ..shape(8000, 6000, ColorType::Rgb8)
        });
        assert_eq!(with_small_input, rgb8);
        let with_large_input = estimate_peak_bytes(&DecodeShape {
            input_bytes: 200_000_000,
            ..shape(8000, 6000, ColorType::Rgb8)
        });
        assert_eq!(
            with_large_input,
            48_000_000 * 3 + 200_000_000 + DECODER_OVERHEAD_BYTES
        );
    }

    #[test]
    fn a_small_image_weighs_little() {
        let small = estimate_peak_bytes(&shape(640, 480, ColorType::Rgb8));
        assert!(small < 32 * MIB, "{small}");
    }

    #[tokio::test]
    async fn a_render_cannot_start_while_the_budget_is_taken() {
        let budget = MemoryBudget::new(100 * MIB);
        let first = budget.reserve(60 * MIB).await.unwrap();
        assert_eq!(budget.available_bytes(), 40 * MIB);
        // 50 MiB do not fit next to the 60 held.
        let mut second = std::pin::pin!(budget.reserve(50 * MIB));
        assert!(futures_poll_once(second.as_mut()).await.is_none());
        drop(first);
        let second = second.await.unwrap();
        assert_eq!(budget.available_bytes(), 50 * MIB);
        drop(second);
        assert_eq!(budget.available_bytes(), budget.total_bytes());
    }

    #[tokio::test]
    async fn a_render_larger_than_the_budget_takes_all_of_it_and_runs_alone() {
        let budget = MemoryBudget::new(100 * MIB);
        let small = budget.reserve(MIB).await.unwrap();
        let mut huge = std::pin::pin!(budget.reserve(10_000 * MIB));
        assert!(futures_poll_once(huge.as_mut()).await.is_none());
        drop(small);
        let huge = huge.await.unwrap();
        assert_eq!(budget.available_bytes(), 0);
        let mut next = std::pin::pin!(budget.reserve(MIB));
        assert!(futures_poll_once(next.as_mut()).await.is_none());
        drop(huge);
        drop(next.await.unwrap());
    }

    /// Polls `future` once: its output if it is ready, `None` if it would wait.
    async fn futures_poll_once<F: std::future::Future + Unpin>(future: F) -> Option<F::Output> {
        let mut future = future;
        std::future::poll_fn(|cx| match std::pin::Pin::new(&mut future).poll(cx) {
            std::task::Poll::Ready(output) => std::task::Poll::Ready(Some(output)),
            std::task::Poll::Pending => std::task::Poll::Ready(None),
        })
        .await
    }

    fn png_with_profile(profile: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut info = png::Info::with_size(1, 1);
        info.icc_profile = Some(profile.to_vec().into());
        info.color_type = png::ColorType::Rgb;
        info.bit_depth = png::BitDepth::Eight;
        let encoder = png::Encoder::with_info(&mut out, info).unwrap();
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(&[1, 2, 3]).unwrap();
        writer.finish().unwrap();
        out
    }

    #[test]
    fn an_inflating_icc_profile_is_found_before_it_is_inflated_whole() {
        let bomb = png_with_profile(&vec![0; 64 * 1024 * 1024]);
        assert!(bomb.len() < 1024 * 1024, "{}", bomb.len());
        assert!(png_icc_profile_too_large(&bomb));
        assert!(!png_icc_profile_too_large(&png_with_profile(&[7; 3000])));
        assert!(!png_icc_profile_too_large(b"GIF89a"));
        assert!(!png_icc_profile_too_large(&bomb[..40]));
    }
}
