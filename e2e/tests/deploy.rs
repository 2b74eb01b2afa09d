//! The Kubernetes manifests in deploy/ against the code, offline (no cluster runs here): each
//! of the base and the two overlays is rendered with `kubectl kustomize` (the venv's pinned
//! kubectl), and then every variable a workload gets is one its config reads, the processors'
//! autoscaler reads the group and topic they really use and stays within the partitions, every
//! image is the imgpipe image with the overlay's tag running a binary the workspace builds, the
//! probes are the services' own paths on their ops ports, every pod is restricted, and the
//! termination grace outlasts the shutdown. `scripts/check-manifests` validates the same
//! renders against the Kubernetes and KEDA schemas.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use imgpipe_e2e::tools;
use imgpipe_infra::ops::{LIVENESS_PATH, READINESS_PATH};
use imgpipe_infra::registry::RegistryConfig;
use imgpipe_infra::telemetry::LogConfig;
use imgpipe_infra::{topics, DatabaseConfig, FromEnv, KafkaConfig, S3Config};
use serde_norway::Value;

#[path = "deploy/manifests.rs"]
mod manifests;
#[path = "deploy/relabel.rs"]
mod relabel;
#[path = "deploy/webhooks.rs"]
mod webhooks;

use imgpipe_e2e::tools::ops_addr_var;
use manifests::{
    containers, deployment, environment, every_render, name, of_kind, secret_refs, workloads,
    Workload, BASE, IMAGE, OVERLAYS,
};

/// The services: Deployments with an ops port, each running `imgpipe-<component>`.
const SERVICES: [&str; 4] = ["ingest", "processor", "projector", "webhooks"];

/// What the workload's program reads: each service's `Config::env_vars()`; for the admin
/// command, the infra configs its subcommands read (setup and migrate: broker, bucket,
/// database; orphans adds the registry).
fn variables_read(component: &str) -> Vec<String> {
    match component {
        "ingest" => imgpipe_ingest::Config::env_vars(),
        "processor" => imgpipe_processor::Config::env_vars(),
        "projector" => imgpipe_projector::Config::env_vars(),
        "webhooks" => imgpipe_webhooks::Config::env_vars(),
        "admin" => [
            KafkaConfig::env_vars(),
            S3Config::env_vars(),
            DatabaseConfig::env_vars(),
            RegistryConfig::env_vars(),
            LogConfig::env_vars(),
        ]
        .concat(),
        other => panic!("no config known for component {other}"),
    }
}

#[test]
fn every_variable_a_workload_gets_is_one_its_config_reads() {
    for (dir, docs) in every_render() {
        for workload in workloads(&docs) {
            let read = variables_read(workload.component);
            for container in containers(&workload) {
                let env = environment(&docs, container);
                assert!(
                    !env.is_empty(),
                    "{dir}: {} gets no environment",
                    workload.name
                );
                let unknown = tools::unread_vars(env.keys(), &read);
                assert!(
                    unknown.is_empty(),
                    "{dir}: {} gets variables its config never reads: {unknown:?}",
                    workload.name
                );
            }
        }
    }
}

/// One variable of the workload's one container, as the manifests give it.
fn variable(docs: &[Value], workload: &Workload, var: &str) -> String {
    environment(docs, &containers(workload)[0])
        .remove(var)
        .flatten()
        .unwrap_or_else(|| panic!("{} has no value for {var}", workload.name))
}

#[test]
fn the_processors_scale_on_their_own_group_and_topic_within_the_partitions() {
    let partitions = topics::bundled()
        .unwrap()
        .into_iter()
        .find(|spec| spec.name == topics::EVENTS)
        .expect("topics.conf defines the events topic")
        .partitions;
    for (dir, docs) in every_render() {
        let processor = deployment(&docs, "processor");
        let scaled: Vec<&Value> = of_kind(&docs, "ScaledObject").collect();
        assert_eq!(scaled.len(), 1, "{dir}: one ScaledObject");
        let spec = &scaled[0]["spec"];
        assert_eq!(
            spec["scaleTargetRef"]["name"].as_str(),
            Some(processor.name)
        );
        let max = spec["maxReplicaCount"].as_i64().unwrap();
        let min = spec["minReplicaCount"].as_i64().unwrap();
        assert!(
            max <= i64::from(partitions),
            "{dir}: maxReplicaCount {max} is more than the events topic's {partitions} \
             partitions (redpanda/topics.conf): the extra processors would get none"
        );
        assert!((0..=max).contains(&min), "{dir}: minReplicaCount {min}");

        let trigger = &spec["triggers"][0];
        assert_eq!(trigger["type"].as_str(), Some("kafka"), "{dir}");
        let meta = |key: &str| {
            trigger["metadata"][key]
                .as_str()
                .unwrap_or_else(|| panic!("{dir}: the kafka trigger has no {key}"))
                .to_string()
        };
        // The names the processors derive from their own settings.
        let kafka = KafkaConfig::from_iter([(
            "IMGPIPE_KAFKA_TOPIC_PREFIX".to_string(),
            variable(&docs, &processor, "IMGPIPE_KAFKA_TOPIC_PREFIX"),
        )])
        .unwrap();
        assert_eq!(
            meta("consumerGroup"),
            kafka.group_id(imgpipe_processor::GROUP),
            "{dir}"
        );
        assert_eq!(meta("topic"), kafka.topic(topics::EVENTS), "{dir}");
        assert_eq!(
            meta("bootstrapServers"),
            variable(&docs, &processor, "IMGPIPE_KAFKA_BROKERS"),
            "{dir}"
        );
        let lag_threshold: u64 = meta("lagThreshold").parse().unwrap();
        assert!(lag_threshold > 0, "{dir}");
        let activation: u64 = meta("activationLagThreshold").parse().unwrap();
        assert!(
            min > 0 || activation == 0,
            "{dir}: with minReplicaCount 0 the activationLagThreshold must be 0, or a lone \
             upload would wait for company before any processor starts"
        );
    }
}

/// The binaries the workspace builds (`cargo metadata`'s bin targets).
fn workspace_binaries() -> BTreeSet<String> {
    let output = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--no-deps",
            "--offline",
            "--format-version",
            "1",
        ])
        .current_dir(tools::workspace_root())
        .output()
        .expect("cargo metadata runs");
    assert!(output.status.success(), "cargo metadata failed");
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|package| package["targets"].as_array().unwrap())
        .filter(|target| target["kind"].as_array().unwrap().contains(&"bin".into()))
        .map(|target| target["name"].as_str().unwrap().to_string())
        .collect()
}

/// The binaries the Dockerfile copies into the image (`target/release/NAME`).
fn image_binaries() -> BTreeSet<String> {
    let dockerfile = std::fs::read_to_string(tools::workspace_root().join("Dockerfile")).unwrap();
    dockerfile
        .split_whitespace()
        .filter_map(|word| word.strip_prefix("target/release/"))
        .map(str::to_string)
        .collect()
}

#[test]
fn every_image_is_imgpipe_with_the_overlays_tag_running_a_binary_it_holds() {
    let built = workspace_binaries();
    let in_image = image_binaries();
    assert!(!in_image.is_empty(), "the Dockerfile copies no binary");
    for (dir, docs) in every_render() {
        for workload in workloads(&docs) {
            let expected_binary = match workload.component {
                "admin" => "imgpipe".to_string(),
                service => format!("imgpipe-{service}"),
            };
            for container in containers(&workload) {
                let image = container["image"].as_str().unwrap();
                if dir == BASE {
                    assert_eq!(
                        image, IMAGE,
                        "{dir}: {}: the overlays tag it",
                        workload.name
                    );
                } else {
                    let tag = image
                        .strip_prefix(IMAGE)
                        .and_then(|rest| rest.strip_prefix(':'))
                        .unwrap_or_else(|| panic!("{dir}: {}: image {image}", workload.name));
                    assert!(
                        !tag.is_empty() && tag != "latest",
                        "{dir}: {}: image {image} needs the overlay's own tag",
                        workload.name
                    );
                }
                let command = container["command"][0].as_str().unwrap_or_default();
                assert_eq!(command, expected_binary, "{dir}: {}", workload.name);
                assert!(
                    built.contains(command) && in_image.contains(command),
                    "{dir}: {} runs {command}: built {built:?}, in the image {in_image:?}",
                    workload.name
                );
            }
        }
    }
}

/// The port number a probe's or Service's `port` names (a number, or a container port's name).
fn container_port(container: &Value, port: &Value) -> u16 {
    if let Some(number) = port.as_u64() {
        return u16::try_from(number).unwrap();
    }
    let wanted = port.as_str().unwrap();
    container["ports"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|p| p["name"].as_str() == Some(wanted))
        .and_then(|p| p["containerPort"].as_u64())
        .map(|n| u16::try_from(n).unwrap())
        .unwrap_or_else(|| panic!("no container port named {wanted}"))
}

/// The port of a `host:port` bind address, which must take connections from outside the pod.
fn bound_port(address: &str) -> u16 {
    let (host, port) = address.rsplit_once(':').unwrap();
    assert_eq!(
        host, "0.0.0.0",
        "{address}: the kubelet and Prometheus reach the pod's IP"
    );
    port.parse().unwrap()
}

#[test]
fn probes_are_the_services_own_paths_on_their_ops_ports() {
    for (dir, docs) in every_render() {
        for component in SERVICES {
            let workload = deployment(&docs, component);
            let container = &containers(&workload)[0];
            let ops_var = ops_addr_var(component);
            let ops_port = bound_port(&variable(&docs, &workload, &ops_var));
            for (probe, path) in [
                ("livenessProbe", LIVENESS_PATH),
                ("readinessProbe", READINESS_PATH),
            ] {
                let get = &container[probe]["httpGet"];
                assert_eq!(
                    get["path"].as_str(),
                    Some(path),
                    "{dir}: {component} {probe}"
                );
                assert_eq!(
                    container_port(container, &get["port"]),
                    ops_port,
                    "{dir}: {component} {probe} port is {ops_var}'s"
                );
            }
        }
        // The API: the Service reaches the port ingest listens on.
        let ingest = deployment(&docs, "ingest");
        let listen = bound_port(&variable(&docs, &ingest, "IMGPIPE_INGEST_LISTEN_ADDR"));
        let service = of_kind(&docs, "Service")
            .find(|s| name(s) == ingest.name)
            .expect("ingest has a Service");
        let target = &service["spec"]["ports"][0]["targetPort"];
        assert_eq!(
            container_port(&containers(&ingest)[0], target),
            listen,
            "{dir}"
        );
    }
}

/// The uid the Dockerfile's runtime stage creates its user with.
fn image_uid() -> i64 {
    let dockerfile = std::fs::read_to_string(tools::workspace_root().join("Dockerfile")).unwrap();
    let words: Vec<&str> = dockerfile.split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| *w == "--uid")
        .expect("useradd --uid");
    words[at + 1].parse().unwrap()
}

#[test]
fn every_pod_is_restricted_and_bounded() {
    let uid = image_uid();
    for (dir, docs) in every_render() {
        for workload in workloads(&docs) {
            let at = format!("{dir}: {}", workload.name);
            let pod = &workload.pod["securityContext"];
            assert_eq!(pod["runAsNonRoot"].as_bool(), Some(true), "{at}");
            assert_eq!(
                pod["runAsUser"].as_i64(),
                Some(uid),
                "{at}: the image's user"
            );
            assert_eq!(
                pod["seccompProfile"]["type"].as_str(),
                Some("RuntimeDefault"),
                "{at}"
            );
            for container in containers(&workload) {
                let security = &container["securityContext"];
                assert_eq!(
                    security["allowPrivilegeEscalation"].as_bool(),
                    Some(false),
                    "{at}"
                );
                assert_eq!(
                    security["readOnlyRootFilesystem"].as_bool(),
                    Some(true),
                    "{at}"
                );
                assert_eq!(
                    security["capabilities"]["drop"][0].as_str(),
                    Some("ALL"),
                    "{at}"
                );
                assert!(security.get("privileged").is_none(), "{at}");
                let resources = &container["resources"];
                for bound in ["requests", "limits"] {
                    assert!(resources[bound]["memory"].is_string(), "{at}: {bound}");
                }
            }
        }
        for deployment in of_kind(&docs, "Deployment") {
            let labels = &deployment["spec"]["selector"]["matchLabels"];
            assert!(
                of_kind(&docs, "PodDisruptionBudget")
                    .any(|pdb| &pdb["spec"]["selector"]["matchLabels"] == labels),
                "{dir}: {} has no PodDisruptionBudget",
                name(deployment)
            );
        }
        assert!(
            of_kind(&docs, "NetworkPolicy").any(|policy| {
                policy["spec"]["podSelector"] == Value::Mapping(Default::default())
                    && policy["spec"].get("ingress").is_none()
                    && policy["spec"].get("egress").is_none()
            }),
            "{dir}: no default-deny NetworkPolicy"
        );
    }
}

fn termination_grace(workload: &Workload) -> Duration {
    Duration::from_secs(
        workload.pod["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap(),
    )
}

/// `preStop: exec: [sleep, N]`, or nothing.
fn pre_stop_sleep(container: &Value) -> Duration {
    let command = &container["lifecycle"]["preStop"]["exec"]["command"];
    match command[0].as_str() {
        None => Duration::ZERO,
        Some("sleep") => Duration::from_secs(command[1].as_str().unwrap().parse().unwrap()),
        Some(other) => panic!("preStop runs {other}"),
    }
}

#[test]
fn the_termination_grace_outlasts_the_shutdown() {
    for (dir, docs) in every_render() {
        let processor = deployment(&docs, "processor");
        // The record in hand finishes, then the producer flushes (processor/src/startup.rs).
        let processor_shutdown = imgpipe_infra::consume::FINISH_GRACE
            + imgpipe_processor::startup::SHUTDOWN_FLUSH
            + pre_stop_sleep(&containers(&processor)[0]);
        assert!(
            termination_grace(&processor) > processor_shutdown,
            "{dir}: the processor's grace must exceed {processor_shutdown:?}"
        );
        let ingest = deployment(&docs, "ingest");
        // In-flight requests finish, then the producer flushes (ingest/src/startup.rs).
        let ingest_shutdown = imgpipe_ingest::startup::SHUTDOWN_GRACE
            + imgpipe_ingest::startup::SHUTDOWN_FLUSH
            + pre_stop_sleep(&containers(&ingest)[0]);
        assert!(
            termination_grace(&ingest) > ingest_shutdown,
            "{dir}: ingest's grace must exceed {ingest_shutdown:?}"
        );
    }
}

/// The keys of each Secret deploy/README.md has the operator create in the overlay's
/// `namespace` (`kubectl -n NS create secret generic NAME --from-env-file=F | --from-file=F`):
/// an env file's are those of `<overlay>/F.example`, each with a value; a file's key is its name.
fn secrets_the_readme_creates(
    overlay: &str,
    namespace: &str,
) -> BTreeMap<String, BTreeSet<String>> {
    let root = tools::workspace_root();
    let readme = std::fs::read_to_string(root.join("deploy/README.md")).unwrap();
    let mut secrets = BTreeMap::new();
    for line in readme.lines() {
        let command = format!("-n {namespace} create secret generic ");
        let Some((_, rest)) = line.split_once(&command) else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let secret = words.next().unwrap().to_string();
        let mut keys = BTreeSet::new();
        for word in words {
            if let Some(file) = word.strip_prefix("--from-env-file=") {
                let example = root.join(overlay).join(format!("{file}.example"));
                let text = std::fs::read_to_string(&example)
                    .unwrap_or_else(|e| panic!("{}: {e}", example.display()));
                for entry in text
                    .lines()
                    .filter(|l| !l.starts_with('#') && !l.is_empty())
                {
                    let (key, value) = entry.split_once('=').unwrap();
                    // `--from-env-file` keeps an empty value as a key set to "": the variable
                    // is then set, and an empty credential is not an absent one.
                    assert!(
                        !value.is_empty(),
                        "{}: {key} is empty; leave an optional key out instead",
                        example.display()
                    );
                    keys.insert(key.to_string());
                }
            } else if let Some(file) = word.strip_prefix("--from-file=") {
                keys.insert(
                    file.rsplit_once('=')
                        .map_or(file, |(key, _)| key)
                        .to_string(),
                );
            }
        }
        secrets.insert(secret, keys);
    }
    secrets
}

#[test]
fn every_secret_a_render_refers_to_exists_with_its_keys() {
    for dir in OVERLAYS {
        let docs = manifests::render(dir);
        let namespace = of_kind(&docs, "Namespace").next().map(name).unwrap();
        let created = secrets_the_readme_creates(dir, namespace);
        let mut referenced: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for reference in secret_refs(&docs) {
            let at = format!(
                "{dir}: {} refers to the Secret {}",
                reference.by, reference.secret
            );
            let keys: BTreeSet<String> =
                match of_kind(&docs, "Secret").find(|secret| name(secret) == reference.secret) {
                    Some(generated) => generated["data"]
                        .as_mapping()
                        .into_iter()
                        .flatten()
                        .map(|(key, _)| key.as_str().unwrap().to_string())
                        .collect(),
                    None => created.get(&reference.secret).cloned().unwrap_or_else(|| {
                        panic!("{at}, which neither the render holds nor deploy/README.md creates")
                    }),
                };
            if let Some(key) = &reference.key {
                referenced
                    .entry(reference.secret.clone())
                    .or_default()
                    .insert(key.clone());
                assert!(
                    reference.optional || keys.contains(key),
                    "{at}, key {key}, which it does not have (it has {keys:?})"
                );
            }
        }
        // Nothing the operator is told to put in a Secret goes unused.
        for (secret, keys) in &created {
            for key in keys {
                assert!(
                    referenced.get(secret).is_some_and(|r| r.contains(key)),
                    "{dir}: deploy/README.md puts {key} in {secret}, which nothing reads"
                );
            }
        }
    }
}

/// Prometheus on Kubernetes (deploy/observability/prometheus/kubernetes.yml) over the rendered
/// pods: each service's pod is one target, at its ops port and the metrics path, whose `job` is
/// the job name compose's Prometheus gives the same service, so the alert rules and the
/// dashboard (which select on `job`) see both stacks alike. A stock annotation-based scrape job
/// would label them all with its own name.
#[test]
fn prometheus_on_kubernetes_labels_each_service_as_compose_does() {
    let root = tools::workspace_root();
    let read_yaml = |path: &str| -> Value {
        serde_norway::from_str(&std::fs::read_to_string(root.join(path)).unwrap()).unwrap()
    };
    let compose_jobs: BTreeSet<String> =
        read_yaml("deploy/observability/prometheus/prometheus.yml")["scrape_configs"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|job| job["job_name"].as_str().unwrap().to_string())
            .collect();
    let config = read_yaml("deploy/observability/prometheus/kubernetes.yml");
    let [scrape] = config["scrape_configs"].as_sequence().unwrap().as_slice() else {
        panic!("kubernetes.yml has one scrape job");
    };
    let rules = scrape["relabel_configs"].as_sequence().unwrap();
    let namespaces = &scrape["kubernetes_sd_configs"][0]["namespaces"]["names"];
    for dir in OVERLAYS {
        let docs = manifests::render(dir);
        let namespace = of_kind(&docs, "Namespace").next().map(name).unwrap();
        assert!(
            namespaces
                .as_sequence()
                .unwrap()
                .contains(&Value::from(namespace)),
            "{dir}: kubernetes.yml does not discover the namespace {namespace}"
        );
        let mut jobs = BTreeSet::new();
        for workload in workloads(&docs) {
            let mut targets = Vec::new();
            for container in containers(&workload) {
                let ports: Vec<Option<&Value>> = match container["ports"].as_sequence() {
                    Some(ports) => ports.iter().map(Some).collect(),
                    None => vec![None],
                };
                for port in ports {
                    let discovered =
                        relabel::pod_port_labels(namespace, workload.name, workload.template, port);
                    targets.extend(relabel::relabel(rules, discovered));
                }
            }
            if workload.kind != "Deployment" {
                assert!(targets.is_empty(), "{dir}: {} is scraped", workload.name);
                continue;
            }
            let [target] = targets.as_slice() else {
                panic!(
                    "{dir}: {} is {} targets, not one",
                    workload.name,
                    targets.len()
                );
            };
            let job = target.get("job").map_or("(the job name)", String::as_str);
            assert_eq!(job, workload.component, "{dir}: {}'s job", workload.name);
            let ops_var = ops_addr_var(workload.component);
            let ops_port = bound_port(&variable(&docs, &workload, &ops_var));
            assert_eq!(
                target["__address__"],
                format!("10.0.0.1:{ops_port}"),
                "{dir}: {} is scraped at its ops port",
                workload.name
            );
            let path = target
                .get("__metrics_path__")
                .map_or("/metrics", String::as_str);
            assert_eq!(path, "/metrics", "{dir}: {}", workload.name);
            jobs.insert(job.to_string());
        }
        assert_eq!(
            jobs, compose_jobs,
            "{dir}: the jobs on Kubernetes and in compose"
        );
    }
}

/// The renders pass the Kubernetes schemas (kubernetes-validate, strict) and KEDA's vendored
/// ones: `scripts/check-manifests`.
#[test]
fn the_overlays_pass_their_schemas() {
    let script = tools::workspace_root().join("scripts/check-manifests");
    let output = Command::new(tools::venv_tool("python"))
        .arg(&script)
        .args(OVERLAYS)
        .current_dir(tools::workspace_root())
        .output()
        .unwrap_or_else(|e| panic!("{} cannot run: {e}", script.display()));
    assert!(
        output.status.success(),
        "scripts/check-manifests found:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
