//! PostgreSQL connections. Every connection's `search_path` is the configured schema, so a
//! deployment (or a test run) keeps all its tables in one schema of a shared database.

use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::{FromEnv, InfraError};

#[derive(Clone, Deserialize)]
pub struct DatabaseConfig {
    #[serde(default = "default_url")]
    pub url: String,
    /// Schema holding imgpipe's tables (created by `imgpipe migrate`).
    #[serde(default = "default_schema")]
    pub schema: String,
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
}

/// The URL's password is redacted.
impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &crate::config::redact_url_password(&self.url))
            .field("schema", &self.schema)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

impl FromEnv for DatabaseConfig {
    const PREFIX: &'static str = "IMGPIPE_DATABASE_";
}

fn default_url() -> String {
    "postgres://postgres@127.0.0.1:5432/postgres".into()
}

fn default_schema() -> String {
    "imgpipe".into()
}

fn default_max_connections() -> u32 {
    10
}

impl DatabaseConfig {
    fn connect_options(&self) -> Result<PgConnectOptions, InfraError> {
        if !is_identifier(&self.schema) {
            return Err(InfraError::Config(format!(
                "IMGPIPE_DATABASE_SCHEMA must be a plain identifier ([a-z0-9_]), got {:?}",
                self.schema
            )));
        }
        let options = PgConnectOptions::from_str(&self.url)
            .map_err(|error| InfraError::Config(format!("IMGPIPE_DATABASE_URL: {error}")))?;
        Ok(options.options([("search_path", self.schema.as_str())]))
    }

    /// A pool that connects lazily, so a service starts (and reports not-ready) while the
    /// database is down.
    pub fn pool(&self) -> Result<PgPool, InfraError> {
        Ok(PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(self.connect_options()?))
    }

    /// Creates the schema if needed; migrations then create the tables inside it.
    pub async fn ensure_schema(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        // The schema name was checked to be a plain identifier, so quoting it is safe.
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS \"{}\"", self.schema))
            .execute(pool)
            .await?;
        Ok(())
    }
}

fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_must_be_a_plain_identifier() {
        for bad in ["", "Public", "a;drop", "1abc", "x\"y"] {
            let config = DatabaseConfig {
                url: default_url(),
                schema: bad.into(),
                max_connections: 1,
            };
            assert!(config.pool().is_err(), "{bad:?} must be rejected");
        }
    }
}
