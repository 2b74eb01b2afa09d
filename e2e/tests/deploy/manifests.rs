//! The rendered manifests, as the deploy tests read them: `kubectl kustomize` of the base and
//! the overlays, and the workloads, containers and environments in a render. A module of
//! `tests/deploy.rs` (a folder without `main.rs` is no test target of its own).

use std::collections::BTreeMap;
use std::process::Command;

use imgpipe_e2e::tools;
use serde::Deserialize;
use serde_norway::Value;

pub const BASE: &str = "deploy/base";
pub const OVERLAYS: [&str; 2] = ["deploy/overlays/dev", "deploy/overlays/prod"];
/// The image the base names; the overlays give it its tag.
pub const IMAGE: &str = "ghcr.io/imgpipe/imgpipe";

pub fn every_render() -> impl Iterator<Item = (&'static str, Vec<Value>)> {
    std::iter::once(BASE)
        .chain(OVERLAYS)
        .map(|dir| (dir, render(dir)))
}

/// `kubectl kustomize dir`, as documents.
pub fn render(dir: &str) -> Vec<Value> {
    let kubectl = tools::venv_tool("kubectl");
    let output = Command::new(&kubectl)
        .arg("kustomize")
        .arg(tools::workspace_root().join(dir))
        .output()
        .unwrap_or_else(|e| panic!("{} cannot run: {e}", kubectl.display()));
    assert!(
        output.status.success(),
        "kubectl kustomize {dir} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).expect("kustomize renders YAML"))
        .filter(|doc| !doc.is_null())
        .collect()
}

pub fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

pub fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or_default()
}

pub fn of_kind<'a>(docs: &'a [Value], wanted: &'a str) -> impl Iterator<Item = &'a Value> {
    docs.iter().filter(move |doc| kind(doc) == wanted)
}

/// A Deployment, Job or CronJob: what its pods run.
pub struct Workload<'a> {
    pub name: &'a str,
    pub kind: &'a str,
    /// `app.kubernetes.io/component`: ingest, processor, projector, webhooks or admin.
    pub component: &'a str,
    pub pod: &'a Value,
    /// The pod template: `metadata` (labels, annotations) and `spec` (= `pod`).
    pub template: &'a Value,
}

pub fn workloads(docs: &[Value]) -> Vec<Workload<'_>> {
    docs.iter()
        .filter_map(|doc| {
            let template = match kind(doc) {
                "Deployment" | "Job" => &doc["spec"]["template"],
                "CronJob" => &doc["spec"]["jobTemplate"]["spec"]["template"],
                _ => return None,
            };
            Some(Workload {
                name: name(doc),
                kind: kind(doc),
                component: template["metadata"]["labels"]["app.kubernetes.io/component"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{} has no component label", name(doc))),
                pod: &template["spec"],
                template,
            })
        })
        .collect()
}

pub fn deployment<'a>(docs: &'a [Value], component: &str) -> Workload<'a> {
    workloads(docs)
        .into_iter()
        .find(|w| w.kind == "Deployment" && w.component == component)
        .unwrap_or_else(|| panic!("no {component} Deployment"))
}

pub fn containers<'a>(workload: &Workload<'a>) -> &'a Vec<Value> {
    workload.pod["containers"]
        .as_sequence()
        .unwrap_or_else(|| panic!("{} has no containers", workload.name))
}

/// Every variable the container gets, with its value where the manifests hold it (literal or
/// from a ConfigMap); a Secret's value is not in the manifests.
pub fn environment(docs: &[Value], container: &Value) -> BTreeMap<String, Option<String>> {
    let mut env = BTreeMap::new();
    for source in container["envFrom"].as_sequence().into_iter().flatten() {
        let (kind, reference) = match (source.get("configMapRef"), source.get("secretRef")) {
            (Some(reference), _) => ("ConfigMap", reference),
            (None, Some(reference)) => ("Secret", reference),
            _ => panic!("envFrom of an unknown kind: {source:?}"),
        };
        let wanted = reference["name"].as_str().unwrap();
        let object = of_kind(docs, kind)
            .find(|doc| name(doc) == wanted)
            .unwrap_or_else(|| {
                panic!(
                    "envFrom names the {kind} {wanted}, which the render does not hold, so its \
                     variables cannot be checked (give a Secret's keys one by one with \
                     secretKeyRef)"
                )
            });
        for (key, value) in object["data"].as_mapping().into_iter().flatten() {
            let value = (kind == "ConfigMap").then(|| value.as_str().unwrap().to_string());
            env.insert(key.as_str().unwrap().to_string(), value);
        }
    }
    for var in container["env"].as_sequence().into_iter().flatten() {
        let value = var["value"].as_str().map(str::to_string);
        env.insert(var["name"].as_str().unwrap().to_string(), value);
    }
    env
}

/// A Secret a render refers to, and the key it wants (`None`: all of it, as `envFrom` takes).
#[derive(Debug)]
pub struct SecretRef {
    pub secret: String,
    pub key: Option<String>,
    pub optional: bool,
    /// The object that refers to it.
    pub by: String,
}

impl SecretRef {
    fn new(reference: &Value, name_field: &str, key: Option<&Value>, by: &str) -> Self {
        Self {
            secret: reference[name_field].as_str().unwrap().to_string(),
            key: key.and_then(Value::as_str).map(str::to_string),
            optional: reference["optional"].as_bool().unwrap_or(false),
            by: by.to_string(),
        }
    }
}

/// Every reference to a Secret in a render: containers' `env` and `envFrom`, pods' secret
/// volumes, and KEDA's TriggerAuthentications.
pub fn secret_refs(docs: &[Value]) -> Vec<SecretRef> {
    let mut refs = Vec::new();
    for workload in workloads(docs) {
        for container in containers(&workload) {
            for var in container["env"].as_sequence().into_iter().flatten() {
                let reference = &var["valueFrom"]["secretKeyRef"];
                if reference.is_mapping() {
                    refs.push(SecretRef::new(
                        reference,
                        "name",
                        reference.get("key"),
                        workload.name,
                    ));
                }
            }
            for source in container["envFrom"].as_sequence().into_iter().flatten() {
                if let Some(reference) = source.get("secretRef") {
                    refs.push(SecretRef::new(reference, "name", None, workload.name));
                }
            }
        }
        for volume in workload.pod["volumes"].as_sequence().into_iter().flatten() {
            let Some(secret) = volume.get("secret") else {
                continue;
            };
            let items = secret["items"].as_sequence().cloned().unwrap_or_default();
            if items.is_empty() {
                refs.push(SecretRef::new(secret, "secretName", None, workload.name));
            }
            for item in &items {
                refs.push(SecretRef::new(
                    secret,
                    "secretName",
                    item.get("key"),
                    workload.name,
                ));
            }
        }
    }
    for auth in of_kind(docs, "TriggerAuthentication") {
        for target in auth["spec"]["secretTargetRef"]
            .as_sequence()
            .into_iter()
            .flatten()
        {
            refs.push(SecretRef::new(
                target,
                "name",
                target.get("key"),
                name(auth),
            ));
        }
    }
    refs
}
