//! What a reprocess run did: counts, one line per selected image, as a table or JSON.

use std::collections::BTreeMap;
use std::io::Write;

use serde_json::{json, Value};

use crate::report::Report;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use super::log::{LoggedImage, Outcome};
use super::Skip;

/// One selected image and what became of it.
#[derive(Debug, Clone)]
pub struct ImageLine {
    pub image: LoggedImage,
    pub skipped: Option<Skip>,
    /// The `ReprocessRequested` appended for it.
    pub request: Option<Uuid>,
    /// With `--wait`: the request's result.
    pub result: Option<Outcome>,
}

/// What a run did (or, with `--dry-run`, would have done).
#[derive(Debug)]
pub struct Summary {
    pub dry_run: bool,
    pub selection: String,
    pub spec_version: i32,
    /// Every request of the run carries it, and so do their results.
    pub correlation_id: String,
    pub records_scanned: u64,
    pub undecodable_records: u64,
    pub images_in_log: u64,
    pub images: Vec<ImageLine>,
    pub waited: bool,
}

impl Summary {
    pub fn requested(&self) -> u64 {
        self.images.iter().filter(|l| l.skipped.is_none()).count() as u64
    }

    /// Whether the run appended any request (the correlation id then names them).
    pub fn appended(&self) -> bool {
        self.images.iter().any(|l| l.request.is_some())
    }

    pub fn skipped(&self) -> BTreeMap<Skip, u64> {
        let mut counts = BTreeMap::new();
        for skip in self.images.iter().filter_map(|l| l.skipped) {
            *counts.entry(skip).or_default() += 1;
        }
        counts
    }

    fn results(&self) -> (u64, u64, u64) {
        let requested = self.images.iter().filter(|l| l.request.is_some());
        let (mut processed, mut failed, mut awaiting) = (0, 0, 0);
        for line in requested {
            match line.result {
                Some(Outcome::Processed { .. }) => processed += 1,
                Some(Outcome::Failed { .. }) => failed += 1,
                None => awaiting += 1,
            }
        }
        (processed, failed, awaiting)
    }
}

fn outcome_json(outcome: Option<&Outcome>) -> Value {
    match outcome {
        Some(Outcome::Processed { spec_version }) => {
            json!({ "status": "processed", "spec_version": spec_version })
        }
        Some(Outcome::Failed { reason_code }) => {
            json!({ "status": "failed", "reason_code": reason_code })
        }
        None => Value::Null,
    }
}

impl Report for Summary {
    fn to_json(&self) -> Value {
        let skipped: serde_json::Map<String, Value> = self
            .skipped()
            .into_iter()
            .map(|(skip, n)| (skip.as_str().to_string(), json!(n)))
            .collect();
        let images: Vec<Value> = self
            .images
            .iter()
            .map(|line| {
                json!({
                    "image_id": line.image.image_id,
                    "partition": line.image.partition,
                    "upload_offset": line.image.upload_offset,
                    "upload_timestamp_ms": line.image.uploaded_at_ms,
                    "uploaded_at": line
                        .image
                        .history
                        .image
                        .uploaded_at
                        .format(&Rfc3339)
                        .unwrap_or_default(),
                    "previous": outcome_json(line.image.latest().as_ref()),
                    "action": match (line.skipped, self.dry_run) {
                        (Some(_), _) => "skipped",
                        (None, true) => "would-request",
                        (None, false) => "requested",
                    },
                    "skipped": line.skipped.map(Skip::as_str),
                    "request_event_id": line.request,
                    "result": outcome_json(line.result.as_ref()),
                })
            })
            .collect();
        let mut summary = json!({
            "dry_run": self.dry_run,
            "selection": self.selection,
            "spec_version": self.spec_version,
            "correlation_id": self.appended().then_some(&self.correlation_id),
            "records_scanned": self.records_scanned,
            "undecodable_records": self.undecodable_records,
            "images_in_log": self.images_in_log,
            "selected": self.images.len(),
            "requested": self.requested(),
            "skipped": skipped,
            "images": images,
        });
        if self.waited {
            let (processed, failed, awaiting) = self.results();
            summary["results"] =
                json!({ "processed": processed, "failed": failed, "awaiting": awaiting });
        }
        summary
    }

    fn write_table(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let verb = if self.dry_run {
            "would request"
        } else {
            "requested"
        };
        if self.dry_run {
            writeln!(out, "dry run: nothing was appended")?;
        }
        writeln!(out, "{:<26}{}", "selection", self.selection)?;
        writeln!(out, "{:<26}{}", "spec version", self.spec_version)?;
        if self.appended() {
            writeln!(out, "{:<26}{}", "correlation id", self.correlation_id)?;
        }
        let mut rows = vec![
            ("records scanned", self.records_scanned),
            ("undecodable records", self.undecodable_records),
            ("images in the log", self.images_in_log),
            ("selected", self.images.len() as u64),
            (verb, self.requested()),
        ];
        let skipped = self.skipped();
        for skip in [Skip::UpToDate, Skip::Awaiting, Skip::Failed, Skip::Deleted] {
            rows.push((
                match skip {
                    Skip::UpToDate => "skipped, up to date",
                    Skip::Awaiting => "skipped, awaiting result",
                    Skip::Failed => "skipped, failed",
                    Skip::Deleted => "skipped, deleted",
                },
                skipped.get(&skip).copied().unwrap_or(0),
            ));
        }
        if self.waited {
            let (processed, failed, awaiting) = self.results();
            rows.push(("results, processed", processed));
            rows.push(("results, failed", failed));
            rows.push(("results, still awaited", awaiting));
        }
        for (label, count) in rows {
            writeln!(out, "{label:<26}{count:>8}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::log::testing::logged;
    use crate::replay::Selection;

    fn image(latest: Option<Outcome>, deleted: bool) -> LoggedImage {
        logged(latest, false, deleted, 0)
    }

    #[test]
    fn the_summary_counts_requests_and_skips() {
        let lines = vec![
            ImageLine {
                image: image(Some(Outcome::Processed { spec_version: 1 }), false),
                skipped: None,
                request: Some(Uuid::now_v7()),
                result: Some(Outcome::Processed { spec_version: 2 }),
            },
            ImageLine {
                image: image(None, true),
                skipped: Some(Skip::Deleted),
                request: None,
                result: None,
            },
        ];
        let summary = Summary {
            dry_run: false,
            selection: Selection::All.describe(),
            spec_version: 2,
            correlation_id: "replay-x".into(),
            records_scanned: 5,
            undecodable_records: 0,
            images_in_log: 2,
            images: lines,
            waited: true,
        };
        let json = summary.to_json();
        assert_eq!(json["requested"], 1);
        assert_eq!(json["skipped"]["deleted"], 1);
        assert_eq!(json["results"]["processed"], 1);
        assert_eq!(json["images"][0]["action"], "requested");
        assert_eq!(
            json["images"][0]["previous"],
            json!({ "status": "processed", "spec_version": 1 })
        );
        let mut table = Vec::new();
        summary.write_table(&mut table).unwrap();
        let table = String::from_utf8(table).unwrap();
        assert!(table.contains("skipped, deleted"), "{table}");
        assert!(table.contains("correlation id"), "{table}");
    }
}
