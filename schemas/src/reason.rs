//! Why an image failed: the `reason_code` of `ImageFailed`, kept in the read model's
//! `images.failure_code` and shown to clients.

words! {
    /// The stable reason codes of `ImageFailed`. The event carries [`ReasonCode::as_str`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub enum ReasonCode ("reason code") {
        /// Not an image format imgpipe decodes.
        UnsupportedFormat = "unsupported-format",
        /// Over the pixel or side limit, or decoding it would need more memory than one image may.
        ImageTooLarge = "image-too-large",
        /// A format imgpipe decodes, but these bytes do not decode.
        Undecodable = "undecodable",
        /// A variant could not be made from the decoded pixels.
        EncodeFailed = "encode-failed",
        /// The object store has no original under the key the upload named.
        OriginalMissing = "original-missing",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_code_reads_back_as_itself() {
        for code in ReasonCode::ALL {
            assert_eq!(code.as_str().parse::<ReasonCode>().unwrap(), code);
            assert_eq!(code.to_string(), code.as_str());
        }
        assert_eq!(ReasonCode::OriginalMissing.as_str(), "original-missing");
        assert!("gone".parse::<ReasonCode>().is_err());
    }
}
