//! What the sweep reads and changes: the bucket, the read model, the log. Behind a trait so the
//! merge can be unit-tested against a fake; [`StoreBackend`] is the real one.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use imgpipe_infra::kafka::EventProducer;
use imgpipe_infra::log_reader::LogReader;
use imgpipe_infra::registry::{EventCodec, RegistryConfig};
use imgpipe_infra::storage::{KeyNotDeleted, ObjectInfo, ObjectPage, ObjectStore};
use imgpipe_infra::{DatabaseConfig, KafkaConfig, S3Config};
use imgpipe_schemas::Event;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{ImageState, Kind, Missing, Reference};
use crate::ProjectorError;

pub trait Backend: Sync {
    /// Where objects of `kind` live (with the deployment's key prefix).
    fn prefix(&self, kind: Kind) -> String;

    /// One page of the objects under `prefix`, in key order.
    fn list_objects(
        &self,
        prefix: &str,
        continuation: Option<String>,
        max_keys: i32,
    ) -> impl Future<Output = Result<ObjectPage, ProjectorError>> + Send;

    /// Up to `limit` keys of `kind` the read model names, with their images, sorted by key
    /// bytewise (as S3 sorts), after `after`.
    fn references(
        &self,
        kind: Kind,
        after: &str,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<Reference>, ProjectorError>> + Send;

    /// The images among `ids` the read model knows.
    fn images(
        &self,
        ids: &[Uuid],
    ) -> impl Future<Output = Result<HashMap<Uuid, ImageState>, ProjectorError>> + Send;

    /// For each of `keys` that rows name (as original or variant), the images whose rows
    /// name it, deleted ones included; a key no row names is absent. One query for them all.
    fn references_to(
        &self,
        keys: &[String],
    ) -> impl Future<Output = Result<HashMap<String, Vec<ImageState>>, ProjectorError>> + Send;

    fn head(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<ObjectInfo>, ProjectorError>> + Send;

    /// Appends an event and waits for the broker's acknowledgement.
    fn append(&self, event: &Event) -> impl Future<Output = Result<(), ProjectorError>> + Send;

    /// Removes up to [`imgpipe_infra::storage::DELETE_MANY_MAX_KEYS`] objects in one request; the keys it could not
    /// remove. `Err`: the request failed as a whole, and any of them may or may not be gone.
    fn delete_many(
        &self,
        keys: &[String],
    ) -> impl Future<Output = Result<Vec<KeyNotDeleted>, ProjectorError>> + Send;

    /// Records (or refreshes) a missing object in `missing_objects`.
    fn mark_missing(
        &self,
        missing: &Missing,
    ) -> impl Future<Output = Result<(), ProjectorError>> + Send;

    /// Drops the marks no sweep since `at` has refreshed; how many.
    fn clear_marks_before(
        &self,
        at: OffsetDateTime,
    ) -> impl Future<Output = Result<u64, ProjectorError>> + Send;

    /// Waits up to `wait` for the projector to apply every event in the log now; the events
    /// it still has not applied then (0: caught up).
    fn read_model_lag(
        &self,
        wait: Duration,
    ) -> impl Future<Output = Result<u64, ProjectorError>> + Send;
}

/// The real bucket, read model and log.
pub struct StoreBackend {
    pool: PgPool,
    store: ObjectStore,
    events: EventProducer,
    events_topic: String,
    /// Reads the log's ends. It never subscribes, so it never joins a group.
    log: LogReader,
}

impl StoreBackend {
    pub fn new(
        pool: PgPool,
        store: ObjectStore,
        kafka: &KafkaConfig,
        codec: EventCodec,
        client_id: &str,
    ) -> Result<Self, ProjectorError> {
        let log = LogReader::new(
            kafka,
            &format!("{client_id}-lag"),
            crate::GROUP,
            &kafka.topics().events,
        )?;
        Ok(Self {
            pool,
            store,
            events: EventProducer::new(kafka, client_id, codec)?,
            events_topic: kafka.topics().events,
            log,
        })
    }

    /// Everything from the deployment's configuration (the operator command's way in).
    pub async fn connect(
        kafka: &KafkaConfig,
        s3: &S3Config,
        database: &DatabaseConfig,
        registry: &RegistryConfig,
        client_id: &str,
    ) -> Result<Self, ProjectorError> {
        let codec = EventCodec::connect(registry, &kafka.topics().events).await?;
        Self::new(
            database.pool()?,
            ObjectStore::connect(s3).await,
            kafka,
            codec,
            client_id,
        )
    }
}

impl Backend for StoreBackend {
    fn prefix(&self, kind: Kind) -> String {
        match kind {
            Kind::Original => self.store.originals_prefix(),
            Kind::Variant => self.store.all_variants_prefix(),
        }
    }

    async fn list_objects(
        &self,
        prefix: &str,
        continuation: Option<String>,
        max_keys: i32,
    ) -> Result<ObjectPage, ProjectorError> {
        Ok(self.store.list_page(prefix, continuation, max_keys).await?)
    }

    async fn references(
        &self,
        kind: Kind,
        after: &str,
        limit: i64,
    ) -> Result<Vec<Reference>, ProjectorError> {
        // COLLATE "C" everywhere: the bytewise order S3 lists in, and the one the indexes of
        // the orphan-sweep migration are built with.
        let sql = match kind {
            Kind::Original => {
                r#"SELECT original_key, image_id, status, updated_at FROM images
                   WHERE original_key COLLATE "C" > $1
                   ORDER BY original_key COLLATE "C" LIMIT $2"#
            }
            Kind::Variant => {
                r#"SELECT v.object_key, v.image_id, i.status, i.updated_at
                   FROM variants v JOIN images i ON i.image_id = v.image_id
                   WHERE v.object_key COLLATE "C" > $1
                   ORDER BY v.object_key COLLATE "C" LIMIT $2"#
            }
        };
        let rows: Vec<(String, Uuid, String, OffsetDateTime)> = sqlx::query_as(sql)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(key, image_id, status, updated_at)| Reference {
                key,
                image: ImageState {
                    image_id,
                    status,
                    updated_at,
                },
            })
            .collect())
    }

    async fn images(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, ImageState>, ProjectorError> {
        let rows: Vec<(Uuid, String, OffsetDateTime)> = sqlx::query_as(
            "SELECT image_id, status, updated_at FROM images WHERE image_id = ANY($1)",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(image_id, status, updated_at)| {
                (
                    image_id,
                    ImageState {
                        image_id,
                        status,
                        updated_at,
                    },
                )
            })
            .collect())
    }

    async fn references_to(
        &self,
        keys: &[String],
    ) -> Result<HashMap<String, Vec<ImageState>>, ProjectorError> {
        // In the "C" collation, so the sweep migration's indexes answer it.
        let rows: Vec<(String, Uuid, String, OffsetDateTime)> = sqlx::query_as(
            r#"SELECT original_key, image_id, status, updated_at FROM images
               WHERE original_key COLLATE "C" = ANY($1)
               UNION ALL
               SELECT v.object_key, i.image_id, i.status, i.updated_at
               FROM variants v JOIN images i ON i.image_id = v.image_id
               WHERE v.object_key COLLATE "C" = ANY($1)"#,
        )
        .bind(keys)
        .fetch_all(&self.pool)
        .await?;
        let mut by_key: HashMap<String, Vec<ImageState>> = HashMap::new();
        for (key, image_id, status, updated_at) in rows {
            by_key.entry(key).or_default().push(ImageState {
                image_id,
                status,
                updated_at,
            });
        }
        Ok(by_key)
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, ProjectorError> {
        Ok(self.store.head(key).await?)
    }

    async fn append(&self, event: &Event) -> Result<(), ProjectorError> {
        self.events.publish(event).await?;
        Ok(())
    }

    async fn delete_many(&self, keys: &[String]) -> Result<Vec<KeyNotDeleted>, ProjectorError> {
        Ok(self.store.delete_many(keys).await?)
    }

    async fn mark_missing(&self, missing: &Missing) -> Result<(), ProjectorError> {
        sqlx::query(
            "INSERT INTO missing_objects (object_key, image_id, kind, first_seen, last_seen)
             VALUES ($1, $2, $3, now(), now())
             ON CONFLICT (object_key) DO UPDATE
             SET image_id = EXCLUDED.image_id, kind = EXCLUDED.kind, last_seen = now()",
        )
        .bind(&missing.key)
        .bind(missing.image_id)
        .bind(missing.kind.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn clear_marks_before(&self, at: OffsetDateTime) -> Result<u64, ProjectorError> {
        Ok(
            sqlx::query("DELETE FROM missing_objects WHERE last_seen < $1")
                .bind(at)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    async fn read_model_lag(&self, wait: Duration) -> Result<u64, ProjectorError> {
        // Events appended later cannot concern objects older than the grace period (an upload's
        // event is appended within the produce timeout of its original being stored), so
        // reaching the ends of now is enough.
        let ends = self.log.ends().await?;
        // The projector's positions commit with its read models (projection_positions), so
        // they say exactly what the read model has applied; Kafka's committed offsets would
        // only trail them.
        let deadline = Instant::now() + wait;
        loop {
            let applied = crate::positions::load(&self.pool, &self.events_topic).await?;
            let lag: i64 = ends.lag(&applied).iter().map(|(_, lag)| lag).sum();
            if lag == 0 || Instant::now() >= deadline {
                return Ok(u64::try_from(lag).unwrap_or(0));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
