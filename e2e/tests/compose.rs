//! No Docker engine runs here, so compose.yaml is checked against the code instead: every
//! variable a service gets is one its config reads, the init job creates exactly the topics
//! in redpanda/topics.conf, every service has a healthcheck and resource limits, and the
//! workers can be scaled (`--scale processor=3`).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use imgpipe_e2e::tools;
use imgpipe_infra::telemetry::LogConfig;
use imgpipe_infra::topics::{self, TopicSpec};
use imgpipe_infra::{DatabaseConfig, FromEnv, KafkaConfig, S3Config};
use serde_norway::Value;

fn root() -> PathBuf {
    tools::workspace_root()
}

fn compose() -> Value {
    let text = std::fs::read_to_string(root().join("compose.yaml")).expect("compose.yaml");
    let mut value: Value = serde_norway::from_str(&text).expect("compose.yaml is YAML");
    value.apply_merge().expect("merge keys resolve");
    value
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose["services"]
        .get(name)
        .unwrap_or_else(|| panic!("compose.yaml has no service {name}"))
}

fn environment(service: &Value) -> BTreeSet<String> {
    let mut service = service.clone();
    // Nested merge keys inside `environment` need their own pass.
    service.apply_merge().expect("merge keys resolve");
    service["environment"]
        .as_mapping()
        .map(|env| {
            env.keys()
                .map(|k| k.as_str().expect("env names are strings").to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn assert_reads_all(service_name: &str, given: &BTreeSet<String>, read: &[String]) {
    let unknown = tools::unread_vars(given, read);
    assert!(
        unknown.is_empty(),
        "compose gives {service_name} variables its config never reads: {unknown:?}"
    );
}

#[test]
fn every_variable_a_service_gets_is_one_its_config_reads() {
    let compose = compose();
    let cases = [
        ("ingest", imgpipe_ingest::Config::env_vars()),
        ("processor", imgpipe_processor::Config::env_vars()),
        ("projector", imgpipe_projector::Config::env_vars()),
        (
            "init-storage",
            [
                KafkaConfig::env_vars(),
                S3Config::env_vars(),
                DatabaseConfig::env_vars(),
                LogConfig::env_vars(),
            ]
            .concat(),
        ),
    ];
    for (name, read) in cases {
        let given = environment(service(&compose, name));
        assert!(!given.is_empty(), "{name} gets no environment");
        assert_reads_all(name, &given, &read);
    }
}

#[test]
fn services_run_their_own_binary_with_a_healthcheck_and_limits() {
    let compose = compose();
    for name in ["ingest", "processor", "projector"] {
        let service = service(&compose, name);
        assert_eq!(
            service["command"][0].as_str(),
            Some(format!("imgpipe-{name}").as_str()),
            "{name} command"
        );
        assert!(
            service["healthcheck"]["test"].is_sequence(),
            "{name} has a healthcheck"
        );
        let limits = &service["deploy"]["resources"]["limits"];
        assert!(
            limits["cpus"].is_string() && limits["memory"].is_string(),
            "{name} has resource limits"
        );
    }
    assert!(
        service(&compose, "postgres").get("ports").is_none(),
        "Postgres is not published on a host port"
    );
    for name in ["redpanda", "console", "postgres", "minio", "init-topics"] {
        let image = service(&compose, name)["image"]
            .as_str()
            .unwrap_or_default();
        assert!(
            image.contains(':') && !image.ends_with(":latest"),
            "{name} image is pinned: {image}"
        );
    }
}

/// Runs redpanda/create-topics.sh with a stand-in `rpk` that records its arguments.
/// `docker compose up --scale processor=3` (or projector) needs the scaled services to have
/// neither a fixed container name nor a fixed host port: the second replica could not take
/// either.
#[test]
fn the_workers_can_be_scaled() {
    let compose = compose();
    for name in ["processor", "projector"] {
        let service = service(&compose, name);
        assert!(
            service.get("container_name").is_none(),
            "{name} has a fixed container_name"
        );
        assert!(
            service.get("ports").is_none(),
            "{name} publishes host ports; its replicas would collide"
        );
    }
}

fn topics_created_by_init_job() -> Vec<TopicSpec> {
    let dir = std::env::temp_dir().join(format!("imgpipe-rpk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("calls");
    let rpk = dir.join("rpk");
    std::fs::write(
        &rpk,
        format!("#!/bin/sh\necho \"$@\" >> '{}'\n", log.display()),
    )
    .unwrap();
    Command::new("chmod").arg("+x").arg(&rpk).status().unwrap();
    let _ = std::fs::remove_file(&log);

    let compose = compose();
    let init = service(&compose, "init-topics");
    let env = init["environment"].as_mapping().unwrap();
    let mount = init["volumes"][0].as_str().unwrap();
    let (host, container) = mount.split_once(':').unwrap();
    assert_eq!(host, "./redpanda", "init job mounts redpanda/");
    let container_dir = container.trim_end_matches(":ro");
    let script = init["entrypoint"][1].as_str().unwrap();
    let topics_file = env[&Value::from("TOPICS_FILE")].as_str().unwrap();
    // Map the container paths back to the repository.
    let to_host = |path: &str| {
        root().join("redpanda").join(
            path.strip_prefix(container_dir)
                .unwrap()
                .trim_start_matches('/'),
        )
    };

    let status = Command::new("bash")
        .arg(to_host(script))
        .env("TOPICS_FILE", to_host(topics_file))
        .env(
            "PATH",
            format!("{}:{}", dir.display(), std::env::var("PATH").unwrap()),
        )
        .status()
        .expect("bash runs");
    assert!(status.success());
    let calls = std::fs::read_to_string(&log).unwrap();
    calls
        .lines()
        .map(|line| {
            let args: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(&args[..2], ["topic", "create"], "{line}");
            let mut spec = TopicSpec {
                name: args[2].to_string(),
                partitions: 0,
                replication: 0,
                configs: Vec::new(),
            };
            for pair in args[3..].chunks(2) {
                match pair[0] {
                    "--partitions" => spec.partitions = pair[1].parse().unwrap(),
                    "--replicas" => spec.replication = pair[1].parse().unwrap(),
                    "--topic-config" => {
                        let (k, v) = pair[1].split_once('=').unwrap();
                        spec.configs.push((k.to_string(), v.to_string()));
                    }
                    other => panic!("unexpected rpk flag {other}"),
                }
            }
            spec
        })
        .collect()
}

#[test]
fn the_init_job_creates_exactly_the_topics_the_code_defines() {
    assert_eq!(topics_created_by_init_job(), topics::bundled().unwrap());
}
