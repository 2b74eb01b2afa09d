/// Why bytes could not be turned into an [`crate::Event`] or back, or a name into one of the
/// contract's words.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("record is {0} bytes, shorter than the 10-byte single-object header")]
    TooShort(usize),
    #[error("record starts with neither the Avro single-object marker C3 01 nor the Confluent magic byte 00")]
    BadMagic,
    #[error("record was written with an unknown schema (fingerprint {0})")]
    UnknownSchema(String),
    #[error("record names schema id {0}, which the schema registry does not know (or no registry is configured)")]
    UnknownSchemaId(u32),
    #[error("record body is not valid for its schema: {0}")]
    Avro(#[from] apache_avro::Error),
    #[error("record has {0} trailing bytes after the body")]
    TrailingBytes(usize),
    #[error("record decoded but does not match the event model: {0}")]
    Malformed(String),
    /// A word of the contract (a reason code, an error class) that this version does not know.
    #[error("unknown {kind} {word:?}")]
    UnknownWord { kind: &'static str, word: String },
}
