//! Typed configuration from `IMGPIPE_*` environment variables (documented in `.env.example`).
//!
//! Each struct reads the variables under its own prefix, so a service config is a handful of
//! small structs rather than one flat list, and `env_vars()` can list every variable a service
//! reads (the compose test checks compose.yaml against it).

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::InfraError;

/// A config struct filled from the environment variables under `PREFIX`.
pub trait FromEnv: DeserializeOwned {
    /// E.g. `IMGPIPE_KAFKA_`; the field `brokers` is then read from `IMGPIPE_KAFKA_BROKERS`.
    const PREFIX: &'static str;

    fn from_env() -> Result<Self, InfraError> {
        Self::from_iter(std::env::vars())
    }

    /// Like [`FromEnv::from_env`] but from given pairs, for tests.
    fn from_iter(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, InfraError> {
        envy::prefixed(Self::PREFIX)
            .from_iter(vars)
            .map_err(|error| {
                // envy names the variable without its prefix; put it back so the message
                // names exactly what to fix.
                let message = error
                    .to_string()
                    .replace("provided by ", &format!("provided by {}", Self::PREFIX))
                    .replace("for field ", &format!("for {}", Self::PREFIX));
                InfraError::Config(message)
            })
    }

    /// Every environment variable this struct reads.
    fn env_vars() -> Vec<String> {
        serde_aux::serde_introspection::serde_introspect::<Self>()
            .iter()
            .map(|field| format!("{}{}", Self::PREFIX, field.to_uppercase()))
            .collect()
    }
}

/// A credential read from the environment: its `Debug` (and so every config struct's, and every
/// log line that prints one) shows `[redacted]`; [`Secret::expose`] is the one way to the value.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self::new(value)
    }
}

/// What a redacted secret shows instead of itself.
pub const REDACTED: &str = "[redacted]";

/// `url` with the password of its userinfo (`scheme://user:password@host`) replaced by
/// [`REDACTED`], for `Debug` of a config holding a connection URL.
pub fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:{REDACTED}@{host}{path}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// The Kafka-API broker (Redpanda in compose, Tansu locally).
#[derive(Debug, Clone, Deserialize)]
pub struct KafkaConfig {
    /// Comma-separated host:port list.
    #[serde(default = "default_brokers")]
    pub brokers: String,
    /// Put in front of every topic and consumer group name, so several deployments (or test
    /// runs) can share one broker.
    #[serde(default)]
    pub topic_prefix: String,
    /// How long a produce may wait for the broker's acknowledgement before it fails.
    #[serde(default = "default_produce_timeout_ms")]
    pub produce_timeout_ms: u64,
    /// The longest a consumer's fetch waits for records. A broker that long-polls (Redpanda,
    /// Kafka) answers as soon as a record arrives; Tansu 0.6 waits this long whenever the
    /// partition was empty at the request, so it is added to every hop of an idle pipeline.
    #[serde(default = "default_fetch_wait_ms")]
    pub fetch_wait_ms: u64,
    /// How long a consumer may leave lag unserved, with no record arriving or in hand and no
    /// known outage, before it counts as stalled: it then leaves its group and rejoins with a
    /// new client, and reports not ready (`/healthz` fails after four times as long). A few
    /// session timeouts (10 s), well above the lag measurement's interval (5-10 s).
    #[serde(default = "default_stall_secs")]
    pub stall_secs: u64,
    /// librdkafka's `security.protocol`: plaintext (unset), ssl, sasl_plaintext or sasl_ssl.
    #[serde(default)]
    pub security_protocol: Option<String>,
    /// librdkafka's `sasl.mechanism`: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
    #[serde(default)]
    pub sasl_mechanism: Option<String>,
    #[serde(default)]
    pub sasl_username: Option<String>,
    #[serde(default)]
    pub sasl_password: Option<Secret>,
    /// PEM file of the CA that signed the brokers' certificates; unset: the system's CAs.
    #[serde(default)]
    pub ssl_ca_location: Option<String>,
    /// Static group membership (KIP-345, librdkafka's `group.instance.id`): this instance's
    /// stable name in its consumer group, e.g. a StatefulSet pod's name. A member that restarts
    /// under the same name within the session timeout gets its partitions back without a
    /// rebalance of the others; a member that is gone keeps its partitions until its session
    /// lapses. Unset or empty: dynamic membership. Only the group's consuming member uses it;
    /// readers that never join (lag, tools) do not.
    #[serde(default)]
    pub group_instance_id: Option<String>,
}

impl KafkaConfig {
    pub fn stall_after(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.stall_secs.max(1))
    }
}

impl FromEnv for KafkaConfig {
    const PREFIX: &'static str = "IMGPIPE_KAFKA_";
}

fn default_brokers() -> String {
    "127.0.0.1:19092".into()
}

fn default_produce_timeout_ms() -> u64 {
    10_000
}

fn default_fetch_wait_ms() -> u64 {
    100
}

fn default_stall_secs() -> u64 {
    30
}

/// The S3-compatible object store.
#[derive(Debug, Clone, Deserialize)]
pub struct S3Config {
    /// Endpoint URL for S3-compatible servers; unset means AWS.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Where clients reach the store, when not where the services do (compose: `minio:9000`
    /// inside, `localhost:9000` outside). Used only for presigned URLs, whose signature
    /// covers the host; unset means `endpoint`.
    #[serde(default)]
    pub public_endpoint: Option<String>,
    #[serde(default = "default_region")]
    pub region: String,
    #[serde(default = "default_bucket")]
    pub bucket: String,
    /// Static credentials; unset means the AWS default chain.
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<Secret>,
    /// Put in front of every object key, so several deployments can share a bucket.
    #[serde(default)]
    pub key_prefix: String,
    /// Path-style URLs (`endpoint/bucket/key`), which most S3-compatible servers need.
    #[serde(default = "default_true")]
    pub force_path_style: bool,
}

impl FromEnv for S3Config {
    const PREFIX: &'static str = "IMGPIPE_S3_";
}

fn default_region() -> String {
    "us-east-1".into()
}

fn default_bucket() -> String {
    "imgpipe".into()
}

fn default_true() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn reads_prefixed_variables_and_defaults_the_rest() {
        let kafka = KafkaConfig::from_iter(vars(&[
            ("IMGPIPE_KAFKA_BROKERS", "b:9092"),
            ("IMGPIPE_KAFKA_PRODUCE_TIMEOUT_MS", "250"),
            ("IMGPIPE_S3_BUCKET", "not-mine"),
        ]))
        .unwrap();
        assert_eq!(kafka.brokers, "b:9092");
        assert_eq!(kafka.produce_timeout_ms, 250);
        assert_eq!(kafka.topic_prefix, "");
    }

    #[test]
    fn a_malformed_value_names_the_variable() {
        let error = KafkaConfig::from_iter(vars(&[("IMGPIPE_KAFKA_PRODUCE_TIMEOUT_MS", "soon")]))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("IMGPIPE_KAFKA_PRODUCE_TIMEOUT_MS"),
            "{error}"
        );
        assert!(error.contains("soon"), "{error}");
    }

    #[test]
    fn lists_every_variable_it_reads() {
        let vars = S3Config::env_vars();
        assert!(vars.contains(&"IMGPIPE_S3_ENDPOINT".to_string()));
        assert!(vars.contains(&"IMGPIPE_S3_FORCE_PATH_STYLE".to_string()));
        assert!(vars.contains(&"IMGPIPE_S3_PUBLIC_ENDPOINT".to_string()));
        assert_eq!(vars.len(), 8);
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let kafka = KafkaConfig::from_iter(vars(&[
            ("IMGPIPE_KAFKA_SASL_USERNAME", "svc"),
            ("IMGPIPE_KAFKA_SASL_PASSWORD", "kafka-hunter2"),
        ]))
        .unwrap();
        let s3 = S3Config::from_iter(vars(&[
            ("IMGPIPE_S3_ACCESS_KEY_ID", "imgpipe"),
            ("IMGPIPE_S3_SECRET_ACCESS_KEY", "s3-hunter2"),
        ]))
        .unwrap();
        assert_eq!(
            kafka.sasl_password.as_ref().map(Secret::expose),
            Some("kafka-hunter2")
        );
        let database = crate::DatabaseConfig::from_iter(vars(&[(
            "IMGPIPE_DATABASE_URL",
            "postgres://imgpipe:pg-hunter2@db:5432/imgpipe",
        )]))
        .unwrap();
        for debug in [
            format!("{kafka:?}"),
            format!("{s3:?}"),
            format!("{database:?}"),
        ] {
            assert!(!debug.contains("hunter2"), "{debug}");
            assert!(debug.contains(REDACTED), "{debug}");
        }
    }

    #[test]
    fn kafka_clients_get_the_tls_and_sasl_settings_when_given() {
        let plain = KafkaConfig::from_iter(vars(&[("IMGPIPE_KAFKA_SECURITY_PROTOCOL", "")]))
            .unwrap()
            .client_config("c");
        for key in ["security.protocol", "sasl.mechanism", "sasl.password"] {
            assert_eq!(plain.get(key), None, "{key}");
        }
        let secured = KafkaConfig::from_iter(vars(&[
            ("IMGPIPE_KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
            ("IMGPIPE_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
            ("IMGPIPE_KAFKA_SASL_USERNAME", "svc"),
            ("IMGPIPE_KAFKA_SASL_PASSWORD", "pw"),
            ("IMGPIPE_KAFKA_SSL_CA_LOCATION", "/etc/ca.pem"),
        ]))
        .unwrap()
        .client_config("c");
        assert_eq!(secured.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(secured.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(secured.get("sasl.username"), Some("svc"));
        assert_eq!(secured.get("sasl.password"), Some("pw"));
        assert_eq!(secured.get("ssl.ca.location"), Some("/etc/ca.pem"));
    }

    #[test]
    fn librdkafka_is_built_with_tls_and_scram() {
        // A client is created without reaching a broker; a librdkafka built without OpenSSL
        // refuses `ssl`/`sasl_ssl` and SCRAM here, at configuration time.
        for (protocol, mechanism) in [
            ("ssl", ""),
            ("sasl_ssl", "SCRAM-SHA-512"),
            ("sasl_plaintext", "PLAIN"),
        ] {
            let config = KafkaConfig::from_iter(vars(&[
                ("IMGPIPE_KAFKA_SECURITY_PROTOCOL", protocol),
                ("IMGPIPE_KAFKA_SASL_MECHANISM", mechanism),
                ("IMGPIPE_KAFKA_SASL_USERNAME", "svc"),
                ("IMGPIPE_KAFKA_SASL_PASSWORD", "pw"),
            ]))
            .unwrap();
            let created: Result<rdkafka::producer::BaseProducer, _> =
                config.client_config("c").create();
            assert!(
                created.is_ok(),
                "{protocol} {mechanism}: {:?}",
                created.err()
            );
        }
    }

    #[test]
    fn a_url_password_is_redacted_and_the_rest_kept() {
        assert_eq!(
            redact_url_password("postgres://imgpipe:pg-hunter2@db:5432/imgpipe?sslmode=require"),
            "postgres://imgpipe:[redacted]@db:5432/imgpipe?sslmode=require"
        );
        assert_eq!(
            redact_url_password("postgres://user@db/x"),
            "postgres://user@db/x"
        );
        assert_eq!(redact_url_password("not a url"), "not a url");
    }
}
