//! `imgpipe redrive`: put dead letters back on the topic they came from, byte for byte. The
//! run itself is [`imgpipe_infra::redrive`] (the console's operator page runs it too); this is
//! its command line: options, progress on stderr, the summary as a table or JSON.

use std::io::Write;

use imgpipe_infra::redrive::Selection;
pub use imgpipe_infra::redrive::{redrive, ClassCounts, Options, Summary};
use imgpipe_infra::registry::{EventCodec, RegistryConfig};
use imgpipe_infra::{FromEnv, KafkaConfig};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::error::AdminError;
use crate::progress::LineSpinner;
use crate::report::Report;

/// `imgpipe redrive` with the deployment's configuration: progress lines to `progress`, the
/// summary on stdout (one JSON object with `json`).
pub async fn run(
    options: &Options,
    json: bool,
    progress: &mut (dyn Write + Send),
) -> Result<Summary, AdminError> {
    let config = KafkaConfig::from_env()?;
    let codec = EventCodec::reader(&RegistryConfig::from_env()?);
    let summary = redrive(&config, &codec, options, progress).await?;
    crate::report::print(&summary, json)?;
    Ok(summary)
}

/// The options of a run over all dead letters, or one image's.
pub fn options(image: Option<Uuid>, dry_run: bool, progress_every: u64) -> Options {
    Options::new(
        image.map_or(Selection::All, Selection::Image),
        dry_run,
        progress_every,
    )
}

/// `imgpipe replay redrive`: [`run`] with its progress as a spinner on stderr.
pub async fn run_with_spinner(
    image: Option<Uuid>,
    dry_run: bool,
    json: bool,
) -> Result<Summary, AdminError> {
    let mut spinner = LineSpinner::new(true);
    let summary = run(&options(image, dry_run, 1), json, &mut spinner).await?;
    spinner.finish();
    Ok(summary)
}

impl Report for Summary {
    fn to_json(&self) -> Value {
        let classes: serde_json::Map<String, Value> = self
            .by_error_class
            .iter()
            .map(|(class, counts)| {
                (
                    class.clone(),
                    json!({ "scanned": counts.scanned, "moved": counts.moved }),
                )
            })
            .collect();
        json!({
            "dry_run": self.dry_run,
            "image": self.image,
            "scanned": self.scanned,
            "moved": self.moved,
            "skipped_by_filter": self.skipped_by_filter,
            "skipped_duplicates": self.skipped_duplicates,
            "skipped_without_origin": self.skipped_without_origin,
            "by_error_class": classes,
            "committed": self.committed,
            "moved_behind": self.moved_behind,
            "records": serde_json::to_value(&self.records).unwrap_or_default(),
        })
    }

    fn write_table(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let verb = if self.dry_run { "would move" } else { "moved" };
        for record in &self.records {
            writeln!(
                out,
                "{verb} {}/{}@{} -> {}/{}@{} key={} class={} group={}",
                record.dlq_topic,
                record.dlq_partition,
                record.dlq_offset,
                record.original_topic.as_deref().unwrap_or_default(),
                record.original_partition.as_deref().unwrap_or("?"),
                record.original_offset.as_deref().unwrap_or("?"),
                record.key.as_deref().unwrap_or("-"),
                record.error_class.as_deref().unwrap_or_default(),
                record.consumer_group.as_deref().unwrap_or("-"),
            )?;
        }
        if self.dry_run {
            writeln!(out, "dry run: nothing was moved or committed")?;
        }
        let rows = [
            ("scanned", self.scanned),
            (verb, self.moved),
            ("skipped, other images", self.skipped_by_filter),
            ("skipped, duplicates", self.skipped_duplicates),
            ("skipped, no origin", self.skipped_without_origin),
            ("moved, behind others", self.moved_behind),
        ];
        for (label, count) in rows {
            writeln!(out, "{label:<24}{count:>8}")?;
        }
        if !self.by_error_class.is_empty() {
            writeln!(out, "{:<24}{:>8}{:>12}", "error class", "scanned", verb)?;
            for (class, counts) in &self.by_error_class {
                writeln!(out, "{class:<24}{:>8}{:>12}", counts.scanned, counts.moved)?;
            }
        }
        writeln!(
            out,
            "position committed: {}",
            if self.committed { "yes" } else { "no" }
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn summary(dry_run: bool) -> Summary {
        let mut by_error_class = BTreeMap::new();
        by_error_class.insert(
            "undecodable-record".to_string(),
            ClassCounts {
                scanned: 2,
                moved: 1,
            },
        );
        Summary {
            dry_run,
            scanned: 2,
            moved: 1,
            skipped_duplicates: 1,
            by_error_class,
            committed: !dry_run,
            ..Summary::default()
        }
    }

    #[test]
    fn the_table_says_what_moved_or_would_move() {
        let mut out = Vec::new();
        summary(true).write_table(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("dry run: nothing was moved"), "{text}");
        assert!(text.contains("would move"), "{text}");
        assert!(text.contains("position committed: no"), "{text}");

        let mut out = Vec::new();
        summary(false).write_table(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("would move"), "{text}");
        assert!(text.contains("undecodable-record"), "{text}");
        assert!(text.contains("position committed: yes"), "{text}");
    }

    #[test]
    fn the_json_counts_by_error_class() {
        let json = summary(false).to_json();
        assert_eq!(json["moved"], 1);
        assert_eq!(json["skipped_duplicates"], 1);
        assert_eq!(json["by_error_class"]["undecodable-record"]["scanned"], 2);
        assert_eq!(json["committed"], true);
    }
}
