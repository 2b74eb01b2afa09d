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

/// How much of a body is read, at most, to find the dimensions. JPEG puts EXIF, XMP and ICC
/// segments before the frame header; 1 MiB covers real cameras' files with room to spare.
pub const HEAD_LIMIT: usize = 1024 * 1024;

/// Sniffs a complete body.
pub fn sniff(bytes: &[u8]) -> Result<Sniffed, IngestError> {
    match sniff_head(bytes, true)? {
        Some(sniffed) => Ok(sniffed),
        None => Err(IngestError::UnreadableImage(
            "the header is incomplete".into(),
        )),
    }
}

/// Sniffs the first bytes of a body that may still be arriving. `Ok(None)` means "read more":
/// the head is too short to tell, and `complete` says no more is coming.
pub fn sniff_head(head: &[u8], complete: bool) -> Result<Option<Sniffed>, IngestError> {
    const MAGIC_LEN: usize = 12;
    if head.is_empty() {
        return if complete {
            Err(IngestError::EmptyBody)
        } else {
            Ok(None)
        };
    }
    if head.len() < MAGIC_LEN && !complete {
        return Ok(None);
    }
    // imagesize reads a fixed 12-byte header; pad shorter bodies so a truncated image is still
    // recognised by its magic bytes (and then reported as unreadable, not as not-an-image).
    let mut magic = [0u8; MAGIC_LEN];
    let len = head.len().min(MAGIC_LEN);
    magic[..len].copy_from_slice(&head[..len]);
    let format = match imagesize::image_type(&magic) {
        Ok(ImageType::Jpeg) => "jpeg",
        Ok(ImageType::Png) => "png",
        Ok(ImageType::Webp) => "webp",
        Ok(ImageType::Gif) => "gif",
        Ok(ImageType::Tiff) => "tiff",
        Ok(_) | Err(_) => return Err(IngestError::UnsupportedMediaType),
    };
    let size = match imagesize::blob_size(head) {
        Ok(size) => size,
        // Most likely the header goes on past what has arrived.
        Err(_) if !complete && head.len() < HEAD_LIMIT => return Ok(None),
        Err(error) => {
            return Err(IngestError::UnreadableImage(format!("{format}: {error}")));
        }
    };
    if size.width == 0 || size.height == 0 {
        return Err(IngestError::UnreadableImage(format!(
            "{format} header says {}x{}",
            size.width, size.height
        )));
    }
    Ok(Some(Sniffed {
        format,
        width: size.width as u64,
        height: size.height as u64,
    }))
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
    fn a_partial_head_asks_for_more_until_the_header_is_there() {
        let mut png = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
        png.extend_from_slice(&[0, 0, 0, 13]);
        png.extend_from_slice(b"IHDR");
        png.extend_from_slice(&640u32.to_be_bytes());
        png.extend_from_slice(&480u32.to_be_bytes());
        assert!(matches!(sniff_head(&png[..4], false), Ok(None)));
        assert!(matches!(sniff_head(&png[..14], false), Ok(None)));
        assert!(matches!(
            sniff_head(&png[..14], true),
            Err(IngestError::UnreadableImage(_))
        ));
        let sniffed = sniff_head(&png, false).unwrap().unwrap();
        assert_eq!((sniffed.width, sniffed.height), (640, 480));
        // Text is refused from its first bytes, without waiting for the rest.
        assert!(matches!(
            sniff_head(b"hello, this is not an image", false),
            Err(IngestError::UnsupportedMediaType)
        ));
    }

    #[test]
    fn a_head_that_never_yields_a_header_is_unreadable_at_the_limit() {
        // A JPEG whose first segment claims to run on and on: no frame header in the head.
        let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xE1, 0xFF, 0xFF];
        jpeg.resize(HEAD_LIMIT, 0);
        assert!(matches!(
            sniff_head(&jpeg, false),
            Err(IngestError::UnreadableImage(_))
        ));
    }

    #[test]
    fn a_jpeg_cut_before_its_frame_header_is_unreadable() {
        let cut = [
            0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0,
        ];
        assert!(matches!(sniff(&cut), Err(IngestError::UnreadableImage(_))));
    }
}
