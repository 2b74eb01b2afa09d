//! Why an image failed: the `reason_code` of `ImageFailed`, kept in the read model's
//! `images.failure_code` and shown to clients.

use std::str::FromStr;

use crate::SchemaError;

/// The stable reason codes of `ImageFailed`. The event carries [`ReasonCode::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReasonCode {
    /// Not an image format imgpipe decodes.
    UnsupportedFormat,
    /// Over the pixel or side limit, or decoding it would need more memory than one image may.
    ImageTooLarge,
    /// A format imgpipe decodes, but these bytes do not decode.
    Undecodable,
    /// A variant could not be made from the decoded pixels.
    EncodeFailed,
    /// The object store has no original under the key the upload named.
    OriginalMissing,
}

impl ReasonCode {
    pub const ALL: [ReasonCode; 5] = [
        ReasonCode::UnsupportedFormat,
        ReasonCode::ImageTooLarge,
        ReasonCode::Undecodable,
        ReasonCode::EncodeFailed,
        ReasonCode::OriginalMissing,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            ReasonCode::UnsupportedFormat => "unsupported-format",
            ReasonCode::ImageTooLarge => "image-too-large",
            ReasonCode::Undecodable => "undecodable",
            ReasonCode::EncodeFailed => "encode-failed",
            ReasonCode::OriginalMissing => "original-missing",
        }
    }
}

impl std::fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for ReasonCode {
    type Err = SchemaError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|code| code.as_str() == text)
            .ok_or_else(|| SchemaError::UnknownWord {
                kind: "reason code",
                word: text.to_string(),
            })
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
