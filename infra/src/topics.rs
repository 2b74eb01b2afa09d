//! The topic definitions in `redpanda/topics.conf`, shared with the compose init job.

use crate::InfraError;

/// The definitions this build was compiled with.
pub const TOPICS_CONF: &str = include_str!("../../redpanda/topics.conf");

/// Base names of the topics the code uses; each must be defined in `topics.conf`.
pub const EVENTS: &str = "imgpipe.events";
pub const DEAD_LETTER: &str = "imgpipe.events.dlq";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication: i32,
    pub configs: Vec<(String, String)>,
}

/// Parses `topics.conf`: one topic a line, `name partitions replicas key=value,...`; `#`
/// starts a comment.
pub fn parse(text: &str) -> Result<Vec<TopicSpec>, InfraError> {
    let mut specs = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = |what: &str| InfraError::Topics(format!("line {}: {what}: {line}", number + 1));
        let columns: Vec<&str> = line.split_whitespace().collect();
        let [name, partitions, replication, rest @ ..] = columns.as_slice() else {
            return Err(bad("expected name, partitions, replicas"));
        };
        let configs = match rest {
            [] => Vec::new(),
            [configs] => configs
                .split(',')
                .map(|pair| {
                    pair.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .ok_or_else(|| bad("config is not key=value"))
                })
                .collect::<Result<_, _>>()?,
            _ => return Err(bad("configs must be one comma-separated column")),
        };
        specs.push(TopicSpec {
            name: name.to_string(),
            partitions: partitions.parse().map_err(|_| bad("partitions"))?,
            replication: replication.parse().map_err(|_| bad("replicas"))?,
            configs,
        });
    }
    Ok(specs)
}

/// The bundled definitions.
pub fn bundled() -> Result<Vec<TopicSpec>, InfraError> {
    parse(TOPICS_CONF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_definitions_cover_every_topic_the_code_uses() {
        let specs = bundled().unwrap();
        for name in [EVENTS, DEAD_LETTER] {
            let spec = specs.iter().find(|s| s.name == name).expect(name);
            assert!(spec.partitions >= 1);
            // At least 100 years, and never -1: Tansu 0.6 reads a negative retention as "delete
            // every record" (see topics.conf).
            let retention_ms = spec
                .configs
                .iter()
                .find(|(key, _)| key == "retention.ms")
                .and_then(|(_, value)| value.parse::<i64>().ok());
            assert!(
                retention_ms.is_some_and(|ms| ms >= 100 * 365 * 24 * 3600 * 1000),
                "{name} must keep everything, with a positive retention.ms: {retention_ms:?}"
            );
        }
    }

    #[test]
    fn rejects_malformed_lines() {
        assert!(parse("only-a-name").is_err());
        assert!(parse("t x 1").is_err());
        assert!(parse("t 1 1 retention.ms").is_err());
        assert_eq!(parse("# nothing\n\n").unwrap(), vec![]);
    }
}
