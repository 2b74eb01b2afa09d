//! The operator pages' markup (see `operator.rs`): tables and plain forms.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use imgpipe_infra::consume::lag::PartitionLag;
use imgpipe_infra::redrive::{DeadLetter, Pending, Selection, Summary};
use imgpipe_infra::BoxError;
use imgpipe_schemas::state::Status;
use maud::{html, Markup};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::pages::layout;
use super::session::ConsoleClient;
use crate::db::operator::{Latency, StatusCount};

/// One consumer group's lag on one topic.
pub(super) struct GroupLag {
    /// With the deployment's prefix.
    pub(super) group: String,
    pub(super) topic: String,
    pub(super) partitions: Vec<PartitionLag>,
}

/// Why a page could not read the log.
#[derive(Debug)]
pub(super) enum LogProblem {
    /// Another log query holds this instance's turn.
    Busy,
    TimedOut,
    Failed(BoxError),
    /// A redrive outlasted the page's wait; it goes on.
    StillRunning,
    /// The redrive's task ended without an answer.
    Crashed,
}

impl LogProblem {
    fn status(&self) -> StatusCode {
        match self {
            Self::Busy | Self::Failed(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::TimedOut => StatusCode::GATEWAY_TIMEOUT,
            Self::StillRunning => StatusCode::ACCEPTED,
            Self::Crashed => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn text(&self) -> String {
        match self {
            Self::Busy => {
                "Another operator query is running on this instance; try again in a moment.".into()
            }
            Self::TimedOut => "The broker did not answer in time; try again shortly.".into(),
            Self::Failed(error) => format!("The log could not be read: {error}."),
            Self::StillRunning => "The redrive is still running and goes on by itself; look at \
                                   the dead letters again in a while."
                .into(),
            Self::Crashed => "The redrive stopped unexpectedly; the service's log says why.".into(),
        }
    }
}

pub(super) struct Overview {
    pub(super) lag: Result<Vec<GroupLag>, LogProblem>,
    pub(super) counts: Vec<StatusCount>,
    pub(super) latencies: Vec<Latency>,
}

pub(super) fn overview(session: &ConsoleClient, overview: &Overview) -> Response {
    let newest = overview.counts.iter().filter_map(|c| c.spec_version).max();
    let behind: i64 = overview
        .counts
        .iter()
        .filter(|c| c.status != Status::Deleted)
        .filter(|c| c.spec_version.zip(newest).is_some_and(|(v, n)| v < n))
        .map(|c| c.images)
        .sum();
    layout(
        "Operator",
        Some(session),
        html! {
            h1 { "Operator" }
            h2 { "Consumer lag" }
            @match &overview.lag {
                Ok(groups) => { @for group in groups { (lag_table(group)) } }
                Err(problem) => p class="error" role="alert" { (problem.text()) }
            }
            h2 { "Images by status and spec version" }
            div class="scroll" {
                table class="timeline" id="counts" {
                    thead { tr { th scope="col" { "status" } th scope="col" { "spec version" } th scope="col" { "images" } } }
                    tbody {
                        @for count in &overview.counts {
                            tr {
                                td { span class={ "status " (count.status.as_str()) } { (count.status.as_str()) } }
                                td { (count.spec_version.map_or("none yet".to_string(), |v| v.to_string())) }
                                td { (count.images) }
                            }
                        }
                    }
                }
            }
            @if let Some(newest) = newest {
                p id="behind" {
                    (behind) " images have results of a spec older than the newest, " (newest)
                    "; " code { "imgpipe replay reprocess --all" } " brings them up to date once "
                    "the processors run the new spec."
                }
            }
            h2 { "Result latency" }
            p class="hint" { "From an upload (or a reprocess request) to its result, processed or failed." }
            div class="scroll" {
                table class="timeline" id="latency" {
                    thead { tr { th scope="col" { "window" } th scope="col" { "results" } th scope="col" { "p50" } th scope="col" { "p95" } th scope="col" { "p99" } } }
                    tbody {
                        @for latency in &overview.latencies {
                            tr {
                                td { (latency.window) }
                                td { (latency.results) }
                                td { (millis(latency.p50_ms)) }
                                td { (millis(latency.p95_ms)) }
                                td { (millis(latency.p99_ms)) }
                            }
                        }
                    }
                }
            }
        },
    )
    .into_response()
}

fn lag_table(group: &GroupLag) -> Markup {
    let total: i64 = group.partitions.iter().map(|p| p.lag).sum();
    html! {
        h3 { code { (group.group) } " on " code { (group.topic) } ": " (total) " behind" }
        div class="scroll" {
            table class="timeline lag" data-group=(group.group) {
                thead { tr { th scope="col" { "partition" } th scope="col" { "end" } th scope="col" { "position" } th scope="col" { "lag" } } }
                tbody {
                    @for partition in &group.partitions {
                        tr {
                            td { (partition.partition) }
                            td { (partition.end) }
                            td { (partition.position.map_or("none".to_string(), |c| c.to_string())) }
                            td { (partition.lag) }
                        }
                    }
                }
            }
        }
    }
}

pub(super) fn dead_letters(
    session: &ConsoleClient,
    pending: &Result<Pending, LogProblem>,
) -> Response {
    let pending = match pending {
        Ok(pending) => pending,
        Err(problem) => return log_problem(session, problem),
    };
    layout(
        "Dead letters",
        Some(session),
        html! {
            h1 { "Dead letters" }
            p id="pending" {
                (pending.total) " not yet redriven"
                @if (pending.letters.len() as i64) < pending.total { "; the first " (pending.letters.len()) " in the log are listed" }
                "."
            }
            @if !pending.letters.is_empty() {
                form method="post" action="/console/operator/dead-letters" {
                    (letters_table(&pending.letters, true))
                    div class="filter" {
                        button type="submit" name="action" value="preview" { "Preview the chosen (dry run)" }
                        button type="submit" name="action" value="redrive" { "Redrive the chosen" }
                        button type="submit" name="action" value="preview-all" { "Preview all" }
                    }
                }
            }
        },
    )
    .into_response()
}

fn letters_table(letters: &[DeadLetter], choosable: bool) -> Markup {
    html! {
        div class="scroll" {
            table class="timeline letters" {
                thead { tr {
                    @if choosable { th scope="col" { "choose" } }
                    th scope="col" { "dead letter" } th scope="col" { "when" } th scope="col" { "class" }
                    th scope="col" { "reason" } th scope="col" { "attempts" } th scope="col" { "group" }
                    th scope="col" { "from topic / partition / offset" } th scope="col" { "key" }
                } }
                tbody {
                    @for letter in letters {
                        tr {
                            @if choosable {
                                td { input type="checkbox" name="letter" value=(letter.id()) id={ "letter-" (letter.id()) } aria-label={ "Choose " (letter.id()) }; }
                            }
                            td { code { (letter.id()) } }
                            td { (letter.dead_lettered_at_ms.map(time_text).unwrap_or_default()) }
                            td { (letter.error_class.as_deref().unwrap_or("unknown")) }
                            td { (letter.error_message.as_deref().unwrap_or("")) }
                            td { (letter.attempts.as_deref().unwrap_or("")) }
                            td { code { (letter.consumer_group.as_deref().unwrap_or("")) } }
                            td { (letter.original_topic.as_deref().unwrap_or("none")) " / " (letter.original_partition.as_deref().unwrap_or("?")) " / " (letter.original_offset.as_deref().unwrap_or("?")) }
                            td { code { (letter.key.as_deref().unwrap_or("")) } }
                        }
                    }
                }
            }
        }
    }
}

/// What a preview would move (with a button to move the same selection) or what a redrive
/// moved.
pub(super) fn redrive_result(
    session: &ConsoleClient,
    selection: &Selection,
    summary: &Summary,
) -> Response {
    let (title, verb) = if summary.dry_run {
        ("Redrive preview", "would move")
    } else {
        ("Redriven", "moved")
    };
    layout(
        title,
        Some(session),
        html! {
            h1 { (title) }
            p id="outcome" role="status" {
                (summary.moved) " dead letters " (verb) " back to their topics"
                @if summary.dry_run { " (a dry run: nothing moved)" } "."
            }
            ul {
                li { (summary.scanned) " scanned" }
                li { (summary.skipped_by_filter) " not chosen" }
                li { (summary.skipped_duplicates) " copies of a record another group dead-lettered too (it moves once)" }
                li { (summary.skipped_without_origin) " without an origin to go back to" }
                @if summary.stopped_at_deadline {
                    li class="error" { "The run stopped at its time limit; what it moved is recorded. Run it again for the rest." }
                }
                @if !summary.dry_run {
                    li {
                        "The redrive position " @if summary.committed { "moved past what was moved" } @else { "did not move" }
                        @if summary.moved_behind > 0 {
                            "; " (summary.moved_behind) " of the letters moved sit behind letters not chosen, so they stay listed (a later run moves them again, which consumers take in their stride)"
                        }
                        "."
                    }
                }
            }
            @if !summary.records.is_empty() { (letters_table(&summary.records, false)) }
            @if summary.records_left_out > 0 {
                p class="hint" { "And " (summary.records_left_out) " more, not listed." }
            }
            @if summary.dry_run && summary.moved > 0 {
                form method="post" action="/console/operator/dead-letters" {
                    @match selection {
                        Selection::Letters(chosen) => {
                            @for letter in chosen {
                                input type="hidden" name="letter" value=(letter);
                            }
                            button type="submit" name="action" value="redrive" { "Redrive these " (summary.moved) }
                        }
                        _ => {
                            p class="hint" { "Letters dead-lettered after this preview are redriven too." }
                            button type="submit" name="action" value="redrive-all" { "Redrive all" }
                        }
                    }
                }
            }
            p { a href="/console/operator/dead-letters" { "Back to the dead letters" } }
        },
    )
    .into_response()
}

pub(super) fn log_problem(session: &ConsoleClient, problem: &LogProblem) -> Response {
    let page = layout(
        "Operator",
        Some(session),
        html! {
            h1 { "The log" }
            p class="error" role="alert" { (problem.text()) }
            p { a href="/console/operator/dead-letters" { "The dead letters" } }
        },
    );
    (problem.status(), page).into_response()
}

fn millis(value: Option<f64>) -> String {
    match value {
        None => "–".into(),
        Some(ms) if ms >= 1000.0 => format!("{:.2} s", ms / 1000.0),
        Some(ms) => format!("{ms:.0} ms"),
    }
}

fn time_text(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|at| at.format(&Rfc3339).ok())
        .unwrap_or_default()
}
