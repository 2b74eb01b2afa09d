//! What an upload is, from its bytes alone: the format from the magic bytes (never the
//! client's Content-Type) and the dimensions from the header, without decoding pixels, while
//! the body is still streaming in.

use std::io::{BufRead, Read, Seek, SeekFrom};

use imagesize::ImageType;

use crate::error::IngestError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sniffed {
    pub format: &'static str,
    pub width: u64,
    pub height: u64,
}

/// How much of a body's start is kept to find the dimensions. JPEG puts EXIF, XMP and ICC
/// segments before the frame header; 1 MiB covers real cameras' files with room to spare.
pub const HEAD_LIMIT: usize = 1024 * 1024;
/// How much is kept from where a TIFF's first IFD starts: its entries, with the width and
/// height inline, take a few hundred bytes.
const IFD_WINDOW: usize = 64 * 1024;
const MAGIC_LEN: usize = 12;

/// Sniffs a complete body.
pub fn sniff(bytes: &[u8]) -> Result<Sniffed, IngestError> {
    let mut sniffer = Sniffer::default();
    match sniffer.feed(bytes)? {
        Some(sniffed) => Ok(sniffed),
        None => sniffer.finish(),
    }
}

/// The format from a body's first bytes. `Ok(None)`: too few bytes yet to tell, and
/// `complete` says none are coming.
pub fn format_of(head: &[u8], complete: bool) -> Result<Option<&'static str>, IngestError> {
    if head.is_empty() && complete {
        return Err(IngestError::EmptyBody);
    }
    if head.len() < MAGIC_LEN && !complete {
        return Ok(None);
    }
    // imagesize reads a fixed 12-byte header; pad shorter bodies so a truncated image is still
    // recognised by its magic bytes (and then reported as unreadable, not as not-an-image).
    let mut magic = [0u8; MAGIC_LEN];
    let len = head.len().min(MAGIC_LEN);
    magic[..len].copy_from_slice(&head[..len]);
    match imagesize::image_type(&magic) {
        Ok(ImageType::Jpeg) => Ok(Some("jpeg")),
        Ok(ImageType::Png) => Ok(Some("png")),
        Ok(ImageType::Webp) => Ok(Some("webp")),
        Ok(ImageType::Gif) => Ok(Some("gif")),
        Ok(ImageType::Tiff) => Ok(Some("tiff")),
        Ok(_) | Err(_) => Err(IngestError::UnsupportedMediaType),
    }
}

/// Finds an image's format and dimensions in a body fed to it piece by piece, keeping only
/// the body's head (and, for a TIFF, the bytes where its first IFD starts, which encoders
/// often write after the pixels).
#[derive(Debug, Default)]
pub struct Sniffer {
    head: Vec<u8>,
    position: u64,
    ifd: Option<Window>,
    found: Option<Sniffed>,
    /// How many bytes of the head and of the TIFF window were kept at the last look for the
    /// header: past [`SMALL`], the next look waits until one of them has doubled (or nothing
    /// more will be kept), so a head that arrives in many tiny pieces is parsed a logarithmic
    /// number of times, not once per piece.
    looked_at: (usize, usize),
    /// The bytes looked through so far, summed over the looks: what a test counts.
    examined: u64,
}

/// Up to this many bytes kept, every piece brings a look: cheap, and a small header is found
/// the moment it is complete.
const SMALL: usize = 1024;

/// Whether a part kept, `len` bytes long now, has grown enough since the last look at `looked`.
fn due(len: usize, looked: usize) -> bool {
    len > looked && (len <= SMALL || len >= 2 * looked)
}

#[derive(Debug)]
struct Window {
    start: u64,
    bytes: Vec<u8>,
}

impl Sniffer {
    /// Feeds the next bytes of the body; the answer once the header has been seen.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Option<Sniffed>, IngestError> {
        if let Some(found) = self.found {
            return Ok(Some(found));
        }
        let Some(format) = self.take(chunk)? else {
            return Ok(None);
        };
        let kept = self.kept();
        let (head, window) = self.looked_at;
        if !due(kept.0, head) && !due(kept.1, window) && self.may_still_find() {
            return Ok(None);
        }
        self.looked_at = kept;
        match self.dimensions(format) {
            Ok(sniffed) => {
                self.found = Some(sniffed);
                Ok(Some(sniffed))
            }
            Err(_) if self.may_still_find() => Ok(None),
            Err(error) => Err(unreadable(format, &error)),
        }
    }

    /// The answer for a body that has ended.
    pub fn finish(&mut self) -> Result<Sniffed, IngestError> {
        if let Some(found) = self.found {
            return Ok(found);
        }
        let format = format_of(&self.head, true)?.unwrap_or("image");
        self.dimensions(format)
            .map_err(|error| unreadable(format, &error))
    }

    fn take(&mut self, chunk: &[u8]) -> Result<Option<&'static str>, IngestError> {
        let start = self.position;
        self.position += chunk.len() as u64;
        let room = HEAD_LIMIT.saturating_sub(self.head.len()).min(chunk.len());
        self.head.extend_from_slice(&chunk[..room]);
        let Some(format) = format_of(&self.head, false)? else {
            return Ok(None);
        };
        if format == "tiff" && self.ifd.is_none() {
            self.ifd = tiff_ifd_offset(&self.head).map(|start| Window {
                start,
                bytes: Vec::new(),
            });
        }
        if let Some(window) = &mut self.ifd {
            let wanted_end = window.start + IFD_WINDOW as u64;
            let have_end = window.start + window.bytes.len() as u64;
            let from = have_end.max(start);
            let to = wanted_end.min(self.position);
            if from < to && from == have_end {
                let offset = (from - start) as usize;
                window
                    .bytes
                    .extend_from_slice(&chunk[offset..offset + (to - from) as usize]);
            }
        }
        Ok(Some(format))
    }

    /// The bytes kept so far: of the head, and of the TIFF directory's window.
    fn kept(&self) -> (usize, usize) {
        let window = self.ifd.as_ref().map_or(0, |window| window.bytes.len());
        (self.head.len(), window)
    }

    fn dimensions(&mut self, format: &'static str) -> Result<Sniffed, imagesize::ImageError> {
        let (head, window) = self.kept();
        self.examined += (head + window) as u64;
        // Read in place: a BufReader would copy its whole buffer again after every seek, and
        // a JPEG head is a seek per segment.
        let reader = Sparse {
            head: &self.head,
            window: self.ifd.as_ref(),
            position: 0,
        };
        let size = imagesize::reader_size(reader)?;
        if size.width == 0 || size.height == 0 {
            return Err(imagesize::ImageError::CorruptedImage);
        }
        Ok(Sniffed {
            format,
            width: size.width as u64,
            height: size.height as u64,
        })
    }

    /// Whether more of the body could still bring the header.
    fn may_still_find(&self) -> bool {
        if self.head.len() < HEAD_LIMIT {
            return true;
        }
        self.ifd
            .as_ref()
            .is_some_and(|window| window.bytes.len() < IFD_WINDOW)
    }
}

fn unreadable(format: &str, error: &dyn std::fmt::Display) -> IngestError {
    IngestError::UnreadableImage(format!("{format}: {error}"))
}

/// Where a (classic, not Big) TIFF's first IFD starts, from its 8-byte header.
fn tiff_ifd_offset(head: &[u8]) -> Option<u64> {
    let offset: [u8; 4] = head.get(4..8)?.try_into().ok()?;
    match head.get(..4)? {
        b"II*\0" => Some(u64::from(u32::from_le_bytes(offset))),
        b"MM\0*" => Some(u64::from(u32::from_be_bytes(offset))),
        _ => None,
    }
}

/// The parts of a body kept while sniffing, read as if they were the whole file: bytes that
/// were not kept read as the end of the file, which imagesize reports as a truncated header.
struct Sparse<'a> {
    head: &'a [u8],
    window: Option<&'a Window>,
    position: u64,
}

impl<'a> Sparse<'a> {
    /// The kept bytes from the current position on, up to the end of the run they are in.
    fn available(&self) -> &'a [u8] {
        let position = self.position;
        if position < self.head.len() as u64 {
            return &self.head[position as usize..];
        }
        match self.window {
            Some(window)
                if position >= window.start
                    && position < window.start + window.bytes.len() as u64 =>
            {
                &window.bytes[(position - window.start) as usize..]
            }
            _ => &[],
        }
    }
}

impl Read for Sparse<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let available = self.available();
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.position += n as u64;
        Ok(n)
    }
}

impl BufRead for Sparse<'_> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        Ok(self.available())
    }

    fn consume(&mut self, amount: usize) {
        self.position += amount as u64;
    }
}

impl Seek for Sparse<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::Current(delta) => self.position.checked_add_signed(delta),
            SeekFrom::End(_) => None,
        };
        self.position = target.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::Unsupported, "seek outside the body")
        })?;
        Ok(self.position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_text_bodies_are_told_apart() {
        assert!(matches!(
            Sniffer::default().finish(),
            Err(IngestError::EmptyBody)
        ));
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

    fn png_header(width: u32, height: u32) -> Vec<u8> {
        let mut png = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
        png.extend_from_slice(&[0, 0, 0, 13]);
        png.extend_from_slice(b"IHDR");
        png.extend_from_slice(&width.to_be_bytes());
        png.extend_from_slice(&height.to_be_bytes());
        png
    }

    #[test]
    fn a_body_fed_in_pieces_is_sniffed_once_its_header_is_there() {
        let png = png_header(640, 480);
        let mut sniffer = Sniffer::default();
        assert!(matches!(sniffer.feed(&png[..4]), Ok(None)));
        assert!(matches!(sniffer.feed(&png[4..14]), Ok(None)));
        let sniffed = sniffer.feed(&png[14..]).unwrap().unwrap();
        assert_eq!(
            (sniffed.format, sniffed.width, sniffed.height),
            ("png", 640, 480)
        );

        let mut cut = Sniffer::default();
        assert!(matches!(cut.feed(&png[..14]), Ok(None)));
        assert!(matches!(cut.finish(), Err(IngestError::UnreadableImage(_))));

        // Text is refused from its first bytes, without waiting for the rest.
        assert!(matches!(
            Sniffer::default().feed(b"hello, this is not an image"),
            Err(IngestError::UnsupportedMediaType)
        ));
    }

    #[test]
    fn a_head_that_never_yields_a_header_is_unreadable_at_the_limit() {
        // A JPEG whose segments run on and on: no frame header in the head.
        let mut jpeg = vec![0xFF, 0xD8];
        while jpeg.len() < HEAD_LIMIT + 70_000 {
            jpeg.extend_from_slice(&[0xFF, 0xE1, 0xFF, 0xFF]);
            jpeg.resize(jpeg.len() + 0xFFFF - 2, 0);
        }
        let mut sniffer = Sniffer::default();
        let verdicts: Vec<_> = jpeg.chunks(64 * 1024).map(|c| sniffer.feed(c)).collect();
        assert!(
            matches!(verdicts.last(), Some(Err(IngestError::UnreadableImage(_)))),
            "{verdicts:?}"
        );
    }

    #[test]
    fn a_tiff_whose_directory_follows_the_pixels_is_sniffed_from_the_stream() {
        let image = image::RgbImage::from_pixel(900, 700, image::Rgb([10, 20, 30]));
        let mut tiff = std::io::Cursor::new(Vec::new());
        image.write_to(&mut tiff, image::ImageFormat::Tiff).unwrap();
        let tiff = tiff.into_inner();
        assert!(
            tiff_ifd_offset(&tiff).unwrap() > HEAD_LIMIT as u64,
            "IFD after the head"
        );
        let mut sniffer = Sniffer::default();
        let mut found = None;
        for chunk in tiff.chunks(50_000) {
            if let Some(sniffed) = sniffer.feed(chunk).unwrap() {
                found = Some(sniffed);
            }
        }
        let sniffed = found.unwrap();
        assert_eq!(
            (sniffed.format, sniffed.width, sniffed.height),
            ("tiff", 900, 700)
        );
    }

    #[test]
    fn a_head_of_tiny_pieces_is_looked_at_a_logarithmic_number_of_times() {
        // Thousands of empty APP1 segments before the frame header, sent 16 bytes at a time.
        let mut jpeg = vec![0xFF, 0xD8];
        for _ in 0..20_000 {
            jpeg.extend_from_slice(&[0xFF, 0xE1, 0x00, 0x02]);
        }
        // SOF0: length 17, precision 8, height 480, width 640, 3 components.
        jpeg.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x11, 0x08, 0x01, 0xE0, 0x02, 0x80, 0x03]);
        jpeg.extend_from_slice(&[0; 9]);
        let mut sniffer = Sniffer::default();
        let mut found = None;
        for chunk in jpeg.chunks(16) {
            if let Some(sniffed) = sniffer.feed(chunk).unwrap() {
                found = Some(sniffed);
                break;
            }
        }
        let found = found.map_or_else(|| sniffer.finish(), Ok).unwrap();
        assert_eq!((found.width, found.height), (640, 480));
        // 80 kB in 5,000 pieces: looking through the whole head for each piece would be
        // 200 MB; looking again only when it has doubled is a few times the head.
        assert!(
            sniffer.examined <= 8 * jpeg.len() as u64,
            "{} bytes looked through for an {}-byte head",
            sniffer.examined,
            jpeg.len()
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
