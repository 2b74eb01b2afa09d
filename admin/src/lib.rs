//! The `imgpipe` operator command as a library: `main.rs` parses the command line and calls
//! in here, and the end-to-end tests call the same functions against the real stack.

pub mod error;
pub mod events;
pub mod keys;
pub mod orphans;
pub mod progress;
pub mod rebuild;
pub mod redrive;
pub mod replay;
pub mod report;
pub mod setup;

pub use error::AdminError;
