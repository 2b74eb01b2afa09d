//! Record header names every producer sets, so `rpk topic consume` shows what a record is, and
//! the words those headers carry.

use std::str::FromStr;

use crate::SchemaError;

pub const EVENT_TYPE: &str = "event-type";
pub const CORRELATION_ID: &str = "correlation-id";
pub const CONTENT_TYPE: &str = "content-type";

/// Why a worker gave up on a record: the `dlq-error-class` header of a dead letter. The
/// workers write it ([`ErrorClass::as_str`]), `imgpipe redrive` reads it back
/// ([`ErrorClass::from_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorClass {
    /// The record's bytes are not an event of the contract.
    UndecodableRecord,
    /// The handler panicked on the record (it would on every attempt).
    HandlerPanicked,
    /// Postgres refused the event for its data (the projector).
    DatabaseRejected,
    /// The object store failed or is unreachable (the processor).
    Storage,
    /// The result could not be appended to the event log (the processor).
    EventLog,
    /// The worker was stopping while the record waited for memory or a CPU slot.
    Shutdown,
    /// The record names an object that is not its own image's (the processor).
    ForeignObject,
}

impl ErrorClass {
    pub const ALL: [ErrorClass; 7] = [
        ErrorClass::UndecodableRecord,
        ErrorClass::HandlerPanicked,
        ErrorClass::DatabaseRejected,
        ErrorClass::Storage,
        ErrorClass::EventLog,
        ErrorClass::Shutdown,
        ErrorClass::ForeignObject,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorClass::UndecodableRecord => "undecodable-record",
            ErrorClass::HandlerPanicked => "handler-panicked",
            ErrorClass::DatabaseRejected => "database-rejected",
            ErrorClass::Storage => "storage",
            ErrorClass::EventLog => "event-log",
            ErrorClass::Shutdown => "shutdown",
            ErrorClass::ForeignObject => "foreign-object",
        }
    }
}

impl std::fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for ErrorClass {
    type Err = SchemaError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|class| class.as_str() == text)
            .ok_or_else(|| SchemaError::UnknownWord {
                kind: "error class",
                word: text.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_class_reads_back_as_itself() {
        for class in ErrorClass::ALL {
            assert_eq!(class.as_str().parse::<ErrorClass>().unwrap(), class);
            assert_eq!(class.to_string(), class.as_str());
        }
        assert!("storage-unavailable".parse::<ErrorClass>().is_err());
    }
}
