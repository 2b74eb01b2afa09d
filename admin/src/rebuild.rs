//! `imgpipe rebuild`: the read models replayed from the log into new tables and swapped in,
//! with a progress bar on stderr and a summary on stdout.

use std::io::Write;
use std::time::Duration;

use imgpipe_projector::batch::ApplyMode;
use imgpipe_projector::rebuild::{self, Phase, Progress, Summary};
use indicatif::{ProgressBar, ProgressStyle};

use crate::error::AdminError;

/// Draws the rebuild's progress on stderr (hidden when stderr is not a terminal).
struct Bar {
    bar: ProgressBar,
}

impl Bar {
    fn new() -> Self {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {msg:<10} [{elapsed_precise}] {wide_bar} {pos}/{len} records ({per_sec}, eta {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        Self { bar }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Progress for Bar {
    fn phase(&mut self, phase: Phase) {
        let name = match phase {
            Phase::Preparing => "preparing",
            Phase::Replaying => "replaying",
            Phase::Swapping => "swapping",
            Phase::Dropping => "dropping",
        };
        self.bar.set_message(name);
    }

    fn records(&mut self, done: u64, total: u64) {
        self.bar.set_length(total.max(done));
        self.bar.set_position(done);
    }
}

/// `imgpipe rebuild` (and `imgpipe replay rebuild`), with the projector's configuration from
/// the environment: the progress on stderr, the summary on stdout (one JSON object with
/// `json`). `per_event` applies one event at a time instead of each batch in bulk.
pub async fn run(dry_run: bool, json: bool, per_event: bool) -> Result<Summary, AdminError> {
    let config = imgpipe_projector::Config::from_env()?;
    let options = rebuild::Options {
        dry_run,
        apply: if per_event {
            ApplyMode::PerEvent
        } else {
            ApplyMode::Bulk
        },
        ..Default::default()
    };
    let mut bar = Bar::new();
    let result = rebuild::run(&config, &options, &mut bar).await;
    bar.finish();
    let summary = result.map_err(AdminError::Rebuilding)?;
    crate::report::print(&Rebuilt(&summary), json)?;
    Ok(summary)
}

/// The projector's rebuild summary, as `imgpipe rebuild` prints it.
struct Rebuilt<'a>(&'a Summary);

impl crate::report::Report for Rebuilt<'_> {
    fn to_json(&self) -> serde_json::Value {
        // A struct of numbers, strings and string-keyed maps: serializing it cannot fail.
        serde_json::to_value(self.0).unwrap_or_default()
    }

    fn write_table(&self, out: &mut dyn Write) -> std::io::Result<()> {
        write_table(self.0, out)
    }
}

fn write_table(summary: &Summary, out: &mut dyn Write) -> std::io::Result<()> {
    let outcome = if summary.swapped {
        "rebuilt and swapped in"
    } else if summary.dry_run {
        "rebuilt and dropped (dry run)"
    } else {
        "not swapped"
    };
    writeln!(
        out,
        "schema {}: {outcome} in {:.1} s (applied {})",
        summary.schema,
        summary.seconds,
        match summary.apply {
            ApplyMode::Bulk => "in bulk",
            ApplyMode::PerEvent => "one event at a time",
        }
    )?;
    writeln!(
        out,
        "records replayed: {} (duplicates {})",
        summary.records, summary.duplicates
    )?;
    for (event_type, count) in &summary.events_applied {
        writeln!(out, "  applied {event_type:<20} {count:>9}")?;
    }
    for (class, count) in &summary.rejected {
        writeln!(out, "  rejected {class:<19} {count:>9}")?;
    }
    writeln!(out, "partition  records  position")?;
    for (partition, p) in &summary.partitions {
        writeln!(out, "{partition:>9} {:>8} {:>9}", p.records, p.position)?;
    }
    writeln!(out, "table                   before    after")?;
    for (table, rows) in &summary.tables {
        writeln!(out, "{table:<20} {:>9} {:>8}", rows.before, rows.after)?;
    }
    Ok(())
}
