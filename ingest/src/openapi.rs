//! The OpenAPI document served at `GET /v1/openapi.json`.
//!
//! The `/v1` paths come from the `#[utoipa::path]` attributes of the handlers the router
//! serves (utoipa-axum registers the route and its documentation together), so a route cannot
//! be served undocumented by accident. What this module adds: the routes documented here
//! instead (the operator endpoints, served outside `/v1`), the Bearer
//! security scheme, and the error body with every code `IngestError` can give.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::response::IntoResponse;
use axum::routing::{get, MethodRouter};
use axum::{Json, Router};
use serde::Serialize;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{OpenApi as Document, RefOr};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};
use utoipa_axum::router::OpenApiRouter;

use crate::error::{ErrorBody, IngestError};

/// The name the security scheme has in the document (also spelled out in `security(...)` below,
/// which takes only a literal).
pub const SECURITY_SCHEME: &str = "api_key";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "imgpipe ingest API",
        description = "Upload images, then read their status, variants and event timeline. \
            Every error is JSON `{\"code\": \"kebab-case\", \"message\": \"...\"}`; the codes are \
            listed on the `ErrorBody` schema. Every response carries `X-Request-Id`."
    ),
    paths(openapi_json, healthz, readyz, metrics),
    components(schemas(ErrorBody)),
    modifiers(&BearerApiKey),
    security(("api_key" = [])),
    tags(
        (name = "images", description = "A client's images; each client sees only its own"),
        (name = "webhooks", description = "A client's webhook endpoints and their deliveries; each client sees only its own"),
        (name = "ops", description = "For operators and tooling; no API key"),
    )
)]
struct ApiDoc;

/// The whole document, from the routes as `crate::routes` builds them.
pub fn document() -> Document {
    assemble(crate::routes::v1().into_openapi())
}

/// The routes of `documented`, and `GET /v1/openapi.json` answering the whole document: theirs
/// and what this module documents.
pub(crate) fn with_document<S: Clone + Send + Sync + 'static>(
    documented: OpenApiRouter<S>,
) -> Router<S> {
    let (routes, paths) = documented.split_for_parts();
    routes.route("/v1/openapi.json", serve(assemble(paths)))
}

/// Adds to the paths the `/v1` router documented what this module documents.
fn assemble(routed: Document) -> Document {
    let mut document = ApiDoc::openapi();
    document.merge(routed);
    document
}

/// `GET /v1/openapi.json`, answering `document`.
fn serve<S: Clone + Send + Sync + 'static>(document: Document) -> MethodRouter<S> {
    let document = Arc::new(document);
    get(move || {
        let document = Arc::clone(&document);
        async move { Json(document.as_ref()).into_response() }
    })
}

struct BearerApiKey;

impl Modify for BearerApiKey {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            SECURITY_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key minted with `imgpipe api-key <client>`: \
                         `Authorization: Bearer <key>`",
                    ))
                    .build(),
            ),
        );
    }
}

/// Written by hand so the `code` enum is `IngestError::all_codes()` itself, and the description
/// says which status carries which code.
impl PartialSchema for ErrorBody {
    fn schema() -> RefOr<Schema> {
        let mut by_status: BTreeMap<u16, Vec<&str>> = BTreeMap::new();
        for error in IngestError::one_of_each() {
            by_status
                .entry(error.status().as_u16())
                .or_default()
                .push(error.code());
        }
        let table: Vec<String> = by_status
            .iter()
            .map(|(status, codes)| format!("- {status}: `{}`", codes.join("`, `")))
            .collect();
        ObjectBuilder::new()
            .description(Some(format!(
                "Every error the API answers. Codes by status:\n{}",
                table.join("\n")
            )))
            .property(
                "code",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some("Stable: match on this, not on `message`."))
                    .enum_values(Some(IngestError::all_codes())),
            )
            .required("code")
            .property(
                "message",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some("For people; may change.")),
            )
            .required("message")
            .into()
    }
}

impl ToSchema for ErrorBody {}

/// This document.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "ops",
    operation_id = "get_openapi",
    security(()),
    responses((status = 200, description = "OpenAPI 3.1", content_type = "application/json")),
)]
#[allow(dead_code)]
fn openapi_json() {}

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
struct Health {
    /// `ok` or `stalled` (healthz), `ready` or `not-ready` (readyz).
    status: String,
    /// The check that failed: `dependencies` (broker, bucket or database; the log says
    /// which and why) or, on the workers, `consumer`.
    failing: Option<String>,
}

/// The process is alive.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "ops",
    operation_id = "healthz",
    security(()),
    responses((status = 200, description = "Alive", body = Health)),
)]
#[allow(dead_code)]
fn healthz() {}

/// The broker, the bucket and the database answer.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "ops",
    operation_id = "readyz",
    security(()),
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "A dependency is unreachable", body = Health),
    ),
)]
#[allow(dead_code)]
fn readyz() {}

/// Prometheus metrics (names in `ingest/src/metrics.rs`).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "ops",
    operation_id = "metrics",
    security(()),
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")),
)]
#[allow(dead_code)]
fn metrics() {}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;

    fn json() -> Value {
        serde_json::to_value(document()).unwrap()
    }

    fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
        let mut found = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                found.push((method.to_uppercase(), path.clone(), operation));
            }
        }
        found
    }

    #[test]
    fn documents_every_v1_route_and_the_ops_routes() {
        let doc = json();
        let documented: BTreeSet<(String, String)> = operations(&doc)
            .into_iter()
            .map(|(method, path, _)| (method, path))
            .collect();
        let expected: BTreeSet<(String, String)> = [
            ("GET", "/v1/images"),
            ("POST", "/v1/images"),
            ("GET", "/v1/images/{id}"),
            ("DELETE", "/v1/images/{id}"),
            ("GET", "/v1/images/{id}/events"),
            ("GET", "/v1/images/{id}/stream"),
            ("GET", "/v1/stats"),
            ("GET", "/v1/webhooks"),
            ("POST", "/v1/webhooks"),
            ("GET", "/v1/webhooks/{id}"),
            ("PATCH", "/v1/webhooks/{id}"),
            ("DELETE", "/v1/webhooks/{id}"),
            ("POST", "/v1/webhooks/{id}/rotate-secret"),
            ("GET", "/v1/webhooks/{id}/deliveries"),
            ("POST", "/v1/webhooks/{id}/redeliver"),
            ("GET", "/v1/openapi.json"),
            ("GET", "/healthz"),
            ("GET", "/readyz"),
            ("GET", "/metrics"),
        ]
        .into_iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
        assert_eq!(documented, expected);
    }

    #[test]
    fn the_error_body_lists_every_code() {
        let doc = json();
        let codes: Vec<&str> = doc["components"]["schemas"]["ErrorBody"]["properties"]["code"]
            ["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert_eq!(codes, IngestError::all_codes());
    }

    /// The codes a response description names (in backticks) are real codes of that status,
    /// so the per-route lists cannot drift from `IngestError::status`.
    #[test]
    fn error_responses_name_only_codes_of_their_status() {
        let status_of: BTreeMap<&str, u16> = IngestError::one_of_each()
            .iter()
            .map(|e| (e.code(), e.status().as_u16()))
            .collect();
        let doc = json();
        let mut named = 0;
        for (method, path, operation) in operations(&doc) {
            for (status, response) in operation["responses"].as_object().unwrap() {
                let status: u16 = status.parse().unwrap();
                if status < 400 || path.starts_with("/readyz") {
                    continue;
                }
                assert_eq!(
                    response["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{method} {path} {status}"
                );
                let description = response["description"].as_str().unwrap();
                for code in description.split('`').skip(1).step_by(2) {
                    if code.contains('/') || code.contains(' ') || code == "true" {
                        continue;
                    }
                    named += 1;
                    assert_eq!(
                        status_of.get(code),
                        Some(&status),
                        "{method} {path} {status} names {code}"
                    );
                }
            }
        }
        assert!(named > 20, "descriptions name codes: {named}");
    }

    #[test]
    fn v1_needs_the_bearer_key_except_the_document_itself() {
        let doc = json();
        assert_eq!(
            doc["components"]["securitySchemes"][SECURITY_SCHEME]["scheme"],
            "bearer"
        );
        assert_eq!(doc["security"][0][SECURITY_SCHEME], serde_json::json!([]));
        for (method, path, operation) in operations(&doc) {
            let open = operation["security"] == serde_json::json!([{}]);
            let should_be_open = !path.starts_with("/v1/") || path == "/v1/openapi.json";
            assert_eq!(open, should_be_open, "{method} {path}");
        }
    }

    #[test]
    fn get_image_documents_as_of_and_its_errors() {
        let doc = json();
        let operation = &doc["paths"]["/v1/images/{id}"]["get"];
        let as_of = operation["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "as_of")
            .unwrap();
        assert_eq!(as_of["in"], "query");
        assert_eq!(as_of["required"], false);
        assert_eq!(as_of["schema"]["format"], "date-time", "{as_of}");
        let responses = &operation["responses"];
        assert!(responses["404"]["description"]
            .as_str()
            .unwrap()
            .contains("`not-yet-uploaded`"));
        assert!(responses["409"]["description"]
            .as_str()
            .unwrap()
            .contains("`as-of-unavailable`"));
        // Its own fields follow the flattened `ImageRow` in an allOf.
        let status = &doc["components"]["schemas"]["ImageStatus"]["allOf"][1]["properties"];
        assert_eq!(status["as_of"]["format"], "date-time", "{status}");
    }

    fn parameter<'a>(operation: &'a Value, name: &str) -> &'a Value {
        operation["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name}: {operation}"))
    }

    /// What the server enforces is in the document, so a client (or schemathesis) generating
    /// from it sends what is accepted.
    #[test]
    fn the_document_states_what_the_server_accepts() {
        let doc = json();
        let list = &doc["paths"]["/v1/images"]["get"];
        assert_eq!(
            parameter(list, "status")["schema"]["enum"],
            serde_json::json!(["uploaded", "processing", "ready", "failed", "deleted"])
        );
        let limit = &parameter(list, "limit")["schema"];
        assert_eq!(
            (&limit["minimum"], &limit["maximum"]),
            (&1.into(), &200.into())
        );
        let events = &doc["paths"]["/v1/images/{id}/events"]["get"];
        for operation in [list, events] {
            let cursor = &parameter(operation, "cursor")["schema"];
            assert!(
                cursor["pattern"].as_str().unwrap().starts_with('^'),
                "{cursor}"
            );
            assert_eq!(cursor["maxLength"], 54);
        }
        let upload = &doc["paths"]["/v1/images"]["post"];
        assert_eq!(
            parameter(upload, "Idempotency-Key")["schema"]["maxLength"],
            255
        );
        let content = &upload["requestBody"]["content"];
        let resolve = |schema: &Value| -> Value {
            match schema["$ref"].as_str() {
                Some(reference) => {
                    let name = reference.trim_start_matches("#/components/schemas/");
                    doc["components"]["schemas"][name].clone()
                }
                None => schema.clone(),
            }
        };
        let form = &content["multipart/form-data"];
        let fields = resolve(&form["schema"]);
        assert_eq!(fields["required"], serde_json::json!(["file"]), "{fields}");
        assert_eq!(fields["additionalProperties"], false);
        assert_eq!(fields["properties"]["file"]["format"], "binary");
        let metadata = &fields["properties"]["metadata"];
        assert_eq!(metadata["maxProperties"], 32, "{metadata}");
        assert_eq!(metadata["additionalProperties"]["maxLength"], 128);
        assert_eq!(
            form["encoding"]["metadata"]["contentType"],
            "application/json"
        );
        assert_eq!(resolve(&content["image/*"]["schema"])["minLength"], 1);
    }

    /// The webhook bodies say what the server takes: no unknown fields, the event types' words,
    /// the URL's bound; the rotation's body is optional.
    #[test]
    fn the_webhook_bodies_state_what_the_server_accepts() {
        let doc = json();
        let schemas = &doc["components"]["schemas"];
        let create = &doc["paths"]["/v1/webhooks"]["post"];
        assert_eq!(create["requestBody"]["required"], true);
        let new = &schemas["NewWebhook"];
        assert_eq!(new["additionalProperties"], false, "{new}");
        assert_eq!(new["required"], serde_json::json!(["url", "event_types"]));
        assert_eq!(new["properties"]["url"]["maxLength"], 2048);
        assert_eq!(new["properties"]["event_types"]["minItems"], 1);
        assert_eq!(
            schemas["WebhookEventTypeName"]["enum"],
            serde_json::json!(["image.ready", "image.failed", "image.deleted"])
        );
        for name in ["WebhookUpdate", "SecretRotation", "RedeliveryRequest"] {
            assert_eq!(schemas[name]["additionalProperties"], false, "{name}");
        }
        let overlap = &schemas["SecretRotation"]["properties"]["overlap_seconds"];
        assert_eq!(
            (&overlap["minimum"], &overlap["maximum"]),
            (&0.into(), &604_800.into())
        );
        let rotate = &doc["paths"]["/v1/webhooks/{id}/rotate-secret"]["post"]["requestBody"];
        assert_ne!(rotate["required"], true, "{rotate}");
        let endpoint = &schemas["WebhookEndpoint"]["properties"];
        assert!(endpoint.get("secret").is_none(), "{endpoint}");
    }

    #[test]
    fn path_parameters_are_declared() {
        let doc = json();
        for (method, path, operation) in operations(&doc) {
            for segment in path.split('/') {
                let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) else {
                    continue;
                };
                let declared = operation["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| p["name"] == name && p["in"] == "path" && p["required"] == true);
                assert!(declared, "{method} {path}: {name}");
            }
        }
    }
}
