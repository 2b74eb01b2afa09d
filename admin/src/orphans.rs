//! `imgpipe orphans`: the orphan sweep from the command line. Findings are printed as the
//! sweep makes them (a table, or JSON lines), progress goes to stderr, the counts come last.

use std::io::Write;
use std::time::Duration;

use imgpipe_infra::registry::RegistryConfig;
use imgpipe_infra::{DatabaseConfig, FromEnv, KafkaConfig, S3Config};
use imgpipe_projector::orphans::{self, Finding, Kind, Observer, StoreBackend, Summary};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;

use crate::error::AdminError;

/// `90`, `90s`, `15m`, `1h`, `2d`: a whole number of seconds, minutes, hours or days.
pub fn parse_duration(text: &str) -> Result<Duration, AdminError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let owned = || text.to_string();
    let number: u64 = number
        .parse()
        .map_err(|_| AdminError::Duration { text: owned() })?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(AdminError::DurationUnit { text: owned() }),
    };
    number
        .checked_mul(seconds)
        .map(Duration::from_secs)
        .ok_or_else(|| AdminError::DurationTooLong { text: owned() })
}

/// The shortest grace `--delete` takes without `--force`. An upload stores its original before
/// its event is appended, so a short grace can remove the original of an upload still under
/// way (a slow client, a produce waiting out its timeout), and that image then fails.
pub const MIN_DELETE_GRACE: Duration = Duration::from_secs(10 * 60);

/// Refuses `--delete` with a grace under [`MIN_DELETE_GRACE`] unless `force` says the
/// operator knows no upload is in flight (a stopped ingest, a test bucket).
pub fn check_delete_grace(grace: Duration, delete: bool, force: bool) -> Result<(), AdminError> {
    if delete && !force && grace < MIN_DELETE_GRACE {
        return Err(AdminError::GraceTooShort {
            grace,
            minimum: MIN_DELETE_GRACE,
        });
    }
    Ok(())
}

/// `imgpipe orphans`: refuses `--delete` with a short grace (see [`check_delete_grace`]), then
/// sweeps with the deployment's configuration.
pub async fn run(
    options: &orphans::SweepOptions,
    force: bool,
    json: bool,
) -> Result<Summary, AdminError> {
    check_delete_grace(options.grace, options.delete, force)?;
    let backend = StoreBackend::connect(
        &KafkaConfig::from_env()?,
        &S3Config::from_env()?,
        &DatabaseConfig::from_env()?,
        &RegistryConfig::from_env()?,
        "imgpipe-admin-orphans",
    )
    .await?;
    sweep(&backend, options, json).await
}

/// Runs one sweep, printing as it goes.
pub async fn sweep(
    backend: &StoreBackend,
    options: &orphans::SweepOptions,
    json: bool,
) -> Result<Summary, AdminError> {
    let mut printer = Printer::new(std::io::stdout().lock(), std::io::stderr(), json);
    let summary = orphans::sweep(backend, options, &mut printer)
        .await
        .map_err(AdminError::Sweeping)?;
    if let Some(error) = printer.failed.take() {
        return Err(AdminError::WritingFindings(error));
    }
    printer.summary(&summary, options)?;
    Ok(summary)
}

pub struct Printer<O: Write, E: Write> {
    out: O,
    err: E,
    json: bool,
    /// The first write error; the sweep itself goes on to its end.
    failed: Option<std::io::Error>,
    /// The table's header goes before its first row (none when nothing is found).
    header_written: bool,
}

/// The table's columns, as wide as their widest value (a key is last and as long as it is).
fn columns(cells: [&str; 8]) -> String {
    let [finding, kind, reason, action, bytes, modified, image, key] = cells;
    format!(
        "{finding:<8} {kind:<9} {reason:<13} {action:<14} {bytes:>9}  {modified:<20} {image:<36} {key}"
    )
}

fn table_header() -> String {
    columns([
        "FINDING",
        "KIND",
        "REASON",
        "ACTION",
        "BYTES",
        "LAST MODIFIED",
        "IMAGE",
        "KEY",
    ])
}

impl<O: Write, E: Write> Printer<O, E> {
    pub fn new(out: O, err: E, json: bool) -> Self {
        Self {
            out,
            err,
            json,
            failed: None,
            header_written: false,
        }
    }

    pub fn summary(
        &mut self,
        summary: &Summary,
        options: &orphans::SweepOptions,
    ) -> std::io::Result<()> {
        if self.json {
            return writeln!(self.out, "{}", summary_json(summary, options));
        }
        let rows: [(&str, u64); 14] = [
            ("objects scanned", summary.objects_scanned),
            ("read-model keys scanned", summary.references_scanned),
            ("orphans", summary.orphans()),
            ("  no-event", summary.orphans_no_event),
            ("  unreferenced", summary.orphans_unreferenced),
            ("  bytes", summary.orphan_bytes),
            ("removed", summary.removed),
            ("  bytes", summary.removed_bytes),
            ("kept on re-check", summary.kept),
            ("delete failed", summary.delete_failed),
            ("missing originals", summary.missing_originals),
            ("missing variants", summary.missing_variants),
            ("marks cleared", summary.marks_cleared),
            ("recent, within the grace", summary.recent_unreferenced),
        ];
        if self.header_written {
            writeln!(self.out)?;
        }
        for (label, count) in rows {
            writeln!(self.out, "{label:<26}{count}")?;
        }
        if summary.read_model_lag > 0 {
            writeln!(
                self.out,
                "warning: the read model was {} events behind the log; some orphans may be \
                 uploads it has not applied yet",
                summary.read_model_lag
            )?;
        }
        if !options.delete && summary.orphans() > 0 {
            writeln!(
                self.out,
                "dry run: nothing removed (--delete removes the orphans)"
            )?;
        }
        Ok(())
    }

    fn write_finding(&mut self, finding: &Finding) -> std::io::Result<()> {
        if self.json {
            return writeln!(self.out, "{}", finding_json(finding));
        }
        if !self.header_written {
            writeln!(self.out, "{}", table_header())?;
            self.header_written = true;
        }
        writeln!(self.out, "{}", table_row(finding))
    }
}

impl<O: Write, E: Write> Observer for Printer<O, E> {
    fn finding(&mut self, finding: &Finding) {
        if self.failed.is_none() {
            self.failed = self.write_finding(finding).err();
        }
    }

    fn progress(&mut self, kind: Kind, summary: &Summary) {
        // Best effort: progress on a closed stderr is no reason to stop.
        let _ = writeln!(
            self.err,
            "{}s: {} objects scanned, {} orphans, {} missing so far",
            kind.as_str(),
            summary.objects_scanned,
            summary.orphans(),
            summary.missing()
        );
    }
}

fn table_row(finding: &Finding) -> String {
    match finding {
        Finding::Orphan(orphan) => {
            let modified = orphan
                .last_modified
                .replace_nanosecond(0)
                .ok()
                .and_then(|t| t.format(&Rfc3339).ok())
                .unwrap_or_default();
            let image = orphan
                .image_id
                .map(|id| id.to_string())
                .unwrap_or_else(|| "-".into());
            let key = match orphan.outcome.detail() {
                Some(detail) => format!("{} ({detail})", orphan.key),
                None => orphan.key.clone(),
            };
            columns([
                "orphan",
                orphan.kind.as_str(),
                orphan.reason.as_str(),
                orphan.outcome.as_str(),
                &orphan.bytes.to_string(),
                &modified,
                &image,
                &key,
            ])
        }
        Finding::Missing(missing) => columns([
            "missing",
            missing.kind.as_str(),
            "-",
            "marked",
            "-",
            "-",
            &missing.image_id.to_string(),
            &missing.key,
        ]),
    }
}

pub fn finding_json(finding: &Finding) -> Value {
    match finding {
        Finding::Orphan(orphan) => json!({
            "finding": "orphan",
            "kind": orphan.kind.as_str(),
            "key": orphan.key,
            "image_id": orphan.image_id,
            "bytes": orphan.bytes,
            "last_modified": orphan.last_modified.format(&Rfc3339).ok(),
            "reason": orphan.reason.as_str(),
            "action": orphan.outcome.as_str(),
            "detail": orphan.outcome.detail(),
        }),
        Finding::Missing(missing) => json!({
            "finding": "missing",
            "kind": missing.kind.as_str(),
            "key": missing.key,
            "image_id": missing.image_id,
            "image_status": missing.image_status,
            "action": "marked",
        }),
    }
}

fn summary_json(summary: &Summary, options: &orphans::SweepOptions) -> Value {
    json!({
        "summary": {
            "dry_run": !options.delete,
            "grace_secs": options.grace.as_secs(),
            "objects_scanned": summary.objects_scanned,
            "references_scanned": summary.references_scanned,
            "orphans": summary.orphans(),
            "orphans_no_event": summary.orphans_no_event,
            "orphans_unreferenced": summary.orphans_unreferenced,
            "orphan_bytes": summary.orphan_bytes,
            "removed": summary.removed,
            "removed_bytes": summary.removed_bytes,
            "kept": summary.kept,
            "delete_failed": summary.delete_failed,
            "missing_originals": summary.missing_originals,
            "missing_variants": summary.missing_variants,
            "marks_cleared": summary.marks_cleared,
            "recent_unreferenced": summary.recent_unreferenced,
            "read_model_lag": summary.read_model_lag,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use imgpipe_projector::orphans::{Missing, Orphan, Outcome, Reason};
    use time::OffsetDateTime;
    use uuid::Uuid;

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        for bad in ["", "h", "1w", "-1h", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn deleting_with_a_short_grace_needs_force() {
        let short = Duration::from_secs(9 * 60);
        let error = check_delete_grace(short, true, false)
            .unwrap_err()
            .to_string();
        assert!(error.contains("--force"), "{error}");
        check_delete_grace(short, true, true).unwrap();
        check_delete_grace(short, false, false).unwrap();
        check_delete_grace(MIN_DELETE_GRACE, true, false).unwrap();
    }

    #[test]
    fn without_findings_the_table_is_only_the_counts() {
        let mut out = Vec::new();
        let options = orphans::SweepOptions::new(Duration::from_secs(3600), false, "test");
        Printer::new(&mut out, Vec::new(), false)
            .summary(&Summary::default(), &options)
            .unwrap();
        let table = String::from_utf8(out).unwrap();
        assert!(table.starts_with("objects scanned "), "{table}");
        assert!(!table.contains("FINDING"), "{table}");
        assert!(!table.contains("dry run"), "nothing to remove: {table}");
    }

    #[test]
    fn findings_print_as_rows_or_json_lines_and_the_summary_last() {
        let image_id = Uuid::now_v7();
        let findings = [
            Finding::Orphan(Orphan {
                key: format!("ns/originals/{image_id}"),
                kind: Kind::Original,
                image_id: Some(image_id),
                bytes: 1234,
                last_modified: OffsetDateTime::UNIX_EPOCH,
                reason: Reason::NoEvent,
                outcome: Outcome::Removed,
            }),
            Finding::Missing(Missing {
                key: "ns/variants/x/v1/thumb.webp".into(),
                kind: Kind::Variant,
                image_id,
                image_status: "ready".into(),
            }),
        ];
        let options = orphans::SweepOptions::new(Duration::from_secs(3600), true, "test");
        let summary = Summary {
            orphans_no_event: 1,
            removed: 1,
            missing_variants: 1,
            ..Summary::default()
        };

        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut printer = Printer::new(&mut out, &mut err, false);
        for finding in &findings {
            printer.finding(finding);
        }
        printer.progress(Kind::Variant, &summary);
        printer.summary(&summary, &options).unwrap();
        let table = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = table.lines().collect();
        let orphan_key = format!("ns/originals/{image_id}");
        let image = image_id.to_string();
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            [
                "orphan",
                "original",
                "no-event",
                "removed",
                "1234",
                "1970-01-01T00:00:00Z",
                &image,
                &orphan_key
            ]
        );
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            [
                "missing",
                "variant",
                "-",
                "marked",
                "-",
                "-",
                &image,
                "ns/variants/x/v1/thumb.webp"
            ]
        );
        // Every row's key starts under the header's KEY.
        let key_column = lines[0].find("KEY").unwrap();
        assert_eq!(&lines[1][key_column..], orphan_key);
        assert_eq!(&lines[2][key_column..], "ns/variants/x/v1/thumb.webp");
        assert!(
            lines
                .iter()
                .any(|l| l.split_whitespace().eq(["orphans", "1"])),
            "{table}"
        );
        assert_eq!(
            String::from_utf8(err).unwrap(),
            "variants: 0 objects scanned, 1 orphans, 1 missing so far\n"
        );

        let mut out = Vec::new();
        let mut printer = Printer::new(&mut out, Vec::new(), true);
        for finding in &findings {
            printer.finding(finding);
        }
        printer.summary(&summary, &options).unwrap();
        let lines: Vec<Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["reason"], "no-event");
        assert_eq!(lines[0]["action"], "removed");
        assert_eq!(lines[0]["image_id"], image_id.to_string());
        assert_eq!(lines[1]["finding"], "missing");
        assert_eq!(lines[2]["summary"]["orphans"], 1);
        assert_eq!(lines[2]["summary"]["dry_run"], false);
    }
}
