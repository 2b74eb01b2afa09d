//! Optional Schema Registry (Confluent API; Redpanda's built-in one in compose).
//!
//! Without a registry, events are written in Avro single-object encoding and need nothing
//! else. With `IMGPIPE_SCHEMA_REGISTRY_URL` set, writers register the current schema under the
//! topic's `-value` subject (rule BACKWARD_TRANSITIVE) and use the Confluent framing, so
//! `rpk topic consume --use-schema-registry=value` and Redpanda Console decode the records.
//! Readers accept both framings and fetch unknown schema ids from the registry once.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use apache_avro::Schema;
use imgpipe_schemas::{codec, Event, SchemaError, SchemaLookup};
use serde::Deserialize;
use serde_json::json;

use crate::{FromEnv, InfraError};

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RegistryConfig {
    /// Base URL of a Confluent-API schema registry, e.g. `http://redpanda:8081`. Unset: no
    /// registry, single-object encoding.
    #[serde(default)]
    pub url: Option<String>,
}

impl FromEnv for RegistryConfig {
    const PREFIX: &'static str = "IMGPIPE_SCHEMA_REGISTRY_";
}

/// A client of the registry's REST API.
#[derive(Clone)]
pub struct RegistryClient {
    base: String,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct IdResponse {
    id: u32,
}

#[derive(Deserialize)]
struct SchemaResponse {
    schema: String,
}

impl RegistryClient {
    pub fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
        }
    }

    fn error(what: &str, error: impl std::fmt::Display) -> InfraError {
        InfraError::Registry(format!("{what}: {error}"))
    }

    /// Sets the subject's compatibility rule.
    pub async fn set_compatibility(&self, subject: &str, level: &str) -> Result<(), InfraError> {
        self.http
            .put(format!("{}/config/{subject}", self.base))
            .header("content-type", CONTENT_TYPE)
            .json(&json!({ "compatibility": level }))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| Self::error("setting compatibility", e))?;
        Ok(())
    }

    /// Registers `schema` under `subject` (a no-op returning the existing id when it is
    /// registered already).
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, InfraError> {
        let response: IdResponse = self
            .http
            .post(format!("{}/subjects/{subject}/versions", self.base))
            .header("content-type", CONTENT_TYPE)
            .json(&json!({ "schema": schema }))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| Self::error("registering the schema", e))?
            .json()
            .await
            .map_err(|e| Self::error("reading the registry's answer", e))?;
        Ok(response.id)
    }

    /// The schema with this id; `None` when the registry says it has none (404).
    pub async fn schema(&self, id: u32) -> Result<Option<String>, InfraError> {
        let response = self
            .http
            .get(format!("{}/schemas/ids/{id}", self.base))
            .send()
            .await
            .map_err(|e| Self::error(&format!("fetching schema {id}"), e))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let response: SchemaResponse = response
            .error_for_status()
            .map_err(|e| Self::error(&format!("fetching schema {id}"), e))?
            .json()
            .await
            .map_err(|e| Self::error("reading the registry's answer", e))?;
        Ok(Some(response.schema))
    }
}

/// Encodes and decodes events in the framing the deployment uses.
#[derive(Clone, Default)]
pub struct EventCodec {
    registry: Option<RegistryClient>,
    /// The current schema's id, when writing through a registry.
    writer_id: Option<u32>,
    known: Arc<RwLock<HashMap<u32, Schema>>>,
}

struct Known<'a>(&'a HashMap<u32, Schema>);

impl SchemaLookup for Known<'_> {
    fn schema_by_id(&self, id: u32) -> Option<&Schema> {
        self.0.get(&id)
    }
}

impl EventCodec {
    /// Single-object encoding, no registry.
    pub fn single_object() -> Self {
        Self::default()
    }

    /// With a registry URL configured: sets BACKWARD_TRANSITIVE on the topic's value subject
    /// and registers the current schema (writers call this at start).
    pub async fn connect(config: &RegistryConfig, topic: &str) -> Result<Self, InfraError> {
        let Some(url) = &config.url else {
            return Ok(Self::single_object());
        };
        let registry = RegistryClient::new(url);
        let subject = format!("{topic}-value");
        registry
            .set_compatibility(&subject, "BACKWARD_TRANSITIVE")
            .await?;
        let current = codec::current_schema();
        let id = registry
            .register(&subject, &current.canonical_form())
            .await?;
        let mut known = HashMap::new();
        known.insert(id, current.clone());
        tracing::info!(subject = %subject, schema_id = id, "event schema registered");
        Ok(Self {
            registry: Some(registry),
            writer_id: Some(id),
            known: Arc::new(RwLock::new(known)),
        })
    }

    /// A reader that can resolve Confluent ids through `registry` but writes nothing.
    pub fn reader(config: &RegistryConfig) -> Self {
        Self {
            registry: config.url.as_deref().map(RegistryClient::new),
            ..Self::default()
        }
    }

    pub fn content_type(&self) -> &'static str {
        if self.writer_id.is_some() {
            imgpipe_schemas::CONTENT_TYPE_CONFLUENT
        } else {
            imgpipe_schemas::CONTENT_TYPE
        }
    }

    pub fn encode(&self, event: &Event) -> Result<Vec<u8>, SchemaError> {
        match self.writer_id {
            Some(id) => imgpipe_schemas::encode_confluent(event, id),
            None => imgpipe_schemas::encode(event),
        }
    }

    /// Decodes either framing. An unknown Confluent id is fetched from the registry once; a
    /// registry that does not answer is a transient [`InfraError`], bytes that are not an
    /// event are a [`SchemaError`].
    pub async fn decode(&self, bytes: &[u8]) -> Result<Result<Event, SchemaError>, InfraError> {
        if let Ok(imgpipe_schemas::Framing::Confluent { schema_id }) = codec::framing(bytes) {
            let missing = !self.read_known().contains_key(&schema_id);
            if missing {
                if let Some(registry) = &self.registry {
                    match registry.schema(schema_id).await? {
                        None => return Ok(Err(SchemaError::UnknownSchemaId(schema_id))),
                        Some(text) => match Schema::parse_str(&text) {
                            Ok(schema) => {
                                self.write_known().insert(schema_id, schema);
                            }
                            Err(error) => return Ok(Err(SchemaError::Avro(error))),
                        },
                    }
                }
            }
        }
        let known = self.read_known();
        Ok(imgpipe_schemas::decode_with(bytes, &Known(&known)))
    }

    fn read_known(&self) -> std::sync::RwLockReadGuard<'_, HashMap<u32, Schema>> {
        self.known
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write_known(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<u32, Schema>> {
        self.known
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
