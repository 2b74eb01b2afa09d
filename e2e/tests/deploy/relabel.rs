//! Prometheus's target relabelling (`keep`, `drop`, `replace`) and the labels its Kubernetes
//! pod discovery gives a container port, enough to run
//! deploy/observability/prometheus/kubernetes.yml over the rendered pods. A module of
//! `tests/deploy.rs`.

use std::collections::BTreeMap;

use regex::Regex;
use serde_norway::Value;

pub type Labels = BTreeMap<String, String>;

/// Prometheus's label name for a Kubernetes label or annotation key: every character that is
/// not a letter, digit or `_` becomes `_`.
fn sanitized(key: &str) -> String {
    key.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// What `role: pod` discovery gives one port of a pod's container (or the container, if it has
/// no port): the pod is Running in `namespace`, named after its workload.
pub fn pod_port_labels(
    namespace: &str,
    workload: &str,
    template: &Value,
    port: Option<&Value>,
) -> Labels {
    let mut labels = Labels::new();
    let number = port.and_then(|p| p["containerPort"].as_u64());
    let address = match number {
        Some(number) => format!("10.0.0.1:{number}"),
        None => "10.0.0.1".to_string(),
    };
    labels.insert("__address__".into(), address);
    labels.insert("__meta_kubernetes_namespace".into(), namespace.into());
    labels.insert("__meta_kubernetes_pod_name".into(), format!("{workload}-0"));
    labels.insert("__meta_kubernetes_pod_phase".into(), "Running".into());
    for (prefix, field) in [
        ("__meta_kubernetes_pod_label_", "labels"),
        ("__meta_kubernetes_pod_annotation_", "annotations"),
    ] {
        for (key, value) in template["metadata"][field]
            .as_mapping()
            .into_iter()
            .flatten()
        {
            let name = format!("{prefix}{}", sanitized(key.as_str().unwrap()));
            labels.insert(name, value.as_str().unwrap_or_default().to_string());
        }
    }
    if let Some(name) = port.and_then(|p| p["name"].as_str()) {
        labels.insert(
            "__meta_kubernetes_pod_container_port_name".into(),
            name.into(),
        );
    }
    labels
}

/// Applies a `relabel_configs` list; `None` when a rule drops the target.
pub fn relabel(rules: &[Value], mut labels: Labels) -> Option<Labels> {
    for rule in rules {
        let separator = rule["separator"].as_str().unwrap_or(";");
        let value = rule["source_labels"]
            .as_sequence()
            .into_iter()
            .flatten()
            .map(|source| {
                labels
                    .get(source.as_str().unwrap())
                    .cloned()
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join(separator);
        // Prometheus anchors the regex at both ends.
        let pattern = rule["regex"].as_str().unwrap_or("(.*)");
        let regex = Regex::new(&format!("^(?:{pattern})$")).unwrap();
        match rule["action"].as_str().unwrap_or("replace") {
            "keep" if !regex.is_match(&value) => return None,
            "drop" if regex.is_match(&value) => return None,
            "keep" | "drop" => {}
            "replace" => {
                if let Some(captures) = regex.captures(&value) {
                    let mut replaced = String::new();
                    captures.expand(rule["replacement"].as_str().unwrap_or("$1"), &mut replaced);
                    let target = rule["target_label"].as_str().unwrap().to_string();
                    if replaced.is_empty() {
                        labels.remove(&target);
                    } else {
                        labels.insert(target, replaced);
                    }
                }
            }
            other => panic!("the relabel action {other} is not simulated here"),
        }
    }
    Some(labels)
}
