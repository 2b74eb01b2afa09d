//! Queries against the projector's read models.

use serde::Serialize;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct ImageRow {
    #[serde(skip)]
    pub owner: String,
    pub status: String,
    pub format: String,
    pub bytes: i64,
    pub sha256: String,
    pub width: i32,
    pub height: i32,
    pub spec_version: Option<i32>,
    #[serde(skip)]
    pub failure_code: Option<String>,
    #[serde(skip)]
    pub failure_reason: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub uploaded_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct VariantRow {
    pub name: String,
    #[sqlx(rename = "object_key")]
    pub key: String,
    pub format: String,
    pub width: i32,
    pub height: i32,
    pub bytes: i64,
    pub sha256: String,
}

pub async fn image(pool: &PgPool, image_id: Uuid) -> Result<Option<ImageRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT owner, status, format, bytes, sha256, width, height, spec_version,
                failure_code, failure_reason, uploaded_at, updated_at
         FROM images WHERE image_id = $1",
    )
    .bind(image_id)
    .fetch_optional(pool)
    .await
}

pub async fn variants(pool: &PgPool, image_id: Uuid) -> Result<Vec<VariantRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT name, object_key, format, width, height, bytes, sha256
         FROM variants WHERE image_id = $1 ORDER BY width, name",
    )
    .bind(image_id)
    .fetch_all(pool)
    .await
}

pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await.map(|_| ())
}
