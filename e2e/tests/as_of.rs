//! `GET /v1/images/{id}?as_of=T` on the real stack: the image as it was before its upload,
//! while uploaded, once processed, once deleted, and the errors of a bad time, of another
//! client and of a timeline projected before payloads were kept.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use imgpipe_e2e::Pipeline;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap()
}

/// `?as_of=` with the time percent-encoded as far as it needs (`+` would read as a space).
async fn as_of(pipeline: &Pipeline, key: &str, id: &str, at: &str) -> (u16, Value) {
    let path = format!("/v1/images/{id}?as_of={}", at.replace('+', "%2B"));
    pipeline
        .request(reqwest::Method::GET, key, &path)
        .await
        .unwrap()
}

/// The fields both answers have, without the presigned URLs only the current one carries.
fn without_urls(mut image: Value) -> Value {
    let object = image.as_object_mut().unwrap();
    object.remove("urls_expire_at");
    object.remove("as_of");
    for variant in object["variants"].as_array_mut().unwrap() {
        variant.as_object_mut().unwrap().remove("url");
    }
    image
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_image_as_of_each_point_of_its_life() {
    let pipeline = Pipeline::start().await.expect("pipeline starts");
    let photo = imgpipe_e2e::corpus_files("photos")
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "jpg"))
        .unwrap();
    let (status, uploaded) = pipeline
        .upload(std::fs::read(&photo).unwrap())
        .await
        .unwrap();
    assert_eq!(status, 202, "{uploaded}");
    let id = uploaded["id"].as_str().unwrap().to_string();
    let ready = pipeline
        .wait_until_settled(&id, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["variants"].as_array().unwrap().len(), 3, "{ready}");

    let (status, body) = pipeline
        .request(
            reqwest::Method::DELETE,
            &pipeline.api_key,
            &format!("/v1/images/{id}"),
        )
        .await
        .unwrap();
    assert_eq!(status, 202, "{body}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let deleted = loop {
        let (_, image) = pipeline.image(&id).await.unwrap();
        if image["status"] == "deleted" && image["variants"] == json!([]) {
            break image;
        }
        assert!(std::time::Instant::now() < deadline, "not deleted: {image}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let (types, events) = pipeline.timeline(&id).await.unwrap();
    assert_eq!(
        types,
        [
            "ImageUploaded",
            "ImageProcessed",
            "ImageDeleted",
            "ObjectsDeleted"
        ],
        "{events:?}"
    );
    let times: Vec<OffsetDateTime> = events
        .iter()
        .map(|e| OffsetDateTime::parse(e["occurred_at"].as_str().unwrap(), &Rfc3339).unwrap())
        .collect();
    let (upload_at, processed_at, deleted_at) = (times[0], times[1], times[2]);
    let micro = time::Duration::microseconds(1);
    let key = pipeline.api_key.clone();

    // Before the upload: no image yet.
    let (status, body) = as_of(&pipeline, &key, &id, &rfc3339(upload_at - micro)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("not-yet-uploaded")),
        "{body}"
    );

    // Between upload and result: uploaded, as uploaded, no variants.
    for at in [upload_at, processed_at - micro] {
        let (status, body) = as_of(&pipeline, &key, &id, &rfc3339(at)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "uploaded", "{body}");
        assert_eq!(body["as_of"], rfc3339(at), "{body}");
        assert_eq!(body["variants"], json!([]), "{body}");
        assert_eq!(body["failure"], Value::Null, "{body}");
        assert_eq!(body["spec_version"], Value::Null, "{body}");
        assert_eq!(body["width"], uploaded["width"], "{body}");
        assert_eq!(body["height"], uploaded["height"], "{body}");
        assert_eq!(body["sha256"], uploaded["sha256"], "{body}");
        assert!(body.get("urls_expire_at").is_none(), "{body}");
    }

    // Processed, not yet deleted: exactly what the current GET answered then, without URLs.
    // The same instant in another offset (a `+` the client encoded) is the same question.
    let in_paris = processed_at.to_offset(time::macros::offset!(+1));
    for at in [
        rfc3339(processed_at),
        rfc3339(in_paris),
        rfc3339(deleted_at - micro),
    ] {
        let (status, body) = as_of(&pipeline, &key, &id, &at).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            OffsetDateTime::parse(body["as_of"].as_str().unwrap(), &Rfc3339).unwrap(),
            OffsetDateTime::parse(&at, &Rfc3339).unwrap()
        );
        for variant in body["variants"].as_array().unwrap() {
            assert!(variant.get("url").is_none(), "{variant}");
        }
        assert_eq!(
            without_urls(body),
            without_urls(ready.clone()),
            "as of {at}"
        );
    }

    // Deleted; the variants stay until their objects are gone, as the read model had them.
    let (status, body) = as_of(&pipeline, &key, &id, &rfc3339(deleted_at)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "deleted", "{body}");
    assert_eq!(
        body["variants"],
        without_urls(ready.clone())["variants"],
        "{body}"
    );
    let now = rfc3339(OffsetDateTime::now_utc());
    let (status, body) = as_of(&pipeline, &key, &id, &now).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(without_urls(body), without_urls(deleted.clone()));

    // Errors: a time that is not one, an unencoded `+` read as a space is still fine, another
    // client's image, an unknown image.
    for bad in ["yesterday", "2026-11-22", "2026-11-22T19:30:00"] {
        let (status, body) = as_of(&pipeline, &key, &id, bad).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("invalid-query")),
            "{bad}: {body}"
        );
    }
    let (status, body) = pipeline
        .get(&format!("/v1/images/{id}?as_of={}", rfc3339(in_paris)))
        .await
        .unwrap();
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("ready")),
        "{body}"
    );
    let other = pipeline.other_api_key.clone();
    let (status, body) = as_of(&pipeline, &other, &id, &now).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("image-not-found")),
        "{body}"
    );
    let unknown = uuid::Uuid::now_v7().to_string();
    let (status, body) = as_of(&pipeline, &key, &unknown, &now).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("image-not-found")),
        "{body}"
    );

    // A timeline row projected before payloads were kept: times before it still answer, times
    // after it say so rather than guess.
    let pool = pipeline.database.pool().unwrap();
    sqlx::query(
        "UPDATE image_events SET payload = NULL
         WHERE image_id = $1 AND event_type = 'ImageProcessed'",
    )
    .bind(uuid::Uuid::parse_str(&id).unwrap())
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let (status, body) = as_of(&pipeline, &key, &id, &rfc3339(upload_at)).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("uploaded")),
        "{body}"
    );
    let (status, body) = as_of(&pipeline, &key, &id, &now).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("as-of-unavailable")),
        "{body}"
    );
    // The current state does not depend on stored payloads.
    let (status, body) = pipeline.image(&id).await.unwrap();
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("deleted")),
        "{body}"
    );

    pipeline.stop().await.unwrap();
}
