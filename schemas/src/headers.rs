//! Record header names every producer sets, so `rpk topic consume` shows what a record is, and
//! the words those headers carry.

pub const EVENT_TYPE: &str = "event-type";
pub const CORRELATION_ID: &str = "correlation-id";
pub const CONTENT_TYPE: &str = "content-type";

words! {
    /// Why a worker gave up on a record: the `dlq-error-class` header of a dead letter. The
    /// workers write it ([`ErrorClass::as_str`]), `imgpipe redrive` reads it back
    /// (`str::parse`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub enum ErrorClass ("error class") {
        /// The record's bytes are not an event of the contract.
        UndecodableRecord = "undecodable-record",
        /// The handler panicked on the record (it would on every attempt).
        HandlerPanicked = "handler-panicked",
        /// Postgres refused the event for its data (the projector).
        DatabaseRejected = "database-rejected",
        /// The object store failed or is unreachable (the processor).
        Storage = "storage",
        /// The result could not be appended to the event log (the processor).
        EventLog = "event-log",
        /// The worker was stopping while the record waited for memory or a CPU slot.
        Shutdown = "shutdown",
        /// The record names an object that is not its own image's (the processor).
        ForeignObject = "foreign-object",
        /// The read models did not answer (the webhook deliverer).
        Database = "database",
        /// The image's owner is in neither the read model nor ingest's accepted uploads, so
        /// its webhooks cannot be found (the webhook deliverer).
        OwnerUnknown = "owner-unknown",
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
