//! Dashboards and alerts as code, checked: every PromQL expression in the Grafana dashboard
//! (panel targets and variable queries) and in the Prometheus rule files parses, and selects
//! only metrics the services export, as named in each crate's metric-name list (`ALL`), or
//! Prometheus's own `up`. So renaming a metric fails here, not silently on a dashboard. Every
//! alert has a severity, a summary, a description and a runbook_url whose anchor is a heading
//! of docs/runbooks.md, and every runbook section belongs to an alert. No stack needed.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use imgpipe_infra::metrics::MetricKind;
use promql_parser::parser::{Expr, VectorSelector};
use promql_parser::util::{walk_expr, ExprVisitor};
use serde_json::Value as Json;
use serde_norway::Value as Yaml;

const DASHBOARD: &str = "deploy/observability/grafana/imgpipe.json";
const PROMETHEUS_CONFIG: &str = "deploy/observability/prometheus/prometheus.yml";
const RUNBOOKS: &str = "docs/runbooks.md";
/// Series Prometheus makes itself for every target.
const PROMETHEUS_OWN: &[&str] = &["up"];
const SEVERITIES: &[&str] = &["critical", "warning", "info"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every series name the services render: each metric under every name its kind renders.
fn exported_series() -> BTreeSet<String> {
    let lists: [&[(&str, MetricKind)]; 5] = [
        imgpipe_infra::consume::health::metric_names::ALL,
        imgpipe_ingest::metrics::ALL,
        imgpipe_processor::metrics::ALL,
        imgpipe_projector::metrics::ALL,
        imgpipe_webhooks::metrics::ALL,
    ];
    let mut series: BTreeSet<String> = lists
        .iter()
        .flat_map(|list| list.iter())
        .flat_map(|(name, kind)| kind.series(name))
        .collect();
    series.extend(PROMETHEUS_OWN.iter().map(|s| s.to_string()));
    series
}

/// The metric names an expression selects, and the `job` values its matchers name.
#[derive(Default)]
struct Selected {
    metrics: Vec<String>,
    jobs: Vec<String>,
}

impl ExprVisitor for Selected {
    type Error = String;

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, String> {
        let selector = match expr {
            Expr::VectorSelector(selector) => selector,
            Expr::MatrixSelector(matrix) => &matrix.vs,
            _ => return Ok(true),
        };
        self.metrics.push(metric_name(selector)?);
        for matcher in &selector.matchers.matchers {
            // `job="x"` or `job=~"a|b"`; a Grafana variable (`$job`) names no job itself.
            if matcher.name == "job" && !matcher.value.contains('$') {
                self.jobs
                    .extend(matcher.value.split('|').map(str::to_string));
            }
        }
        Ok(true)
    }
}

fn metric_name(selector: &VectorSelector) -> Result<String, String> {
    let by_matcher = selector
        .matchers
        .matchers
        .iter()
        .find(|m| m.name == "__name__")
        .map(|m| m.value.clone());
    selector
        .name
        .clone()
        .or(by_matcher)
        .ok_or_else(|| format!("a selector without a metric name: {selector}"))
}

/// Grafana replaces its interval variables before sending a query; PromQL has no `$`.
fn as_sent_by_grafana(expr: &str) -> String {
    ["$__rate_interval", "$__interval", "$__range"]
        .iter()
        .fold(expr.to_string(), |expr, variable| {
            expr.replace(variable, "5m")
        })
}

/// Parses `expr` and returns what it selects.
fn selected(expr: &str) -> Result<Selected, String> {
    let parsed = promql_parser::parser::parse(expr)?;
    let mut selected = Selected::default();
    walk_expr(&mut selected, &parsed)?;
    Ok(selected)
}

/// Parses `expr` and returns the metric names it selects.
fn selected_metrics(expr: &str) -> Result<Vec<String>, String> {
    selected(expr).map(|selected| selected.metrics)
}

/// Checks each `(where, expr)`: it parses, and selects only exported series. Returns the
/// problems, one line each.
fn check_expressions(expressions: &[(String, String)]) -> Vec<String> {
    let exported = exported_series();
    let mut problems = Vec::new();
    for (place, expr) in expressions {
        match selected_metrics(expr) {
            Err(error) => problems.push(format!("{place}: does not parse ({error}): {expr}")),
            Ok(names) if names.is_empty() => {
                problems.push(format!("{place}: selects no metric: {expr}"))
            }
            Ok(names) => problems.extend(
                names
                    .into_iter()
                    .filter(|name| !exported.contains(name))
                    .map(|name| format!("{place}: {name} is not a metric the services export")),
            ),
        }
    }
    problems
}

fn dashboard() -> Json {
    serde_json::from_str(&read(&root().join(DASHBOARD))).expect("the dashboard is JSON")
}

/// Panels, with those nested in rows.
fn panels(dashboard: &Json) -> Vec<&Json> {
    fn collect<'a>(panels: &'a Json, into: &mut Vec<&'a Json>) {
        for panel in panels.as_array().into_iter().flatten() {
            into.push(panel);
            collect(&panel["panels"], into);
        }
    }
    let mut all = Vec::new();
    collect(&dashboard["panels"], &mut all);
    all
}

/// A query variable's PromQL: `label_values(<selector>, <label>)` is Grafana's, the selector
/// inside is PromQL; `query_result(<expr>)` wraps PromQL.
fn variable_promql(query: &str) -> Option<String> {
    if let Some(inner) = query
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
    {
        // With no selector (`label_values(job)`) the query selects nothing to check.
        return inner.rsplit_once(',').map(|(s, _)| s.trim().to_string());
    }
    if let Some(inner) = query
        .strip_prefix("query_result(")
        .and_then(|q| q.strip_suffix(')'))
    {
        return Some(inner.to_string());
    }
    Some(query.to_string())
}

fn dashboard_expressions(dashboard: &Json) -> Vec<(String, String)> {
    let mut expressions = Vec::new();
    for panel in panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or("?");
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            let place = format!("panel {title:?} target {}", target["refId"]);
            expressions.push((place, as_sent_by_grafana(expr)));
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if variable["type"] != "query" {
            continue;
        }
        let query = &variable["query"];
        let query = query["query"]
            .as_str()
            .or(query.as_str())
            .unwrap_or_default();
        if let Some(promql) = variable_promql(query) {
            expressions.push((format!("variable {}", variable["name"]), promql));
        }
    }
    expressions
}

#[test]
fn every_dashboard_expression_parses_and_selects_exported_metrics() {
    let dashboard = dashboard();
    let expressions = dashboard_expressions(&dashboard);
    assert!(
        expressions.len() > 20,
        "the dashboard's expressions were not found: {expressions:?}"
    );
    let problems = check_expressions(&expressions);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_dashboard_reads_its_data_source_from_a_variable() {
    let dashboard = dashboard();
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 39);
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(
        variables
            .iter()
            .any(|v| v["name"] == "datasource" && v["type"] == "datasource"),
        "a datasource variable"
    );
    let mut ids = BTreeSet::new();
    for panel in panels(&dashboard) {
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "panel ids are unique"
        );
        if panel["type"] == "row" {
            continue;
        }
        let title = &panel["title"];
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "panel {title}");
        for target in panel["targets"].as_array().unwrap() {
            assert_eq!(
                target["datasource"]["uid"], "${datasource}",
                "panel {title}"
            );
        }
    }
}

fn yaml(path: &Path) -> Yaml {
    serde_norway::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The rule files Prometheus's config loads (relative to the config's folder), each parsed.
fn rule_files() -> Vec<(PathBuf, Yaml)> {
    let config_path = root().join(PROMETHEUS_CONFIG);
    let config = yaml(&config_path);
    let folder = config_path.parent().unwrap();
    let files: Vec<(PathBuf, Yaml)> = config["rule_files"]
        .as_sequence()
        .expect("prometheus.yml has rule_files")
        .iter()
        .map(|file| folder.join(file.as_str().unwrap()))
        .map(|path| {
            let rules = yaml(&path);
            (path, rules)
        })
        .collect();
    assert!(!files.is_empty(), "prometheus.yml loads no rule file");
    files
}

/// Every rule of every group, with where it is.
fn rules(files: &[(PathBuf, Yaml)]) -> Vec<(String, &Yaml)> {
    let mut all = Vec::new();
    for (path, file) in files {
        let groups = file["groups"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{} has no groups", path.display()));
        for group in groups {
            let name = group["name"].as_str().expect("a group has a name");
            let rules = group["rules"]
                .as_sequence()
                .unwrap_or_else(|| panic!("group {name} has no rules"));
            assert!(!rules.is_empty(), "group {name} has no rules");
            for rule in rules {
                let rule_name = rule["alert"].as_str().or(rule["record"].as_str());
                all.push((format!("{name}/{}", rule_name.unwrap_or("?")), rule));
            }
        }
    }
    all
}

#[test]
fn every_rule_expression_parses_and_selects_exported_metrics() {
    let files = rule_files();
    let rules = rules(&files);
    assert!(rules.len() >= 10, "only {} rules found", rules.len());
    let expressions: Vec<(String, String)> = rules
        .iter()
        .map(|(place, rule)| {
            let expr = rule["expr"].as_str().unwrap_or_default();
            (place.clone(), expr.to_string())
        })
        .collect();
    let problems = check_expressions(&expressions);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The job names compose's Prometheus gives its targets (prometheus.yml's `job_name`s);
/// deploy/observability/prometheus/kubernetes.yml gives the pods the same ones
/// (`e2e/tests/deploy.rs` checks that against the rendered manifests).
fn scraped_jobs() -> BTreeSet<String> {
    yaml(&root().join(PROMETHEUS_CONFIG))["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|job| job["job_name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn every_job_the_rules_and_the_dashboard_select_is_one_prometheus_scrapes() {
    let jobs = scraped_jobs();
    let files = rule_files();
    let mut expressions: Vec<(String, String)> = rules(&files)
        .iter()
        .map(|(place, rule)| (place.clone(), rule["expr"].as_str().unwrap().to_string()))
        .collect();
    expressions.extend(dashboard_expressions(&dashboard()));
    let mut named = 0;
    for (place, expr) in &expressions {
        for job in selected(expr).unwrap().jobs {
            named += 1;
            assert!(
                jobs.contains(&job),
                "{place}: selects job {job:?}, which no scrape config names ({jobs:?}): the \
                 selector would match nothing"
            );
        }
    }
    assert!(named >= 4, "no job selectors found");
}

/// GitHub's anchor of a heading: lower case, spaces to dashes, other punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of the runbooks' sections (level-2 headings).
fn runbook_anchors() -> BTreeSet<String> {
    read(&root().join(RUNBOOKS))
        .lines()
        .filter_map(|line| line.strip_prefix("## "))
        .map(anchor)
        .collect()
}

#[test]
fn every_alert_is_labelled_annotated_and_has_a_runbook_section() {
    let files = rule_files();
    let anchors = runbook_anchors();
    let mut linked = BTreeSet::new();
    for (place, rule) in rules(&files) {
        if rule["record"].is_string() {
            continue;
        }
        assert!(
            rule["alert"].is_string(),
            "{place}: neither alert nor record"
        );
        let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
        assert!(
            SEVERITIES.contains(&severity),
            "{place}: severity {severity:?}, not one of {SEVERITIES:?}"
        );
        let annotations = &rule["annotations"];
        for key in ["summary", "description", "runbook_url"] {
            assert!(annotations[key].is_string(), "{place}: no {key} annotation");
        }
        let url = annotations["runbook_url"].as_str().unwrap();
        let (page, section) = url
            .split_once('#')
            .unwrap_or_else(|| panic!("{place}: runbook_url {url} has no #anchor"));
        assert!(page.ends_with(RUNBOOKS), "{place}: {url} is not {RUNBOOKS}");
        assert!(
            anchors.contains(section),
            "{place}: {RUNBOOKS} has no heading with anchor #{section} (it has {anchors:?})"
        );
        linked.insert(section.to_string());
    }
    let unlinked: Vec<&String> = anchors.difference(&linked).collect();
    assert!(
        unlinked.is_empty(),
        "{RUNBOOKS} sections no alert links to: {unlinked:?}"
    );
}

#[test]
fn the_metric_check_catches_a_renamed_metric_and_a_typo() {
    let problems = check_expressions(&[
        (
            "renamed".into(),
            "rate(imgpipe_processor_images_done_total[5m])".into(),
        ),
        ("typo".into(), "sum(rate(imgpipe_consumer_lag[5m]".into()),
        (
            "summary as histogram".into(),
            "histogram_quantile(0.9, rate(imgpipe_ingest_request_duration_seconds_bucket[5m]))"
                .into(),
        ),
        (
            "histogram".into(),
            "histogram_quantile(0.9, rate(imgpipe_processor_stage_duration_seconds_bucket[5m]))"
                .into(),
        ),
    ]);
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems[0].contains("imgpipe_processor_images_done_total is not"));
    assert!(problems[1].contains("does not parse"));
    assert!(problems[2].contains("imgpipe_ingest_request_duration_seconds_bucket is not"));
}
