//! The swap: one transaction makes the rebuilt schema the live one.
//!
//! 1. Lock the live `projection_positions` (EXCLUSIVE: reads go on, the live projector's next
//!    compare-and-set waits) and read the live positions.
//! 2. Apply the last events into `<schema>_next` until it is at or past them (the replay's own
//!    connections; the live projector cannot move meanwhile).
//! 3. Move the tables no event carries ([`super::KEPT`]) into `<schema>_next`: the same table
//!    (same oid, rows and indexes), so no write to it is lost and ingest's prepared statements
//!    keep pointing at it.
//! 4. Empty the live positions, so a live batch waiting on step 1 finds its position gone,
//!    rolls back, and reloads the positions, which by then are the rebuilt ones.
//! 5. Rename `<schema>` to `<schema>_old` and `<schema>_next` to `<schema>`, and commit.
//!
//! Every connection reaches the tables through `search_path = <schema>`, so from the commit
//! on, names resolve to the rebuilt tables: Postgres drops cached plans when a schema is
//! renamed and plans them again by name. A query already running on the old tables finishes
//! there; dropping `<schema>_old` waits for it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sqlx::{Acquire, PgConnection};

use super::{Replay, KEPT, MIGRATIONS_TABLE, PROJECTIONS};
use crate::positions::PositionMap;
use crate::ProjectorError;

/// The live schema's tables that are not projections: those moved across at the swap. A
/// table neither projected nor known to be kept is refused.
pub(super) async fn classify_tables(
    db: &mut PgConnection,
    schema: &str,
) -> Result<Vec<String>, ProjectorError> {
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT tablename::text FROM pg_tables WHERE schemaname = $1")
            .bind(schema)
            .fetch_all(&mut *db)
            .await?;
    if tables.is_empty() {
        return Err(ProjectorError::Rebuild(format!(
            "schema {schema} has no tables: run `imgpipe migrate` first"
        )));
    }
    let unknown: Vec<&String> = tables
        .iter()
        .filter(|t| {
            !PROJECTIONS.contains(&t.as_str())
                && !KEPT.contains(&t.as_str())
                && t.as_str() != MIGRATIONS_TABLE
        })
        .collect();
    if !unknown.is_empty() {
        return Err(ProjectorError::Rebuild(format!(
            "tables {unknown:?} are neither projections nor kept state; list them in \
             projector/src/rebuild/mod.rs (PROJECTIONS or KEPT) before rebuilding"
        )));
    }
    Ok(tables
        .into_iter()
        .filter(|t| KEPT.contains(&t.as_str()))
        .collect())
}

/// Rows in every projection and kept table of `schema`.
pub(super) async fn row_counts(
    db: &mut PgConnection,
    schema: &str,
    kept: &[String],
) -> Result<BTreeMap<String, i64>, ProjectorError> {
    let mut counts = BTreeMap::new();
    for table in PROJECTIONS
        .iter()
        .map(|t| t.to_string())
        .chain(kept.iter().cloned())
    {
        let count: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM \"{schema}\".{table}"))
            .fetch_one(&mut *db)
            .await?;
        counts.insert(table, count);
    }
    Ok(counts)
}

/// The live schema must be at the migration this build has: the kept tables move across
/// as they are, so their shape must be the one the new schema was migrated to.
pub(super) async fn check_migrations(
    db: &mut PgConnection,
    live: &str,
    next: &str,
) -> Result<(), ProjectorError> {
    let latest = |schema: &str| {
        format!(
            "SELECT coalesce(max(version), 0) FROM \"{schema}\".{MIGRATIONS_TABLE} WHERE success"
        )
    };
    let live_version: i64 = sqlx::query_scalar(&latest(live))
        .fetch_one(&mut *db)
        .await?;
    let next_version: i64 = sqlx::query_scalar(&latest(next))
        .fetch_one(&mut *db)
        .await?;
    if live_version != next_version {
        return Err(ProjectorError::Rebuild(format!(
            "schema {live} is at migration {live_version}, this build at {next_version}: \
             run `imgpipe migrate` with the matching build first"
        )));
    }
    Ok(())
}

/// Swaps `next` in for `live`. False (nothing changed) if the last events could not be
/// applied within `catch_up` or the live positions stayed locked that long.
pub(super) async fn swap(
    control: &mut PgConnection,
    replay: &mut Replay,
    live: &str,
    next: &str,
    old: &str,
    kept: &[String],
    catch_up: Duration,
) -> Result<bool, ProjectorError> {
    let mut tx = control.begin().await?;
    sqlx::query(&format!(
        "SET LOCAL lock_timeout = '{}ms'",
        catch_up.as_millis()
    ))
    .execute(&mut *tx)
    .await?;
    let locked = sqlx::query(&format!(
        "LOCK TABLE \"{live}\".projection_positions IN EXCLUSIVE MODE"
    ))
    .execute(&mut *tx)
    .await;
    match locked {
        Ok(_) => {}
        // lock_not_available: the live projector held it all along; try again later.
        Err(error)
            if error.as_database_error().and_then(|e| e.code()).as_deref() == Some("55P03") =>
        {
            return Ok(false)
        }
        Err(error) => return Err(error.into()),
    }
    let rows: Vec<(i32, i64)> = sqlx::query_as(&format!(
        "SELECT partition, next_offset FROM \"{live}\".projection_positions WHERE topic = $1"
    ))
    .bind(&replay.applier.topic)
    .fetch_all(&mut *tx)
    .await?;
    let live_positions: PositionMap = rows.into_iter().collect();
    let deadline = Instant::now() + catch_up;
    while replay.behind(&live_positions) > 0 {
        if Instant::now() > deadline {
            tx.rollback().await?;
            return Ok(false);
        }
        replay.step(Duration::from_millis(200)).await?;
    }
    // The kept tables' shape is checked again under the lock, in case of a migration meanwhile.
    check_migrations(&mut tx, live, next).await?;
    let now_kept = classify_tables(&mut tx, live).await?;
    if now_kept != kept {
        return Err(ProjectorError::Rebuild(format!(
            "the live tables changed during the rebuild ({kept:?} -> {now_kept:?})"
        )));
    }
    for table in kept {
        sqlx::query(&format!("DROP TABLE \"{next}\".{table}"))
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!(
            "ALTER TABLE \"{live}\".{table} SET SCHEMA \"{next}\""
        ))
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(&format!("DELETE FROM \"{live}\".projection_positions"))
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!("ALTER SCHEMA \"{live}\" RENAME TO \"{old}\""))
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!("ALTER SCHEMA \"{next}\" RENAME TO \"{live}\""))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(schema = %live, positions = ?live_positions, "rebuilt read models swapped in");
    Ok(true)
}
