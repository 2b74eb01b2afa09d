//! What an upload is, from its bytes alone: the format from the magic bytes (never the
//! client's Content-Type) and the dimensions from the header, without decoding pixels.

use imagesize::ImageType;

use crate::IngestError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sniffed {
    pub format: &'static str,
    pub width: u64,
    pub height: u64,
}

pub fn sniff(bytes: &[u8]) -> Result<Sniffed, IngestError> {
    if bytes.is_empty() {
        return Err(IngestError::EmptyBody);
    }
    // imagesize reads a fixed 12-byte header; pad shorter bodies so a truncated image is still
    // recognised by its magic bytes (and then reported as unreadable, not as not-an-image).
    let mut header = [0u8; 12];
    let head = bytes.len().min(header.len());
    header[..head].copy_from_slice(&bytes[..head]);
    let format = match imagesize::image_type(&header) {
        Ok(ImageType::Jpeg) => "jpeg",
        Ok(ImageType::Png) => "png",
        Ok(ImageType::Webp) => "webp",
        Ok(ImageType::Gif) => "gif",
        Ok(ImageType::Tiff) => "tiff",
        Ok(_) | Err(_) => return Err(IngestError::UnsupportedMediaType),
    };
    let size = imagesize::blob_size(bytes)
        .map_err(|error| IngestError::UnreadableImage(format!("{format}: {error}")))?;
    if size.width == 0 || size.height == 0 {
        return Err(IngestError::UnreadableImage(format!(
            "{format} header says {}x{}",
            size.width, size.height
        )));
    }
    Ok(Sniffed {
        format,
        width: size.width as u64,
        height: size.height as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_text_bodies_are_told_apart() {
        assert!(matches!(sniff(b""), Err(IngestError::EmptyBody)));
        assert!(matches!(
            sniff(b"just some text, renamed to .jpg"),
            Err(IngestError::UnsupportedMediaType)
        ));
    }

    #[test]
    fn reads_png_dimensions_from_the_header_alone() {
        // Signature + IHDR of a 7000x8000 PNG, and nothing else.
        let mut png = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
        png.extend_from_slice(&[0, 0, 0, 13]);
        png.extend_from_slice(b"IHDR");
        png.extend_from_slice(&7000u32.to_be_bytes());
        png.extend_from_slice(&8000u32.to_be_bytes());
        png.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
        let sniffed = sniff(&png).unwrap();
        assert_eq!(
            sniffed,
            Sniffed {
                format: "png",
                width: 7000,
                height: 8000
            }
        );
    }

    #[test]
    fn a_jpeg_cut_before_its_frame_header_is_unreadable() {
        let cut = [
            0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0,
        ];
        assert!(matches!(sniff(&cut), Err(IngestError::UnreadableImage(_))));
    }
}
