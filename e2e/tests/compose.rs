//! No Docker engine runs here, so compose.yaml is checked against the code instead: every
//! variable a service gets is one its config reads, the init job creates exactly the topics
//! in redpanda/topics.conf, every service has a healthcheck and resource limits, the workers
//! can be scaled (`--scale processor=3`), published ports are on loopback, mounted files
//! exist, Prometheus scrapes each service (every replica) where its `/metrics` listens, and
//! ingest and the webhooks service share the webhook sealing key and address policy.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use imgpipe_e2e::tools;
use imgpipe_infra::telemetry::LogConfig;
use imgpipe_infra::topics::{self, TopicSpec};
use imgpipe_infra::{DatabaseConfig, FromEnv, KafkaConfig, S3Config};
use imgpipe_webhooks::config::WebhookSecurity;
use serde_norway::Value;

/// The services, each running its own binary `imgpipe-<name>`.
const SERVICES: [&str; 4] = ["ingest", "processor", "projector", "webhooks"];
/// The services that scale (`--scale processor=3`): consumer-group members, found by DNS.
const WORKERS: [&str; 3] = ["processor", "projector", "webhooks"];

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
        ("webhooks", imgpipe_webhooks::Config::env_vars()),
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
    for name in SERVICES {
        assert_eq!(
            service(&compose, name)["command"][0].as_str(),
            Some(format!("imgpipe-{name}").as_str()),
            "{name} command"
        );
    }
    for name in SERVICES.into_iter().chain(["prometheus", "grafana"]) {
        let service = service(&compose, name);
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
    for name in [
        "redpanda",
        "console",
        "postgres",
        "minio",
        "init-topics",
        "prometheus",
        "grafana",
    ] {
        let image = service(&compose, name)["image"]
            .as_str()
            .unwrap_or_default();
        assert!(
            image.contains(':') && !image.ends_with(":latest"),
            "{name} image is pinned: {image}"
        );
    }
}

/// A variable's value in a service's environment, if it has one.
fn env_value(service: &Value, var: &str) -> Option<String> {
    let mut service = service.clone();
    service.apply_merge().expect("merge keys resolve");
    let value = service["environment"].get(var)?;
    Some(match value.as_str() {
        Some(text) => text.to_string(),
        None => serde_norway::to_string(value).unwrap().trim().to_string(),
    })
}

/// Ingest seals each endpoint's signing secret and checks its address; the webhooks service
/// opens the secret and checks the address again at every connect: they need the same key (a
/// valid one: the service does not start without it) and the same address policy.
#[test]
fn ingest_and_webhooks_get_the_same_key_and_address_policy() {
    let compose = compose();
    let (ingest, webhooks) = (service(&compose, "ingest"), service(&compose, "webhooks"));
    for var in WebhookSecurity::env_vars() {
        assert_eq!(env_value(ingest, &var), env_value(webhooks, &var), "{var}");
    }
    let security = WebhookSecurity::from_iter(
        WebhookSecurity::env_vars()
            .into_iter()
            .filter_map(|var| Some((var.clone(), env_value(webhooks, &var)?))),
    )
    .unwrap();
    assert!(
        security.sealer().unwrap().is_some(),
        "webhooks gets no sealing key: it would not start"
    );
    security.policy().unwrap();
}

/// Runs redpanda/create-topics.sh with a stand-in `rpk` that records its arguments.
/// `docker compose up --scale processor=3` (or projector) needs the scaled services to have
/// neither a fixed container name nor a fixed host port: the second replica could not take
/// either.
#[test]
fn the_workers_can_be_scaled() {
    let compose = compose();
    for name in WORKERS {
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

#[test]
fn published_ports_listen_on_loopback_only() {
    let compose = compose();
    for (name, service) in compose["services"].as_mapping().unwrap() {
        for port in service["ports"].as_sequence().into_iter().flatten() {
            let port = port.as_str().unwrap_or_default();
            assert!(port.starts_with("127.0.0.1:"), "{name:?} publishes {port}");
        }
    }
}

/// A service's bind mounts: the path in the repository and where it appears in the container.
fn bind_mounts(service: &Value) -> Vec<(PathBuf, String)> {
    service["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|mount| {
            let mut parts = mount.as_str()?.split(':');
            let host = parts.next()?.strip_prefix("./")?;
            Some((root().join(host), parts.next()?.to_string()))
        })
        .collect()
}

/// Where a path in the container comes from in the repository, through the bind mounts.
fn host_path(service: &Value, in_container: &str) -> PathBuf {
    bind_mounts(service)
        .into_iter()
        .find_map(|(host, container)| {
            let rest = in_container.strip_prefix(container.as_str())?;
            Some(host.join(rest.trim_start_matches('/')))
        })
        .unwrap_or_else(|| panic!("no bind mount holds {in_container}"))
}

#[test]
fn every_bind_mount_exists_in_the_repository() {
    let compose = compose();
    for (name, service) in compose["services"].as_mapping().unwrap() {
        for (host, _) in bind_mounts(service) {
            assert!(
                host.exists(),
                "{name:?} mounts {}, which is missing",
                host.display()
            );
        }
    }
}

/// The port in a service's `IMGPIPE_*_ADDR` variable (`0.0.0.0:8001`).
fn address_port(service: &Value, variable: &str) -> Option<u16> {
    let address = env_value(service, variable)?;
    Some(address.rsplit_once(':')?.1.parse().expect("a port number"))
}

/// Where a service's `/metrics` listens: its ops address, or (ingest without one) its API's.
fn metrics_port(compose: &Value, name: &str) -> u16 {
    let service = service(compose, name);
    let upper = name.to_uppercase();
    address_port(service, &tools::ops_addr_var(name))
        .or_else(|| address_port(service, &format!("IMGPIPE_{upper}_LISTEN_ADDR")))
        .unwrap_or_else(|| panic!("{name} has no ops or listen address"))
}

fn prometheus_config(compose: &Value) -> Value {
    let prometheus = service(compose, "prometheus");
    let config = prometheus["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .find_map(|arg| arg.as_str()?.strip_prefix("--config.file="))
        .expect("prometheus gets --config.file");
    let path = host_path(prometheus, config);
    assert_eq!(
        path,
        root().join("deploy/observability/prometheus/prometheus.yml")
    );
    serde_norway::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

#[test]
fn prometheus_scrapes_every_replica_of_each_service_where_its_metrics_listen() {
    let compose = compose();
    let config = prometheus_config(&compose);
    let mut jobs = BTreeSet::new();
    for job in config["scrape_configs"].as_sequence().unwrap() {
        let name = job["job_name"].as_str().unwrap();
        jobs.insert(name.to_string());
        let port = metrics_port(&compose, name);
        match name {
            // Scalable: found by DNS, one A record per replica of the compose service.
            _ if WORKERS.contains(&name) => {
                let dns = &job["dns_sd_configs"][0];
                assert_eq!(dns["names"][0].as_str(), Some(name), "{name} DNS name");
                assert_eq!(dns["type"].as_str(), Some("A"), "{name} record type");
                assert_eq!(dns["port"].as_u64(), Some(port.into()), "{name} port");
            }
            _ => {
                let target = job["static_configs"][0]["targets"][0].as_str();
                assert_eq!(target, Some(format!("{name}:{port}").as_str()), "{name}");
            }
        }
    }
    let expected: BTreeSet<String> = SERVICES.map(String::from).into();
    assert_eq!(jobs, expected, "scrape jobs");
}

#[test]
fn grafana_provisions_the_prometheus_data_source_and_the_dashboard() {
    let compose = compose();
    let grafana = service(&compose, "grafana");
    let provisioning = |file: &str| -> Value {
        let path = host_path(grafana, &format!("/etc/grafana/provisioning/{file}"));
        serde_norway::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    };
    let sources = provisioning("datasources/prometheus.yml");
    let source = &sources["datasources"][0];
    assert_eq!(source["type"].as_str(), Some("prometheus"));
    let published = service(&compose, "prometheus")["ports"][0]
        .as_str()
        .unwrap();
    let container_port = published.rsplit(':').next().unwrap();
    assert_eq!(
        source["url"].as_str(),
        Some(format!("http://prometheus:{container_port}").as_str())
    );
    let dashboards = provisioning("dashboards/imgpipe.yml");
    let folder = dashboards["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    let dashboard = host_path(grafana, &format!("{folder}/imgpipe.json"));
    assert_eq!(
        dashboard,
        root().join("deploy/observability/grafana/imgpipe.json")
    );
}
