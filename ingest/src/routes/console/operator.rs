//! The operator pages (a key with `scope=admin`): each consumer group's lag per partition,
//! images per status and spec version, how long results take, and the dead letters with a
//! dry-run preview and a redrive of chosen ones or all. Plain forms: no script needed.
//!
//! Lag and dead letters are read from the log itself, each time with broker clients of its
//! own; one such query runs at a time per instance (`OperatorSetup::log_queries`), and a page
//! waits a bounded time for it. A redrive runs as a task of its own: a page that stops waiting
//! (or a browser that goes away) does not cut it short between a record's copy and its commit.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use imgpipe_infra::consume::lag::{partition_lag, CommittedOffsets};
use imgpipe_infra::kafka::groups;
use imgpipe_infra::log_reader::LogReader;
use imgpipe_infra::redrive::{self, LetterId, Options, Selection};
use imgpipe_infra::BoxError;
use imgpipe_projector::positions::StoredPositions;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::operator_pages::{self, GroupLag, LogProblem, Overview};
use super::pages;
use super::session::{same_origin, ConsoleClient};
use crate::db::operator::{result_latency, status_counts};
use crate::error::IngestError;
use crate::state::AppState;

/// Dead letters the page lists (of those not yet redriven, oldest first).
const LISTED_LETTERS: usize = 100;
/// The most letters one form may choose.
const CHOSEN_LETTERS: usize = 1000;
/// How long a page waits for its turn at the log and for the query itself.
const LOG_QUERY_WAIT: Duration = Duration::from_secs(20);
/// How long a redrive from the page runs: it stops there (committing what it moved), and the
/// page says to run it again for the rest.
const REDRIVE_RUN: Duration = Duration::from_secs(25);
/// How long the page waits for it: the run, and a record's acknowledgement in flight.
const REDRIVE_WAIT: Duration = Duration::from_secs(40);
/// The records a redrive's page lists (the rest are counted).
const SHOWN_RECORDS: usize = 200;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/console/operator", get(overview))
        .route(
            "/console/operator/dead-letters",
            get(dead_letters).post(redrive_letters),
        )
}

/// A signed-in client whose key has `scope=admin`; others get 403 (and a sign-in first).
pub(super) struct OperatorClient(ConsoleClient);

impl FromRequestParts<AppState> for OperatorClient {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let session = ConsoleClient::from_request_parts(parts, state).await?;
        if !session.scope.is_admin() {
            return Err(pages::problem(
                StatusCode::FORBIDDEN,
                "The operator pages need an API key with scope=admin.",
            ));
        }
        Ok(Self(session))
    }
}

async fn overview(
    State(state): State<AppState>,
    OperatorClient(session): OperatorClient,
) -> Response {
    let counts = match status_counts(&state.pool).await {
        Ok(counts) => counts,
        Err(error) => return pages::unavailable(IngestError::DatabaseUnavailable(error)),
    };
    let latencies = match result_latency(&state.pool).await {
        Ok(latencies) => latencies,
        Err(error) => return pages::unavailable(IngestError::DatabaseUnavailable(error)),
    };
    let lag = log_query(&state, all_lag(&state)).await;
    let overview = Overview {
        lag,
        counts,
        latencies,
    };
    operator_pages::overview(&session, &overview).into_response()
}

/// Every group's lag, measured the one way the services measure their own: the processor's
/// and the deliverer's from their committed offsets, the projector's from the positions it
/// stores with the read models, and the redrive group's on the dead-letter topic (the dead
/// letters not yet redriven).
async fn all_lag(state: &AppState) -> Result<Vec<GroupLag>, BoxError> {
    let kafka = &state.operator.kafka;
    let topics = kafka.topics();
    let mut all = Vec::new();
    for group in groups::ON_EVENTS {
        let reader = LogReader::new(kafka, "imgpipe-console", group, &topics.events)?;
        let partitions = if group == groups::PROJECTOR {
            let stored = StoredPositions {
                pool: state.pool.clone(),
                topic: topics.events.clone(),
            };
            partition_lag(&reader, &stored).await?
        } else {
            partition_lag(&reader, &CommittedOffsets(reader.clone())).await?
        };
        all.push(GroupLag {
            group: kafka.group_id(group),
            topic: topics.events.clone(),
            partitions,
        });
    }
    let reader = LogReader::new(
        kafka,
        "imgpipe-console",
        groups::REDRIVE,
        &topics.dead_letter,
    )?;
    all.push(GroupLag {
        group: kafka.group_id(groups::REDRIVE),
        topic: topics.dead_letter.clone(),
        partitions: partition_lag(&reader, &CommittedOffsets(reader.clone())).await?,
    });
    Ok(all)
}

async fn dead_letters(
    State(state): State<AppState>,
    OperatorClient(session): OperatorClient,
) -> Response {
    let kafka = Arc::clone(&state.operator.kafka);
    let pending = log_query(&state, redrive::pending(&kafka, LISTED_LETTERS)).await;
    operator_pages::dead_letters(&session, &pending).into_response()
}

/// What a dead-letter form asks for.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct RedriveForm {
    pub(super) selection: Selection,
    pub(super) dry_run: bool,
}

/// Reads the form: `action` is `preview` or `redrive` (the chosen `letter`s, each
/// `partition:offset`), or `preview-all` or `redrive-all`.
pub(super) fn read_form(body: &[u8]) -> Result<RedriveForm, &'static str> {
    let mut letters = BTreeSet::new();
    let mut action = None;
    for (name, value) in form_urlencoded::parse(body) {
        match &*name {
            "letter" => {
                let letter: LetterId = value.parse().map_err(|_| "A chosen letter is not one.")?;
                letters.insert(letter);
                if letters.len() > CHOSEN_LETTERS {
                    return Err("Choose at most 1000 letters at once.");
                }
            }
            "action" => action = Some(value.into_owned()),
            _ => {}
        }
    }
    let (all, dry_run) = match action.as_deref() {
        Some("preview") => (false, true),
        Some("redrive") => (false, false),
        Some("preview-all") => (true, true),
        Some("redrive-all") => (true, false),
        _ => return Err("The form did not say what to do."),
    };
    if all {
        return Ok(RedriveForm {
            selection: Selection::All,
            dry_run,
        });
    }
    if letters.is_empty() {
        return Err("Choose at least one dead letter.");
    }
    Ok(RedriveForm {
        selection: Selection::Letters(letters),
        dry_run,
    })
}

/// A preview (dry run) or a redrive of the chosen letters or all of them.
async fn redrive_letters(
    State(state): State<AppState>,
    OperatorClient(session): OperatorClient,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !same_origin(&headers) {
        return pages::problem(
            StatusCode::FORBIDDEN,
            "This form was sent from another site.",
        );
    }
    let form = match read_form(&body) {
        Ok(form) => form,
        Err(message) => return pages::problem(StatusCode::BAD_REQUEST, message),
    };
    let permit = match log_turn(&state, Instant::now() + LOG_QUERY_WAIT).await {
        Ok(permit) => permit,
        Err(problem) => return operator_pages::log_problem(&session, &problem).into_response(),
    };
    let options = Options {
        deadline: Some(Instant::now() + REDRIVE_RUN),
        keep_records: SHOWN_RECORDS,
        ..Options::new(form.selection.clone(), form.dry_run, 0)
    };
    let (kafka, codec) = (
        Arc::clone(&state.operator.kafka),
        state.operator.codec.clone(),
    );
    let client = session.client.clone();
    let run = tokio::spawn(async move {
        let _permit = permit;
        let summary = redrive::redrive(&kafka, &codec, &options, &mut std::io::sink()).await;
        match &summary {
            Ok(summary) => tracing::info!(
                client = %client,
                dry_run = summary.dry_run,
                scanned = summary.scanned,
                moved = summary.moved,
                committed = summary.committed,
                "console: dead letters redriven"
            ),
            Err(error) => {
                tracing::error!(client = %client, error = %error, "console: a redrive failed")
            }
        }
        summary
    });
    let outcome = match tokio::time::timeout(REDRIVE_WAIT, run).await {
        Ok(Ok(Ok(summary))) => Ok(summary),
        Ok(Ok(Err(error))) => Err(LogProblem::Failed(error.into())),
        Ok(Err(_panicked)) => Err(LogProblem::Crashed),
        Err(_) => Err(LogProblem::StillRunning),
    };
    match outcome {
        Ok(summary) => {
            operator_pages::redrive_result(&session, &form.selection, &summary).into_response()
        }
        Err(problem) => operator_pages::log_problem(&session, &problem).into_response(),
    }
}

/// Runs a log query in its turn, within [`LOG_QUERY_WAIT`] for the turn and the query.
async fn log_query<T, E: Into<BoxError>>(
    state: &AppState,
    query: impl Future<Output = Result<T, E>>,
) -> Result<T, LogProblem> {
    let deadline = Instant::now() + LOG_QUERY_WAIT;
    let _permit = log_turn(state, deadline).await?;
    match tokio::time::timeout_at(deadline, query).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => {
            let error = error.into();
            tracing::error!(error = %error, "console: a log query failed");
            Err(LogProblem::Failed(error))
        }
        Err(_) => Err(LogProblem::TimedOut),
    }
}

/// This instance's turn at the log (one query at a time), waited for until `deadline`.
async fn log_turn(state: &AppState, deadline: Instant) -> Result<OwnedSemaphorePermit, LogProblem> {
    let turns = Arc::clone(&state.operator.log_queries);
    match tokio::time::timeout_at(deadline, turns.acquire_owned()).await {
        Ok(Ok(permit)) => Ok(permit),
        _ => Err(LogProblem::Busy),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(text: &str) -> LetterId {
        text.parse().unwrap()
    }

    #[test]
    fn a_form_chooses_letters_or_all() {
        let form = read_form(b"letter=0%3A3&letter=1:7&letter=0:3&action=preview").unwrap();
        assert!(form.dry_run);
        assert_eq!(
            form.selection,
            Selection::Letters([letter("0:3"), letter("1:7")].into())
        );
        let form = read_form(b"action=redrive-all&letter=0:1").unwrap();
        assert_eq!(form.selection, Selection::All);
        assert!(!form.dry_run);
    }

    #[test]
    fn a_form_without_a_choice_or_an_action_is_refused() {
        assert!(read_form(b"action=redrive").is_err());
        assert!(read_form(b"letter=0:1").is_err());
        assert!(read_form(b"letter=0:1&action=delete").is_err());
        assert!(read_form(b"letter=zero&action=preview").is_err());
        let many: String = (0..1001).map(|i| format!("letter=0:{i}&")).collect();
        assert!(read_form(format!("{many}action=preview").as_bytes()).is_err());
    }
}
