//! What the console's operator page reads from the read models: images per status and spec
//! version, and how long results take.

use std::time::Duration;

use imgpipe_schemas::state::Status;
use imgpipe_schemas::EventType;
use sqlx::PgPool;

/// How many images have one status and spec version (none before their first result).
#[derive(Debug, sqlx::FromRow)]
pub struct StatusCount {
    #[sqlx(try_from = "String")]
    pub status: Status,
    pub spec_version: Option<i32>,
    pub images: i64,
}

pub async fn status_counts(pool: &PgPool) -> Result<Vec<StatusCount>, sqlx::Error> {
    sqlx::query_as(
        "SELECT status, spec_version, count(*) AS images
         FROM images
         GROUP BY status, spec_version
         ORDER BY status, spec_version NULLS FIRST",
    )
    .fetch_all(pool)
    .await
}

/// Time from an upload (or a reprocess request) to its result, over the results of a window.
#[derive(Debug, Default, sqlx::FromRow)]
pub struct Latency {
    pub results: i64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// The latency of the results (processed or failed) that occurred in the last `window`: each
/// result's time less its cause's (the result's causation is the upload or the request).
pub async fn result_latency(pool: &PgPool, window: Duration) -> Result<Latency, sqlx::Error> {
    let results = [EventType::ImageProcessed, EventType::ImageFailed].map(EventType::as_str);
    sqlx::query_as(
        "SELECT count(*) AS results,
                percentile_cont(0.50) WITHIN GROUP (ORDER BY ms) AS p50_ms,
                percentile_cont(0.95) WITHIN GROUP (ORDER BY ms) AS p95_ms,
                percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) AS p99_ms
         FROM (SELECT extract(epoch FROM result.occurred_at - cause.occurred_at)::float8 * 1000
                      AS ms
               FROM image_events result
               JOIN image_events cause ON cause.event_id = result.causation_id
               WHERE result.event_type = ANY($1)
                 AND result.occurred_at > now() - make_interval(secs => $2)) AS latencies",
    )
    .bind(&results[..])
    .bind(window.as_secs_f64())
    .fetch_one(pool)
    .await
}
