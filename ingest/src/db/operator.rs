//! What the console's operator page reads from the read models: images per status and spec
//! version, and how long results take.

use imgpipe_schemas::state::Status;
use imgpipe_schemas::EventType;
use sqlx::{PgPool, Postgres, Transaction};

/// How many images have one status and spec version (none before their first result).
#[derive(Debug, sqlx::FromRow)]
pub struct StatusCount {
    #[sqlx(try_from = "String")]
    pub status: Status,
    pub spec_version: Option<i32>,
    pub images: i64,
}

/// Every image counted (a scan of the images table), within [`STATEMENT_LIMIT`].
pub async fn status_counts(pool: &PgPool) -> Result<Vec<StatusCount>, sqlx::Error> {
    let mut tx = limited(pool).await?;
    let counts = sqlx::query_as(
        "SELECT status, spec_version, count(*) AS images
         FROM images
         GROUP BY status, spec_version
         ORDER BY status, spec_version NULLS FIRST",
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(counts)
}

/// How long one of the operator page's statements may run: a huge table cannot hold the page
/// (or a connection of the pool) longer.
const STATEMENT_LIMIT: &str = "5s";

/// A transaction whose statements stop at [`STATEMENT_LIMIT`].
async fn limited(pool: &PgPool) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(&format!(
        "SET LOCAL statement_timeout = '{STATEMENT_LIMIT}'"
    ))
    .execute(&mut *tx)
    .await?;
    Ok(tx)
}

/// Time from an upload (or a reprocess request) to its result, over the results of a window.
#[derive(Debug, Default, sqlx::FromRow)]
pub struct Latency {
    pub window: String,
    pub results: i64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// The latency of the results (processed or failed) of the last hour and of the last day:
/// each result's time less its cause's (the result's causation is the upload or the request).
/// The results are found by the partial index `image_events_results`, within
/// [`STATEMENT_LIMIT`].
pub async fn result_latency(pool: &PgPool) -> Result<Vec<Latency>, sqlx::Error> {
    // Literal, as in the index's predicate, so the planner can use it.
    let results = format!(
        "'{}', '{}'",
        EventType::ImageProcessed.as_str(),
        EventType::ImageFailed.as_str()
    );
    let mut tx = limited(pool).await?;
    let query = format!(
        "WITH latencies AS (
             SELECT result.occurred_at,
                    extract(epoch FROM result.occurred_at - cause.occurred_at)::float8 * 1000 AS ms
             FROM image_events result
             JOIN image_events cause ON cause.event_id = result.causation_id
             WHERE result.event_type IN ({results})
               AND result.occurred_at > now() - interval '1 day')
         SELECT windows.label AS window,
                count(latencies.ms) AS results,
                percentile_cont(0.50) WITHIN GROUP (ORDER BY latencies.ms) AS p50_ms,
                percentile_cont(0.95) WITHIN GROUP (ORDER BY latencies.ms) AS p95_ms,
                percentile_cont(0.99) WITHIN GROUP (ORDER BY latencies.ms) AS p99_ms
         FROM (VALUES (1, 'last hour', interval '1 hour'), (2, 'last 24 hours', interval '1 day'))
              AS windows (rank, label, span)
         LEFT JOIN latencies ON latencies.occurred_at > now() - windows.span
         GROUP BY windows.rank, windows.label
         ORDER BY windows.rank"
    );
    let latencies = sqlx::query_as(&query).fetch_all(&mut *tx).await?;
    tx.commit().await?;
    Ok(latencies)
}
