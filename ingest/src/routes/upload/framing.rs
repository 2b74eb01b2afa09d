//! A watch on a multipart body's framing as it streams, before the parser sees it.
//!
//! multer buffers whatever is not a part's data (the preamble before the first boundary, a
//! part's headers) until it finds where it ends, and searches the whole buffer again for
//! every chunk that arrives: a body of zeros with no boundary, or a part header that never
//! ends, would cost memory and CPU without bound. This watch finds the boundaries and header
//! ends itself, in one pass over each chunk, and refuses a body whose bytes outside the parts'
//! data run past [`MAX_OUTSIDE_DATA`] in a row.

use bytes::Bytes;
use memchr::memmem;

use crate::error::IngestError;

/// The most bytes a preamble, or one part's headers, may take: a `Content-Disposition` and a
/// `Content-Type` fit in a few hundred.
pub(super) const MAX_OUTSIDE_DATA: u64 = 16 * 1024;
const HEADERS_END: &[u8] = b"\r\n\r\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Before the first boundary.
    Preamble,
    /// After a boundary, before the blank line that ends its part's headers.
    Headers,
    /// A part's data, up to the next boundary.
    Data,
}

pub(super) struct Framing {
    /// `--boundary`: what the first boundary is.
    first_delimiter: Vec<u8>,
    /// `\r\n--boundary`: what every later boundary is.
    delimiter: Vec<u8>,
    stage: Stage,
    /// The end of the last chunk, kept so a pattern split across two chunks is still found.
    carry: Vec<u8>,
    /// Bytes of the body seen so far.
    position: u64,
    /// Where the current preamble or headers began.
    outside_since: u64,
    /// The most bytes the whole form may have.
    max_body: u64,
    /// Once the form is refused: how many more bytes are read and dropped, unseen by the parser,
    /// so that a client still sending hears the answer (see `body::drain`).
    drain: Option<u64>,
    drain_limit: u64,
}

impl Framing {
    pub(super) fn new(boundary: &str, max_body: u64, drain_limit: u64) -> Self {
        Self {
            first_delimiter: format!("--{boundary}").into_bytes(),
            delimiter: format!("\r\n--{boundary}").into_bytes(),
            stage: Stage::Preamble,
            carry: Vec::new(),
            position: 0,
            outside_since: 0,
            max_body,
            drain: None,
            drain_limit,
        }
    }

    /// What of the body's next chunk the parser gets: the chunk, or the refusal of the whole
    /// form (too large, or its framing over the bound). After a refusal the body is read on and
    /// dropped (the parser gets empty chunks) up to the drain limit, then cut off.
    pub(super) fn pass(&mut self, chunk: Bytes) -> Result<Bytes, IngestError> {
        if let Some(drained) = &mut self.drain {
            *drained += chunk.len() as u64;
            if *drained > self.drain_limit {
                return Err(IngestError::BodyRead("the refused form was cut off".into()));
            }
            return Ok(Bytes::new());
        }
        let checked = if self.position + chunk.len() as u64 > self.max_body {
            Err(IngestError::PayloadTooLarge {
                limit: self.max_body,
            })
        } else {
            self.check(&chunk)
        };
        match checked {
            Ok(()) => Ok(chunk),
            Err(error) => {
                self.drain = Some(0);
                Err(error)
            }
        }
    }

    /// Looks at the body's next chunk; an error once the bytes outside the parts' data run
    /// over [`MAX_OUTSIDE_DATA`]. Linear: each byte is searched once, plus a carry shorter
    /// than the delimiter.
    pub(super) fn check(&mut self, chunk: &[u8]) -> Result<(), IngestError> {
        let window_start = self.position - self.carry.len() as u64;
        let mut window = std::mem::take(&mut self.carry);
        window.extend_from_slice(chunk);
        self.position += chunk.len() as u64;
        let mut at = 0;
        loop {
            let (pattern, next) = match self.stage {
                Stage::Preamble => (self.first_delimiter.as_slice(), Stage::Headers),
                Stage::Headers => (HEADERS_END, Stage::Data),
                Stage::Data => (self.delimiter.as_slice(), Stage::Headers),
            };
            let Some(found) = memmem::find(&window[at..], pattern) else {
                break;
            };
            let end = at + found + pattern.len();
            self.check_outside(window_start + end as u64)?;
            self.stage = next;
            if next == Stage::Headers {
                self.outside_since = window_start + end as u64;
            }
            at = end;
        }
        self.check_outside(self.position)?;
        let keep = self.delimiter.len() - 1;
        let carry_from = at.max(window.len().saturating_sub(keep));
        window.drain(..carry_from);
        self.carry = window;
        Ok(())
    }

    fn check_outside(&self, up_to: u64) -> Result<(), IngestError> {
        if self.stage != Stage::Data && up_to - self.outside_since > MAX_OUTSIDE_DATA {
            let what = match self.stage {
                Stage::Preamble => "no boundary",
                _ => "a part's headers do not end",
            };
            return Err(IngestError::InvalidMultipart(format!(
                "{what} within the first {MAX_OUTSIDE_DATA} bytes"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(boundary: &str, file: &[u8]) -> Vec<u8> {
        let mut body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\r\n{{\"a\":\"b\"}}\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x\"\r\n\
             Content-Type: image/png\r\n\r\n"
        )
        .into_bytes();
        body.extend_from_slice(file);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        body
    }

    fn check_in_chunks(body: &[u8], size: usize) -> Result<(), IngestError> {
        let mut framing = Framing::new("XyZ", u64::MAX, 0);
        body.chunks(size).try_for_each(|chunk| framing.check(chunk))
    }

    #[test]
    fn a_well_formed_form_passes_however_it_is_cut() {
        // A file far larger than the header budget, with CRs and dashes but no boundary.
        let file: Vec<u8> = (0..200_000u32).map(|i| b"\r\n-X"[i as usize % 4]).collect();
        let body = form("XyZ", &file);
        for size in [1, 2, 3, 7, 16, 1000, 65_536, body.len()] {
            assert!(check_in_chunks(&body, size).is_ok(), "chunks of {size}");
        }
    }

    #[test]
    fn a_body_with_no_boundary_is_refused_at_the_budget() {
        let zeros = vec![0u8; 1024];
        let mut framing = Framing::new("XyZ", u64::MAX, 0);
        let refused_after = (1..)
            .find(|_| framing.check(&zeros).is_err())
            .map(|chunks| chunks * zeros.len() as u64);
        assert_eq!(refused_after, Some(MAX_OUTSIDE_DATA + 1024));
    }

    #[test]
    fn after_a_refusal_the_body_is_drained_unseen_up_to_its_limit() {
        let mut framing = Framing::new("XyZ", u64::MAX, 2048);
        let zeros = Bytes::from(vec![0u8; 1024]);
        let verdicts: Vec<_> = (0..20).map(|_| framing.pass(zeros.clone())).collect();
        let first_refusal = verdicts.iter().position(Result::is_err).unwrap();
        assert!(matches!(
            verdicts[first_refusal],
            Err(IngestError::InvalidMultipart(_))
        ));
        let drained = &verdicts[first_refusal + 1..first_refusal + 3];
        assert!(drained
            .iter()
            .all(|v| v.as_ref().is_ok_and(Bytes::is_empty)));
        assert!(
            verdicts[first_refusal + 3].is_err(),
            "cut off past the drain limit"
        );

        let mut small = Framing::new("XyZ", 1000, 0);
        assert!(matches!(
            small.pass(Bytes::from(form("XyZ", &[7; 2000]))),
            Err(IngestError::PayloadTooLarge { limit: 1000 })
        ));
    }

    #[test]
    fn a_part_header_that_never_ends_is_refused() {
        let mut body =
            b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"\r\nX-Pad: ".to_vec();
        body.resize(body.len() + 2 * MAX_OUTSIDE_DATA as usize, b'a');
        assert!(matches!(
            check_in_chunks(&body, 16),
            Err(IngestError::InvalidMultipart(_))
        ));
        // The same after a first, well-formed part.
        let mut second = form("XyZ", b"data");
        second.truncate(second.len() - 4); // drop the closing "--\r\n"
        second.extend_from_slice(b"\r\nX-Pad: ");
        second.resize(second.len() + 2 * MAX_OUTSIDE_DATA as usize, b'a');
        assert!(check_in_chunks(&second, 4096).is_err());
    }
}
