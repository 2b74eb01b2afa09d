//! Applying a whole batch of events with a few set-based statements, for a rebuild.
//!
//! [`super::apply`] takes one event at a time: two to four statements each, so a rebuild of
//! a million events spends its time in round trips. Here a batch costs about six statements
//! whatever its size: the timeline rows in one `INSERT ... SELECT FROM UNNEST` (the rows it
//! returns are the events not seen before), the touched images' rows and variants read once,
//! each image's new events folded onto its row by the schemas crate's one fold
//! ([`ImageState`]), and the changed rows written back with one upsert, one delete and one
//! insert. `projector/tests/fold.rs` keeps the fold and [`super::apply`] equal, and
//! `projector/tests/bulk.rs` this path and the per-event one.
//!
//! Events of one image are on one partition (keyed by image id), so the batch's order per
//! image is the log's.

use std::collections::{BTreeMap, HashMap, HashSet};

use imgpipe_infra::consume::RecordPosition;
use imgpipe_schemas::state::ImageState;
use imgpipe_schemas::{Event, Variant};
use sqlx::types::{Json, JsonValue};
use sqlx::{PgConnection, Row};
use time::OffsetDateTime;
use uuid::Uuid;

/// Applies `events` (in log order) inside the caller's transaction; for each, whether it
/// changed the read models (false: it was applied before, or earlier in `events`), as
/// [`super::apply`] would say one at a time.
pub async fn apply_all(
    tx: &mut PgConnection,
    events: &[(&Event, &RecordPosition)],
) -> Result<Vec<bool>, sqlx::Error> {
    // Webhook events are few next to the images' (an endpoint's changes, one per delivery
    // attempt) and touch their own tables: one at a time, in the same transaction.
    let mut changed = vec![false; events.len()];
    let mut images = Vec::with_capacity(events.len());
    let mut image_at = Vec::with_capacity(events.len());
    for (at, &(event, position)) in events.iter().enumerate() {
        if event.payload.is_webhook() {
            changed[at] = super::webhooks::apply(tx, event).await?.changed();
        } else {
            images.push((event, position));
            image_at.push(at);
        }
    }
    for (at, image_changed) in image_at.into_iter().zip(apply_images(tx, &images).await?) {
        changed[at] = image_changed;
    }
    Ok(changed)
}

/// [`apply_all`] of the images' events.
async fn apply_images(
    tx: &mut PgConnection,
    events: &[(&Event, &RecordPosition)],
) -> Result<Vec<bool>, sqlx::Error> {
    let fresh = record_in_timeline(tx, events).await?;
    // The first of two copies in one batch is the one applied, as one at a time.
    let mut applied = HashSet::new();
    let changed: Vec<bool> = events
        .iter()
        .map(|(event, _)| fresh.contains(&event.event_id) && applied.insert(event.event_id))
        .collect();
    let mut by_image: HashMap<Uuid, Vec<&Event>> = HashMap::new();
    for ((event, _), _) in events.iter().zip(&changed).filter(|(_, changed)| **changed) {
        by_image.entry(event.image_id).or_default().push(event);
    }
    if by_image.is_empty() {
        return Ok(changed);
    }
    let ids: Vec<Uuid> = by_image.keys().copied().collect();
    let mut before = load(tx, &ids).await?;
    let mut rows = Vec::new();
    for (image_id, events) in by_image {
        let old = before.remove(&image_id);
        let mut state = old.clone();
        for event in events {
            ImageState::apply(&mut state, event.occurred_at, &event.payload);
        }
        // An image stays without a row until its upload; a row never goes away.
        let Some(new) = state else { continue };
        let variants = match &old {
            None if new.variants.is_empty() => VariantWrite::Keep,
            None => VariantWrite::Add,
            Some(old) if *old == new => continue,
            Some(old) if same_variants(old, &new) => VariantWrite::Keep,
            Some(_) => VariantWrite::Replace,
        };
        rows.push(Changed {
            image_id,
            state: new,
            variants,
        });
    }
    write_images(tx, &rows).await?;
    write_variants(tx, &rows).await?;
    Ok(changed)
}

/// An image whose row the batch changed, as the fold left it.
struct Changed {
    image_id: Uuid,
    state: ImageState,
    variants: VariantWrite,
}

/// What becomes of an image's variant rows.
#[derive(PartialEq)]
enum VariantWrite {
    /// They are what the fold has.
    Keep,
    /// The image is new: insert them.
    Add,
    /// Delete the rows, insert the fold's.
    Replace,
}

/// Adds the events to the timeline in one statement; the ids of those not there before.
async fn record_in_timeline(
    tx: &mut PgConnection,
    events: &[(&Event, &RecordPosition)],
) -> Result<HashSet<Uuid>, sqlx::Error> {
    // Postgres refuses nothing for two rows with one id in an `ON CONFLICT DO NOTHING` insert,
    // but which copy it keeps is its choice: leave later copies out here.
    let mut seen = HashSet::new();
    let unique: Vec<&(&Event, &RecordPosition)> = events
        .iter()
        .filter(|(event, _)| seen.insert(event.event_id))
        .collect();
    let column = |f: &dyn Fn(&Event, &RecordPosition) -> String| -> Vec<String> {
        unique.iter().map(|(e, p)| f(e, p)).collect()
    };
    let event_types = column(&|e, _| e.event_type().as_str().to_string());
    let topics = column(&|_, p| p.topic.clone());
    let correlation_ids = column(&|e, _| e.correlation_id.clone());
    let fresh: Vec<Uuid> = sqlx::query_scalar(
        r#"INSERT INTO image_events
               (event_id, image_id, event_type, topic, partition, "offset", occurred_at,
                correlation_id, causation_id, payload)
           SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::int4[],
                                $6::int8[], $7::timestamptz[], $8::text[], $9::uuid[],
                                $10::jsonb[])
           ON CONFLICT (event_id) DO NOTHING
           RETURNING event_id"#,
    )
    .bind(unique.iter().map(|(e, _)| e.event_id).collect::<Vec<_>>())
    .bind(unique.iter().map(|(e, _)| e.image_id).collect::<Vec<_>>())
    .bind(event_types)
    .bind(topics)
    .bind(unique.iter().map(|(_, p)| p.partition).collect::<Vec<_>>())
    .bind(unique.iter().map(|(_, p)| p.offset).collect::<Vec<_>>())
    .bind(
        unique
            .iter()
            .map(|(e, _)| e.occurred_at)
            .collect::<Vec<_>>(),
    )
    .bind(correlation_ids)
    .bind(
        unique
            .iter()
            .map(|(e, _)| e.causation_id)
            .collect::<Vec<_>>(),
    )
    .bind(
        unique
            .iter()
            .map(|(e, _)| e.payload.to_json())
            .collect::<Vec<JsonValue>>(),
    )
    .fetch_all(&mut *tx)
    .await?;
    Ok(fresh.into_iter().collect())
}

/// The images' rows and variants as the fold's state (images without a row are left out).
pub async fn load(
    tx: &mut PgConnection,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, ImageState>, sqlx::Error> {
    let mut variants: HashMap<Uuid, Vec<Variant>> = HashMap::new();
    let rows = sqlx::query(
        "SELECT image_id, name, object_key, format, width, height, bytes, sha256
         FROM variants WHERE image_id = ANY($1) ORDER BY image_id, name",
    )
    .bind(ids)
    .fetch_all(&mut *tx)
    .await?;
    for row in rows {
        variants
            .entry(row.try_get("image_id")?)
            .or_default()
            .push(Variant {
                name: row.try_get("name")?,
                key: row.try_get("object_key")?,
                format: row.try_get("format")?,
                width: row.try_get("width")?,
                height: row.try_get("height")?,
                bytes: row.try_get("bytes")?,
                sha256: row.try_get("sha256")?,
            });
    }
    let rows = sqlx::query(
        "SELECT image_id, owner, original_key, status, format, bytes, sha256, width, height,
                spec_version, dominant_color, blurhash, animated, metadata, failure_code,
                failure_reason, uploaded_at, updated_at
         FROM images WHERE image_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(&mut *tx)
    .await?;
    let mut states = HashMap::with_capacity(rows.len());
    for row in rows {
        let image_id: Uuid = row.try_get("image_id")?;
        let status: String = row.try_get("status")?;
        let Json(metadata): Json<BTreeMap<String, String>> = row.try_get("metadata")?;
        let state = ImageState {
            owner: row.try_get("owner")?,
            original_key: row.try_get("original_key")?,
            status: status
                .parse()
                .map_err(
                    |error: imgpipe_schemas::SchemaError| sqlx::Error::ColumnDecode {
                        index: "status".into(),
                        source: Box::new(error),
                    },
                )?,
            format: row.try_get("format")?,
            bytes: row.try_get("bytes")?,
            sha256: row.try_get("sha256")?,
            width: row.try_get("width")?,
            height: row.try_get("height")?,
            spec_version: row.try_get("spec_version")?,
            dominant_color: row.try_get("dominant_color")?,
            blurhash: row.try_get("blurhash")?,
            animated: row.try_get("animated")?,
            metadata,
            failure_code: row.try_get("failure_code")?,
            failure_reason: row.try_get("failure_reason")?,
            uploaded_at: row.try_get("uploaded_at")?,
            updated_at: row.try_get("updated_at")?,
            variants: variants.remove(&image_id).unwrap_or_default(),
        };
        states.insert(image_id, state);
    }
    Ok(states)
}

/// The same variant rows (the table keeps no order; the fold keeps the announced one).
fn same_variants(a: &ImageState, b: &ImageState) -> bool {
    fn sorted(state: &ImageState) -> Vec<&Variant> {
        let mut variants: Vec<&Variant> = state.variants.iter().collect();
        variants.sort_by(|x, y| x.name.cmp(&y.name));
        variants
    }
    sorted(a) == sorted(b)
}

/// Inserts or overwrites the `images` rows of `rows` in one statement.
async fn write_images(tx: &mut PgConnection, rows: &[Changed]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let states: Vec<&ImageState> = rows.iter().map(|r| &r.state).collect();
    let text = |f: fn(&ImageState) -> &str| -> Vec<&str> { states.iter().map(|s| f(s)).collect() };
    let optional = |f: fn(&ImageState) -> &Option<String>| -> Vec<Option<&str>> {
        states.iter().map(|s| f(s).as_deref()).collect()
    };
    let times = |f: fn(&ImageState) -> OffsetDateTime| -> Vec<OffsetDateTime> {
        states.iter().map(|s| f(s)).collect()
    };
    sqlx::query(
        "INSERT INTO images
             (image_id, owner, original_key, status, format, bytes, sha256, width, height,
              spec_version, dominant_color, blurhash, animated, metadata, failure_code,
              failure_reason, uploaded_at, updated_at)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                              $6::int8[], $7::text[], $8::int4[], $9::int4[], $10::int4[],
                              $11::text[], $12::text[], $13::bool[], $14::jsonb[],
                              $15::text[], $16::text[], $17::timestamptz[],
                              $18::timestamptz[])
         ON CONFLICT (image_id) DO UPDATE SET
             owner = EXCLUDED.owner, original_key = EXCLUDED.original_key,
             status = EXCLUDED.status, format = EXCLUDED.format, bytes = EXCLUDED.bytes,
             sha256 = EXCLUDED.sha256, width = EXCLUDED.width, height = EXCLUDED.height,
             spec_version = EXCLUDED.spec_version, dominant_color = EXCLUDED.dominant_color,
             blurhash = EXCLUDED.blurhash, animated = EXCLUDED.animated,
             metadata = EXCLUDED.metadata, failure_code = EXCLUDED.failure_code,
             failure_reason = EXCLUDED.failure_reason, uploaded_at = EXCLUDED.uploaded_at,
             updated_at = EXCLUDED.updated_at",
    )
    .bind(rows.iter().map(|r| r.image_id).collect::<Vec<_>>())
    .bind(text(|s| &s.owner))
    .bind(text(|s| &s.original_key))
    .bind(text(|s| s.status.as_str()))
    .bind(text(|s| &s.format))
    .bind(states.iter().map(|s| s.bytes).collect::<Vec<_>>())
    .bind(text(|s| &s.sha256))
    .bind(states.iter().map(|s| s.width).collect::<Vec<_>>())
    .bind(states.iter().map(|s| s.height).collect::<Vec<_>>())
    .bind(states.iter().map(|s| s.spec_version).collect::<Vec<_>>())
    .bind(optional(|s| &s.dominant_color))
    .bind(optional(|s| &s.blurhash))
    .bind(states.iter().map(|s| s.animated).collect::<Vec<_>>())
    .bind(states.iter().map(|s| Json(&s.metadata)).collect::<Vec<_>>())
    .bind(optional(|s| &s.failure_code))
    .bind(optional(|s| &s.failure_reason))
    .bind(times(|s| s.uploaded_at))
    .bind(times(|s| s.updated_at))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Deletes the variant rows of the images whose set changed, then inserts the fold's rows of
/// those and of new images: one statement each. A variant row's spec version is its image's,
/// as the `ImageProcessed` that listed them set both.
async fn write_variants(tx: &mut PgConnection, rows: &[Changed]) -> Result<(), sqlx::Error> {
    let replaced: Vec<Uuid> = rows
        .iter()
        .filter(|r| r.variants == VariantWrite::Replace)
        .map(|r| r.image_id)
        .collect();
    if !replaced.is_empty() {
        sqlx::query("DELETE FROM variants WHERE image_id = ANY($1)")
            .bind(&replaced)
            .execute(&mut *tx)
            .await?;
    }
    let written: Vec<(Uuid, &Variant, Option<i32>)> = rows
        .iter()
        .filter(|r| r.variants != VariantWrite::Keep)
        .flat_map(|r| {
            r.state
                .variants
                .iter()
                .map(move |v| (r.image_id, v, r.state.spec_version))
        })
        .collect();
    if written.is_empty() {
        return Ok(());
    }
    let text = |f: fn(&Variant) -> &str| -> Vec<&str> { written.iter().map(|w| f(w.1)).collect() };
    sqlx::query(
        "INSERT INTO variants
             (image_id, name, object_key, format, width, height, bytes, sha256, spec_version)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int4[],
                              $6::int4[], $7::int8[], $8::text[], $9::int4[])",
    )
    .bind(written.iter().map(|w| w.0).collect::<Vec<_>>())
    .bind(text(|v| &v.name))
    .bind(text(|v| &v.key))
    .bind(text(|v| &v.format))
    .bind(written.iter().map(|w| w.1.width).collect::<Vec<_>>())
    .bind(written.iter().map(|w| w.1.height).collect::<Vec<_>>())
    .bind(written.iter().map(|w| w.1.bytes).collect::<Vec<_>>())
    .bind(text(|v| &v.sha256))
    .bind(written.iter().map(|w| w.2).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    Ok(())
}
