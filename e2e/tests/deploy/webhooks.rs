//! The webhooks service in the renders: ingest and it agree on the webhook settings (the same
//! sealing key from the same Secret, the same address policy), its termination grace outlasts
//! its shutdown, and the NetworkPolicies let its pods reach port 443 at public addresses and
//! nowhere private, as the service's own address check does. A module of `tests/deploy.rs`.

use std::net::IpAddr;
use std::time::Duration;

use imgpipe_infra::FromEnv;
use imgpipe_webhooks::config::{DeliverySettings, WebhookSecurity};
use serde_norway::Value;

use super::manifests::{containers, deployment, environment, every_render, of_kind, Workload};
use super::{pre_stop_sleep, termination_grace};

/// Where a container's variable comes from: a literal or ConfigMap value, a Secret's key, or
/// nowhere.
fn source(docs: &[Value], container: &Value, var: &str) -> String {
    let listed = container["env"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|entry| entry["name"].as_str() == Some(var));
    if let Some(reference) = listed.map(|entry| &entry["valueFrom"]["secretKeyRef"]) {
        if reference.is_mapping() {
            let (secret, key) = (reference["name"].as_str(), reference["key"].as_str());
            return format!("Secret {secret:?} key {key:?}");
        }
    }
    match environment(docs, container).remove(var) {
        Some(Some(value)) => format!("value {value:?}"),
        Some(None) => "a Secret given whole (envFrom)".to_string(),
        None => "nowhere".to_string(),
    }
}

#[test]
fn ingest_and_webhooks_get_the_same_key_and_address_policy() {
    for (dir, docs) in every_render() {
        let ingest = deployment(&docs, "ingest");
        let webhooks = deployment(&docs, "webhooks");
        for var in WebhookSecurity::env_vars() {
            let given = source(&docs, &containers(&webhooks)[0], &var);
            assert_eq!(
                source(&docs, &containers(&ingest)[0], &var),
                given,
                "{dir}: ingest seals and checks endpoints as webhooks opens and delivers: {var}"
            );
            if var.ends_with("SEALING_KEY") {
                assert!(
                    given.starts_with("Secret "),
                    "{dir}: the sealing key comes from {given}, not a Secret"
                );
            }
        }
    }
}

#[test]
fn the_webhooks_termination_grace_outlasts_its_shutdown() {
    for (dir, docs) in every_render() {
        let webhooks = deployment(&docs, "webhooks");
        let container = &containers(&webhooks)[0];
        let settings = DeliverySettings::from_iter(
            environment(&docs, container)
                .into_iter()
                .filter_map(|(var, value)| Some((var, value?))),
        )
        .unwrap();
        // Attempts in flight finish within the timeout and the record in hand within
        // FINISH_GRACE, then the producer flushes the attempts' events (webhooks/src/startup.rs).
        let shutdown = Duration::from_secs(settings.timeout_secs.max(1))
            + imgpipe_infra::consume::FINISH_GRACE
            + imgpipe_webhooks::startup::SHUTDOWN_FLUSH
            + pre_stop_sleep(container);
        assert!(
            termination_grace(&webhooks) > shutdown,
            "{dir}: the webhooks' grace must exceed {shutdown:?}"
        );
    }
}

/// An address block, `a.b.c.d/n`, `x::/n` or a lone address.
struct Cidr {
    network: IpAddr,
    prefix: u32,
}

impl Cidr {
    fn parse(text: &str) -> Self {
        let (address, prefix) = text.split_once('/').unwrap_or((text, ""));
        let network: IpAddr = address.trim().parse().unwrap_or_else(|_| panic!("{text}"));
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = if prefix.is_empty() {
            bits
        } else {
            prefix.parse().unwrap()
        };
        assert!(prefix <= bits, "{text}");
        Self { network, prefix }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let mask = |bits: u32| u128::MAX.checked_shl(bits - self.prefix).unwrap_or(0);
        match (self.network, ip) {
            (IpAddr::V4(network), IpAddr::V4(ip)) => {
                let mask = mask(32) as u32;
                u32::from(network) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(ip)) => {
                let mask = mask(128);
                u128::from(network) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Whether a label selector (`matchLabels`, `matchExpressions`; empty: all) selects `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let label = |key: &Value| labels.get(key).and_then(Value::as_str);
    let by_labels = selector["matchLabels"]
        .as_mapping()
        .into_iter()
        .flatten()
        .all(|(key, value)| label(key) == value.as_str());
    let by_expressions = selector["matchExpressions"]
        .as_sequence()
        .into_iter()
        .flatten()
        .all(|expression| {
            let value = label(&expression["key"]);
            let listed = |v: &str| {
                expression["values"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .any(|listed| listed.as_str() == Some(v))
            };
            match expression["operator"].as_str().unwrap() {
                "In" => value.is_some_and(listed),
                "NotIn" => !value.is_some_and(listed),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                other => panic!("selector operator {other}"),
            }
        });
    by_labels && by_expressions
}

/// Whether a rule's `ports` (absent or empty: every port) admit TCP `port`.
fn admits_port(ports: &Value, port: u64) -> bool {
    let Some(ports) = ports.as_sequence().filter(|ports| !ports.is_empty()) else {
        return true;
    };
    ports.iter().any(|entry| {
        let protocol = entry["protocol"].as_str().unwrap_or("TCP");
        let Some(first) = entry["port"].as_u64() else {
            // No port: every port of the protocol. A named port is a destination pod's, which an
            // address outside the cluster does not have.
            return protocol == "TCP" && entry.get("port").is_none();
        };
        let last = entry["endPort"].as_u64().unwrap_or(first);
        protocol == "TCP" && (first..=last).contains(&port)
    })
}

/// Whether a rule's `to` (absent or empty: everywhere) admits `ip`. A pod or namespace selector
/// admits what it selects, which is inside the cluster: counted as admitting every private
/// address and no public one.
fn admits_address(to: &Value, ip: IpAddr, private: bool) -> bool {
    let Some(peers) = to.as_sequence().filter(|peers| !peers.is_empty()) else {
        return true;
    };
    peers.iter().any(|peer| match peer.get("ipBlock") {
        Some(block) => {
            Cidr::parse(block["cidr"].as_str().unwrap()).contains(ip)
                && !block["except"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .any(|except| Cidr::parse(except.as_str().unwrap()).contains(ip))
        }
        None => private,
    })
}

/// Whether the render's NetworkPolicies let the workload's pods open a TCP connection to
/// `ip:port`: the union of the egress rules of every policy that selects them and restricts
/// egress (a pod no such policy selects may go anywhere).
fn egress_allowed(
    docs: &[Value],
    workload: &Workload,
    ip: IpAddr,
    port: u64,
    private: bool,
) -> bool {
    let labels = &workload.template["metadata"]["labels"];
    let policies: Vec<&Value> = of_kind(docs, "NetworkPolicy")
        .filter(|policy| selects(&policy["spec"]["podSelector"], labels))
        .filter(|policy| {
            let types = &policy["spec"]["policyTypes"];
            types
                .as_sequence()
                .map_or(policy["spec"].get("egress").is_some(), |types| {
                    types.iter().any(|t| t.as_str() == Some("Egress"))
                })
        })
        .collect();
    policies.is_empty()
        || policies.iter().any(|policy| {
            policy["spec"]["egress"]
                .as_sequence()
                .into_iter()
                .flatten()
                .any(|rule| {
                    admits_port(&rule["ports"], port) && admits_address(&rule["to"], ip, private)
                })
        })
}

/// Addresses a webhook must never reach: private networks, loopback, link-local (the cloud
/// metadata endpoint), CGNAT, and IPv4 behind IPv6's mapped form.
const PRIVATE: &[&str] = &[
    "10.0.0.1",
    "10.96.0.1",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.1.1",
    "127.0.0.1",
    "169.254.169.254",
    "100.64.0.1",
    "100.127.255.254",
    "0.0.0.0",
    "::1",
    "fd00::1",
    "fe80::1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
];
/// Public addresses, where the endpoints are.
const PUBLIC: &[&str] = &["93.184.215.14", "1.1.1.1", "2606:4700:4700::1111"];

#[test]
fn webhooks_reach_port_443_at_public_addresses_only() {
    for (dir, docs) in every_render() {
        let webhooks = deployment(&docs, "webhooks");
        let env = environment(&docs, &containers(&webhooks)[0]);
        let allowed = |ip: &str, private: bool| {
            egress_allowed(&docs, &webhooks, ip.parse().unwrap(), 443, private)
        };
        for ip in PRIVATE {
            assert!(
                !allowed(ip, true),
                "{dir}: the NetworkPolicies let webhooks reach {ip}:443"
            );
        }
        for ip in PUBLIC {
            assert!(
                allowed(ip, false),
                "{dir}: the NetworkPolicies keep webhooks from {ip}:443, an endpoint's address"
            );
        }
        // What the service is told to allow, the policies allow too.
        let allow_private = env
            .get("IMGPIPE_WEBHOOKS_ALLOW_PRIVATE")
            .cloned()
            .flatten()
            .unwrap_or_default();
        for entry in allow_private
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let network = Cidr::parse(entry).network;
            assert!(
                egress_allowed(&docs, &webhooks, network, 443, true),
                "{dir}: IMGPIPE_WEBHOOKS_ALLOW_PRIVATE lists {entry}, which no policy opens"
            );
        }
    }
}

#[test]
fn the_egress_check_sees_an_open_policy() {
    let (_, mut docs) = every_render().next().unwrap();
    let open: Value = serde_norway::from_str(
        "kind: NetworkPolicy
metadata: {name: open}
spec:
  podSelector: {matchExpressions: [{key: app.kubernetes.io/component, operator: Exists}]}
  policyTypes: [Egress]
  egress: [{ports: [{port: 400, endPort: 500}]}]",
    )
    .unwrap();
    docs.push(open);
    let webhooks = deployment(&docs, "webhooks");
    let private = "10.0.0.1".parse().unwrap();
    assert!(egress_allowed(&docs, &webhooks, private, 443, true));
    assert!(!egress_allowed(&docs, &webhooks, private, 80, true));
}
