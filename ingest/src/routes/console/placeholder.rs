//! `GET /console/placeholder.bmp?hash=...`: an image's BlurHash drawn as a tiny bitmap (8x6),
//! which the browser scales up smoothly: the gallery's placeholder until a thumbnail loads, with
//! no JavaScript. The answer depends only on the hash, so it is cached for good.

use axum::extract::Query;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

const WIDTH: u32 = 8;
const HEIGHT: u32 = 6;
/// A BlurHash of up to 9x9 components is 2 + 4 + 2 * 80 = 166 characters; refuse longer.
const MAX_HASH: usize = 166;

#[derive(Debug, Deserialize)]
pub(super) struct PlaceholderQuery {
    hash: String,
}

pub(super) async fn placeholder(Query(query): Query<PlaceholderQuery>) -> Response {
    if query.hash.len() > MAX_HASH {
        return StatusCode::BAD_REQUEST.into_response();
    }
    match blurhash::decode(&query.hash, WIDTH, HEIGHT, 1.0) {
        Ok(rgba) => (
            [
                (CONTENT_TYPE, "image/bmp"),
                (CACHE_CONTROL, "public, max-age=31536000, immutable"),
            ],
            bmp(&rgba, WIDTH, HEIGHT),
        )
            .into_response(),
        Err(_) => StatusCode::BAD_REQUEST.into_response(),
    }
}

/// RGBA pixels as a 24-bit BMP (bottom-up rows, BGR, each row padded to 4 bytes).
fn bmp(rgba: &[u8], width: u32, height: u32) -> Vec<u8> {
    let row = (width * 3).div_ceil(4) * 4;
    let pixels = row * height;
    let mut out = Vec::with_capacity(54 + pixels as usize);
    out.extend_from_slice(b"BM");
    out.extend_from_slice(&(54 + pixels).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&54u32.to_le_bytes());
    out.extend_from_slice(&40u32.to_le_bytes());
    out.extend_from_slice(&width.to_le_bytes());
    out.extend_from_slice(&height.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&24u16.to_le_bytes());
    out.extend_from_slice(&[0; 4]); // no compression
    out.extend_from_slice(&pixels.to_le_bytes());
    out.extend_from_slice(&[0; 16]); // resolution, palette
    for y in (0..height).rev() {
        let start = (y * width * 4) as usize;
        for pixel in rgba[start..start + (width * 4) as usize].chunks_exact(4) {
            out.extend_from_slice(&[pixel[2], pixel[1], pixel[0]]);
        }
        out.resize(out.len() + (row - width * 3) as usize, 0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bitmap_has_its_header_and_every_row_padded() {
        let rgba: Vec<u8> = (0..3 * 2).flat_map(|i| [i as u8, 10, 20, 255]).collect();
        let image = bmp(&rgba, 3, 2);
        assert_eq!(&image[..2], b"BM");
        // 3 pixels of 3 bytes, padded to 12 per row, 2 rows.
        assert_eq!(image.len(), 54 + 24);
        assert_eq!(
            u32::from_le_bytes([image[2], image[3], image[4], image[5]]),
            78
        );
        // The bottom row first: pixel (0, 1) is the fourth, BGR.
        assert_eq!(&image[54..57], &[20, 10, 3]);
    }
}
