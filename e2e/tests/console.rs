//! The console's pages over HTTP on the real stack (issue #17): signing in with a key kept in
//! an HttpOnly cookie, the gallery and an image's page, without JavaScript.
#![allow(clippy::unwrap_used)]

use imgpipe_e2e::console::Console;
use imgpipe_e2e::fixtures::kite;
use imgpipe_e2e::Pipeline;
use reqwest::header::{LOCATION, SET_COOKIE};

#[tokio::test(flavor = "multi_thread")]
async fn a_client_signs_in_and_reads_its_gallery_and_an_images_timeline() {
    let pipeline = Pipeline::start().await.unwrap();
    let http = Console::signed_out().http;
    let (id, _) = pipeline.upload_settled(kite()).await.unwrap();

    // Not signed in: to the sign-in page, and back afterwards.
    let response = http.get(pipeline.url("/console")).send().await.unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(
        response.headers()[LOCATION],
        "/console/sign-in?next=/console"
    );
    let (status, form) = Console::signed_out()
        .get(&pipeline, "/console/sign-in?next=/console")
        .await;
    assert_eq!(status, 200);
    assert!(form.contains("name=\"key\""), "{form}");

    // A wrong key is refused; the right one signs in.
    let wrong = http
        .post(pipeline.url("/console/sign-in"))
        .form(&[("key", "not-a-key")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(!wrong.headers().contains_key(SET_COOKIE));
    let session = Console::sign_in(&pipeline, &pipeline.api_key).await;

    let (status, gallery) = session.get(&pipeline, "/console").await;
    assert_eq!(status, 200);
    assert!(gallery.contains(&id), "the gallery lists the upload");
    // With its variants and their sizes.
    for variant in ["thumb 256×160", "medium 1024×640", "large 2048×1280"] {
        assert!(gallery.contains(variant), "{variant}: {gallery}");
    }
    // Its BlurHash placeholder is drawn on the server: an 8x6 bitmap, no script needed.
    let start = gallery
        .find("/console/placeholder.bmp?hash=")
        .expect("a placeholder");
    let src = &gallery[start..start + gallery[start..].find('"').unwrap()];
    let bitmap = http
        .get(pipeline.url(&src.replace("&amp;", "&")))
        .send()
        .await
        .unwrap();
    assert_eq!(bitmap.status(), 200);
    assert_eq!(bitmap.headers()["content-type"], "image/bmp");
    let bytes = bitmap.bytes().await.unwrap();
    assert_eq!((&bytes[..2], bytes.len()), (&b"BM"[..], 54 + 8 * 6 * 3));
    let bad = http
        .get(pipeline.url("/console/placeholder.bmp?hash=nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let (_, failed_only) = session.get(&pipeline, "/console?status=failed").await;
    assert!(!failed_only.contains(&id), "the filter hides a ready image");
    let (status, _) = session.get(&pipeline, "/console?status=exploded").await;
    assert_eq!(status, 400);

    let (status, image) = session
        .get(&pipeline, &format!("/console/images/{id}"))
        .await;
    assert_eq!(status, 200);
    for expected in [
        "ImageUploaded",
        "ImageProcessed",
        "thumb",
        "medium",
        "large",
        "ready",
    ] {
        assert!(image.contains(expected), "the image page shows {expected}");
    }

    // Another client's image is not found; so is a signed-out session's.
    let other = Console::sign_in(&pipeline, &pipeline.other_api_key).await;
    let (status, _) = other.get(&pipeline, &format!("/console/images/{id}")).await;
    assert_eq!(status, 404);
    let (_, others_gallery) = other.get(&pipeline, "/console").await;
    assert!(!others_gallery.contains(&id));
    pipeline.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_form_sent_from_another_site_is_refused() {
    let pipeline = Pipeline::start().await.unwrap();
    let http = Console::signed_out().http;
    let forged = http
        .post(pipeline.url("/console/sign-in"))
        .header("origin", "https://evil.example")
        .form(&[("key", pipeline.api_key.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert!(!forged.headers().contains_key(SET_COOKIE));
    // Signing out ends the session.
    let session = Console::sign_in(&pipeline, &pipeline.api_key).await;
    let out = http
        .post(pipeline.url("/console/sign-out"))
        .header("cookie", &session.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    assert!(out.headers()[SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    pipeline.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_consoles_scripts_reach_the_api_with_the_session_and_nothing_else() {
    let pipeline = Pipeline::start().await.unwrap();
    let http = Console::signed_out().http;
    let session = Console::sign_in(&pipeline, &pipeline.api_key).await;

    let (status, upload) = session.get(&pipeline, "/console/upload").await;
    assert_eq!(status, 200);
    assert!(upload.contains("id=\"drop\"") && upload.contains("/console/console.js"));
    let script = http
        .get(pipeline.url("/console/console.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(script.status(), 200);
    assert!(script.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));

    // An upload through the bridge is the session's client's, whatever header it brought.
    let accepted = http
        .post(pipeline.url("/console/api/v1/images"))
        .header("cookie", &session.cookie)
        .bearer_auth(&pipeline.other_api_key)
        .header("content-type", "application/octet-stream")
        .body(kite())
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202);
    let accepted: serde_json::Value = accepted.json().await.unwrap();
    let id = accepted["id"].as_str().unwrap();
    let (status, _) = pipeline.image(id).await.unwrap();
    assert_eq!(status, 200, "the first client's image");
    let stream = http
        .get(pipeline.url(&format!("/console/api/v1/images/{id}/stream")))
        .header("cookie", &session.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    drop(stream);

    // Without a session the bridge is the API without a key; a change from another site is
    // refused before anything else.
    let anonymous = http
        .get(pipeline.url("/console/api/v1/images"))
        .bearer_auth(&pipeline.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        anonymous.status(),
        401,
        "a Bearer header alone does not pass the bridge"
    );
    let forged = http
        .post(pipeline.url("/console/api/v1/images"))
        .header("cookie", &session.cookie)
        .header("origin", "https://evil.example")
        .body(kite())
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    let body: serde_json::Value = forged.json().await.unwrap();
    assert_eq!(body["code"], "cross-site-request");
    pipeline.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_images_page_shows_it_as_it_was_at_a_time() {
    let pipeline = Pipeline::start().await.unwrap();
    let (id, _) = pipeline.upload_settled(kite()).await.unwrap();
    let (_, events) = pipeline.timeline(&id).await.unwrap();
    let uploaded_at = events[0]["occurred_at"].as_str().unwrap().to_string();
    let session = Console::sign_in(&pipeline, &pipeline.api_key).await;

    // At the upload's own time: uploaded, no variants, the result marked as later.
    let at = uploaded_at.replace('+', "%2B");
    let (status, then) = session
        .get(&pipeline, &format!("/console/images/{id}?as_of={at}"))
        .await;
    assert_eq!(status, 200, "{then}");
    assert!(then.contains("status uploaded"), "{then}");
    assert!(then.contains("None yet."), "no variants then");
    assert!(
        then.contains("class=\"later\""),
        "the later events are marked"
    );
    // The page's own picker sends a datetime-local value (seconds, no zone): read as UTC.
    let (status, _) = session
        .get(
            &pipeline,
            &format!("/console/images/{id}?as_of=2999-01-01T00:00:00"),
        )
        .await;
    assert_eq!(status, 200);
    // Before the upload there is nothing to show.
    let (status, _) = session
        .get(
            &pipeline,
            &format!("/console/images/{id}?as_of=2000-01-01T00:00"),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = session
        .get(&pipeline, &format!("/console/images/{id}?as_of=yesterday"))
        .await;
    assert_eq!(status, 400);
    pipeline.stop().await.unwrap();
}
