//! Pure colour descriptors of an image, computed from a small downscale (a few thousand
//! pixels), so they cost next to nothing beside the variants: the dominant colour and a
//! BlurHash placeholder.

use std::collections::HashMap;

/// BlurHash components across and down: 4x3 suits the usual landscape photo and keeps the
/// hash at 28 characters.
pub const BLURHASH_COMPONENTS: (u32, u32) = (4, 3);

/// Bits kept per channel when bucketing colours. Four (4,096 buckets) groups the shades of
/// one surface in a photo together; five or more splits them by noise and gradients.
const BUCKET_BITS: u32 = 4;

#[derive(Default)]
struct Bucket {
    pixels: u64,
    sums: [u64; 3],
}

/// The mean colour of the most populated bucket of a coarse colour histogram over RGBA
/// pixels. Fully transparent pixels are no colour anyone sees, so they do not count; `None`
/// when every pixel is transparent. Ties go to the lowest bucket, so the answer is stable.
pub fn dominant_color(rgba: &[u8]) -> Option<[u8; 3]> {
    let shift = 8 - BUCKET_BITS;
    let mut buckets: HashMap<u32, Bucket> = HashMap::new();
    for pixel in rgba.chunks_exact(4) {
        if pixel[3] == 0 {
            continue;
        }
        let index = (u32::from(pixel[0]) >> shift) << (2 * BUCKET_BITS)
            | (u32::from(pixel[1]) >> shift) << BUCKET_BITS
            | u32::from(pixel[2]) >> shift;
        let bucket = buckets.entry(index).or_default();
        bucket.pixels += 1;
        for (sum, channel) in bucket.sums.iter_mut().zip(&pixel[..3]) {
            *sum += u64::from(*channel);
        }
    }
    let (_, bucket) = buckets.into_iter().max_by(|(a_index, a), (b_index, b)| {
        a.pixels.cmp(&b.pixels).then_with(|| b_index.cmp(a_index))
    })?;
    let mean = |sum: u64| {
        // The mean of u8 values is at most 255.
        ((sum + bucket.pixels / 2) / bucket.pixels).min(255) as u8
    };
    Some(bucket.sums.map(mean))
}

/// `#rrggbb`, lowercase, as the events and the API carry it.
pub fn hex_color([r, g, b]: [u8; 3]) -> String {
    format!("#{r:02x}{g:02x}{b:02x}")
}

/// The BlurHash of RGBA pixels (alpha is ignored, as BlurHash has none).
pub fn blurhash(width: u32, height: u32, rgba: &[u8]) -> Result<String, blurhash::Error> {
    // The encoder indexes the buffer by the dimensions unchecked and would panic on a short one.
    let expected = width as usize * height as usize * 4;
    if rgba.len() != expected {
        return Err(blurhash::Error::LengthMismatch {
            expected,
            actual: rgba.len(),
        });
    }
    let (x, y) = BLURHASH_COMPONENTS;
    blurhash::encode(x, y, width, height, rgba)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RED: [u8; 4] = [220, 20, 30, 255];
    const BLUE: [u8; 4] = [20, 40, 210, 255];

    fn solid(pixel: [u8; 4], count: usize) -> Vec<u8> {
        pixel.repeat(count)
    }

    #[test]
    fn a_solid_image_is_its_own_colour() {
        let pixels = solid([200, 30, 30, 255], 64 * 40);
        assert_eq!(dominant_color(&pixels), Some([200, 30, 30]));
        assert_eq!(hex_color([200, 30, 30]), "#c81e1e");
    }

    #[test]
    fn the_majority_colour_wins_over_a_large_minority() {
        // 70% red above 30% blue, as rows of a 10x10 image.
        let mut pixels = solid(RED, 70);
        pixels.extend(solid(BLUE, 30));
        assert_eq!(dominant_color(&pixels), Some([220, 20, 30]));
    }

    #[test]
    fn the_answer_is_the_mean_of_the_winning_bucket() {
        // Three shades that share a bucket outnumber one other colour.
        let mut pixels = [[200, 30, 30, 255], [201, 31, 30, 255], [202, 29, 30, 255]].concat();
        pixels.extend(BLUE);
        assert_eq!(dominant_color(&pixels), Some([201, 30, 30]));
    }

    #[test]
    fn transparent_pixels_do_not_count() {
        let mut pixels = solid([0, 0, 0, 0], 90);
        pixels.extend(solid(BLUE, 10));
        assert_eq!(dominant_color(&pixels), Some([20, 40, 210]));
        assert_eq!(dominant_color(&solid([9, 9, 9, 0], 10)), None);
        assert_eq!(dominant_color(&[]), None);
    }

    #[test]
    fn blurhash_has_the_length_of_its_components_and_decodes() {
        let (width, height) = (64, 40);
        let mut pixels = solid(RED, 64 * 28);
        pixels.extend(solid(BLUE, 64 * 12));
        let hash = blurhash(width, height, &pixels).unwrap();
        // Size flag, maximum AC value, 4 characters of DC, 2 per AC component.
        let (x, y) = BLURHASH_COMPONENTS;
        assert_eq!(hash.len(), 1 + 1 + 4 + 2 * (x * y - 1) as usize);
        let decoded = blurhash::decode(&hash, 32, 20, 1.0).unwrap();
        assert_eq!(decoded.len(), 32 * 20 * 4);
        // The top of the placeholder is red, the bottom blue.
        let top = &decoded[16 * 4..16 * 4 + 3];
        let bottom = &decoded[(19 * 32 + 16) * 4..(19 * 32 + 16) * 4 + 3];
        assert!(top[0] > top[2], "top {top:?}");
        assert!(bottom[2] > bottom[0], "bottom {bottom:?}");
    }
}
