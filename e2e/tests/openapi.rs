//! `GET /v1/openapi.json` describes what ingest really serves, and the presigned variant URLs
//! of `GET /v1/images/{id}` fetch the variants with no API key, on the real stack.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use imgpipe_e2e::{corpus_files, Pipeline};
use imgpipe_ingest::IngestError;
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

async fn fetch_document(pipeline: &Pipeline) -> Value {
    // No Authorization header: the document is public.
    let response = pipeline
        .http
        .get(pipeline.url("/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    response.json().await.unwrap()
}

/// Each documented (method, path), with path parameters filled in.
fn documented_operations(document: &Value) -> Vec<(String, String, String)> {
    let mut operations = Vec::new();
    for (template, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let path = template.replace("{id}", &Uuid::now_v7().to_string());
            operations.push((method.to_uppercase(), template.clone(), path));
        }
    }
    operations
}

async fn send(pipeline: &Pipeline, method: &str, path: &str) -> (u16, Value) {
    let response = pipeline
        .http
        .request(method.parse().unwrap(), pipeline.url(path))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_document_describes_every_route_and_every_error_code() {
    let pipeline = Pipeline::start().await.expect("pipeline starts");
    let document = fetch_document(&pipeline).await;
    // What the running router serves is what the library builds for tooling.
    assert_eq!(
        document,
        serde_json::to_value(imgpipe_ingest::openapi::document()).unwrap()
    );
    assert!(
        document["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        document["openapi"]
    );
    assert_eq!(
        document["components"]["securitySchemes"]["api_key"]["scheme"],
        "bearer"
    );

    // Which routes the document lists is the unit test's business (ingest/src/openapi.rs); here
    // the served document is that one, and the server answers what it documents (below).
    let documented: BTreeSet<(String, String)> = documented_operations(&document)
        .into_iter()
        .map(|(method, template, _)| (method, template))
        .collect();

    let codes: BTreeSet<&str> = document["components"]["schemas"]["ErrorBody"]["properties"]
        ["code"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|code| code.as_str().unwrap())
        .collect();
    assert_eq!(codes, IngestError::all_codes().into_iter().collect());

    // Every documented operation is served: without a key, each /v1 route that needs one
    // answers 401 missing-api-key (never route-not-found), the open ones answer 200; and every
    // method a path does not document is refused as not allowed.
    let mut seen_codes = BTreeSet::new();
    for (method, template, path) in documented_operations(&document) {
        let (status, body) = send(&pipeline, &method, &path).await;
        let open = document["paths"][&template][method.to_lowercase()]["security"]
            == serde_json::json!([{}]);
        if open {
            assert_eq!(status, 200, "{method} {path}: {body}");
        } else {
            assert_eq!(status, 401, "{method} {path}: {body}");
            assert_eq!(body["code"], "missing-api-key", "{method} {path}");
        }
        for other in METHODS {
            if documented.contains(&(other.to_string(), template.clone())) {
                continue;
            }
            let (status, body) = send(&pipeline, other, &path).await;
            assert_eq!(status, 405, "{other} {path}: {body}");
            if let Some(code) = body["code"].as_str() {
                seen_codes.insert(code.to_string());
            }
        }
        if let Some(code) = body["code"].as_str() {
            seen_codes.insert(code.to_string());
        }
    }
    let (status, body) = send(&pipeline, "GET", "/v1/nothing-here").await;
    assert_eq!(status, 404);
    seen_codes.insert(body["code"].as_str().unwrap().to_string());
    // The codes the server really answered are among those the document lists.
    assert!(seen_codes.len() >= 3, "{seen_codes:?}");
    for code in &seen_codes {
        assert!(codes.contains(code.as_str()), "{code} is not documented");
    }

    pipeline.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn presigned_variant_urls_fetch_the_variants_without_a_key() {
    let pipeline = Pipeline::start().await.expect("pipeline starts");
    let photo = corpus_files("photos").into_iter().next().unwrap();
    let (status, accepted) = pipeline
        .upload(std::fs::read(&photo).unwrap())
        .await
        .unwrap();
    assert_eq!(status, 202, "{}: {accepted}", photo.display());
    let id = accepted["id"].as_str().unwrap();
    let image = pipeline
        .wait_until_settled(id, Duration::from_secs(240))
        .await
        .unwrap();
    assert_eq!(image["status"], "ready", "{image}");

    // Both RFC 3339 in UTC from one serializer, so their seconds compare as text; the default
    // TTL is 15 minutes.
    let expires_at = image["urls_expire_at"].as_str().unwrap();
    let updated_at = image["updated_at"].as_str().unwrap();
    assert!(
        expires_at.ends_with('Z') && expires_at.len() >= 20,
        "{expires_at}"
    );
    assert!(
        expires_at[..19] > updated_at[..19],
        "{expires_at} vs {updated_at}"
    );

    // A client with no credentials at all, not the harness's.
    let anonymous = reqwest::Client::new();
    let variants = image["variants"].as_array().unwrap();
    assert_eq!(variants.len(), 3, "{image}");
    for variant in variants {
        let url = variant["url"].as_str().unwrap();
        let response = anonymous.get(url).send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        let bytes = response.bytes().await.unwrap();
        assert_eq!(
            bytes.len() as u64,
            variant["bytes"].as_u64().unwrap(),
            "{url}"
        );
        assert_eq!(
            hex::encode(Sha256::digest(&bytes)),
            variant["sha256"].as_str().unwrap(),
            "{url}"
        );
        assert_eq!(&bytes[8..12], b"WEBP", "{url}");

        // The signature is what grants access: the same URL with it altered is refused.
        let tampered = url.replace("X-Amz-Signature=", "X-Amz-Signature=0");
        let refused = anonymous.get(&tampered).send().await.unwrap();
        assert!(refused.status().is_client_error(), "{}", refused.status());
    }

    pipeline.stop().await.unwrap();
}
