//! How a command prints what it did: one JSON object (`--json`, for scripts) or a table for
//! people, on stdout. Progress goes to stderr, so piping the JSON stays clean.

use std::io::Write;

use serde_json::Value;

use crate::AdminError;

/// A command's summary, printable both ways.
pub trait Report {
    fn to_json(&self) -> Value;
    fn write_table(&self, out: &mut dyn Write) -> std::io::Result<()>;
}

/// Prints `report` on stdout: as one JSON line with `json`, else as its table.
pub fn print(report: &impl Report, json: bool) -> Result<(), AdminError> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", report.to_json())?;
    } else {
        report.write_table(&mut out)?;
    }
    Ok(())
}
