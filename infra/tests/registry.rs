//! The schema-registry client and the Confluent framing.
//!
//! No registry server can run on these machines, so this test serves RECORDED Confluent
//! Schema Registry API responses (the shapes Redpanda's registry answers with: `{"id": N}`
//! for a registration, `{"schema": "..."}` for an id, `{"error_code": 40403, ...}` for an
//! unknown id) from a small local HTTP server, and checks what the client sends to it.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use imgpipe_infra::registry::{EventCodec, RegistryConfig};
use imgpipe_schemas::{codec, Event, ImageFailed, Producer, SchemaError};
use serde_json::{json, Value};
use uuid::Uuid;

const SCHEMA_ID: u32 = 7;

#[derive(Default)]
struct Recorded {
    requests: Vec<(String, Value)>,
}

type Shared = Arc<Mutex<Recorded>>;

async fn fake_registry() -> (String, Shared) {
    let recorded: Shared = Arc::default();
    let app =
        Router::new()
            .route(
                "/config/{subject}",
                put(
                    |State(r): State<Shared>,
                     Path(subject): Path<String>,
                     Json(body): Json<Value>| async move {
                        r.lock()
                            .unwrap()
                            .requests
                            .push((format!("PUT /config/{subject}"), body.clone()));
                        Json(body)
                    },
                ),
            )
            .route(
                "/subjects/{subject}/versions",
                post(
                    |State(r): State<Shared>,
                     Path(subject): Path<String>,
                     headers: HeaderMap,
                     Json(body): Json<Value>| async move {
                        let content_type = headers["content-type"].to_str().unwrap().to_string();
                        r.lock().unwrap().requests.push((
                            format!("POST /subjects/{subject}/versions {content_type}"),
                            body,
                        ));
                        Json(json!({ "id": SCHEMA_ID }))
                    },
                ),
            )
            .route(
                "/schemas/ids/{id}",
                get(|Path(id): Path<u32>| async move {
                    if id == SCHEMA_ID {
                        (
                            StatusCode::OK,
                            Json(json!({ "schema": codec::current_schema().canonical_form() })),
                        )
                    } else {
                        (
                            StatusCode::NOT_FOUND,
                            Json(json!({ "error_code": 40403, "message": "Schema not found" })),
                        )
                    }
                }),
            )
            .with_state(recorded.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, recorded)
}

fn event() -> Event {
    Event::new(
        Uuid::now_v7(),
        "req-registry",
        None,
        Producer {
            service: "test".into(),
            version: "0".into(),
        },
        ImageFailed {
            reason_code: "undecodable".into(),
            message: "eof".into(),
        },
    )
}

#[tokio::test]
async fn writers_register_and_frame_records_the_confluent_way() {
    let (url, recorded) = fake_registry().await;
    let config = RegistryConfig { url: Some(url) };
    let writer = EventCodec::connect(&config, "imgpipe.events")
        .await
        .unwrap();

    let requests = recorded.lock().unwrap().requests.clone();
    assert_eq!(requests[0].0, "PUT /config/imgpipe.events-value");
    assert_eq!(
        requests[0].1,
        json!({ "compatibility": "BACKWARD_TRANSITIVE" })
    );
    assert_eq!(
        requests[1].0,
        "POST /subjects/imgpipe.events-value/versions application/vnd.schemaregistry.v1+json"
    );
    let registered: Value =
        serde_json::from_str(requests[1].1["schema"].as_str().unwrap()).unwrap();
    assert_eq!(registered["name"], "imgpipe.events.Event");

    let event = event();
    let bytes = writer.encode(&event).unwrap();
    assert_eq!(bytes[0], 0, "Confluent magic byte");
    assert_eq!(
        u32::from_be_bytes(bytes[1..5].try_into().unwrap()),
        SCHEMA_ID
    );
    assert!(writer.content_type().contains("confluent"));

    // A reader that has never seen id 7 fetches it once and decodes.
    let reader = EventCodec::reader(&config);
    assert_eq!(reader.decode(&bytes).await.unwrap().unwrap(), event);
    // It still reads single-object records.
    let single = imgpipe_schemas::encode(&event).unwrap();
    assert_eq!(reader.decode(&single).await.unwrap().unwrap(), event);
    // An id the registry does not know is a permanent, typed error.
    let mut unknown = bytes.clone();
    unknown[1..5].copy_from_slice(&99u32.to_be_bytes());
    assert!(matches!(
        reader.decode(&unknown).await.unwrap(),
        Err(SchemaError::UnknownSchemaId(99))
    ));
}

#[tokio::test]
async fn without_a_registry_records_are_single_object_and_confluent_ids_are_unknown() {
    let codec = EventCodec::single_object();
    let event = event();
    let bytes = codec.encode(&event).unwrap();
    assert_eq!(&bytes[..2], &[0xC3, 0x01]);
    assert_eq!(codec.decode(&bytes).await.unwrap().unwrap(), event);
    let confluent = imgpipe_schemas::encode_confluent(&event, 3).unwrap();
    assert!(matches!(
        codec.decode(&confluent).await.unwrap(),
        Err(SchemaError::UnknownSchemaId(3))
    ));
}

#[tokio::test]
async fn a_registry_that_does_not_answer_is_a_transient_error() {
    // Nothing listens on this port: the reader reports an infrastructure error, which the
    // consume loop retries, instead of dead-lettering a good record.
    let reader = EventCodec::reader(&RegistryConfig {
        url: Some("http://127.0.0.1:9".into()),
    });
    let confluent = imgpipe_schemas::encode_confluent(&event(), 5).unwrap();
    assert!(reader.decode(&confluent).await.is_err());
}
