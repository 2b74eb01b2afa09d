//! The console's operator pages over HTTP on the real stack (issue #17): only a key with
//! `scope=admin` reads them; the overview shows every group's lag per partition, images per
//! status and spec version and the result latency; the dead letters are listed from the
//! dead-letter topic, previewed without moving anything, and redriven, chosen or all.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use imgpipe_e2e::console::Console;
use imgpipe_e2e::dead_letters::write_dead_letter;
use imgpipe_e2e::fixtures::{kite, stored_kite};
use imgpipe_e2e::Pipeline;
use imgpipe_infra::consume::lag::{partition_lag, CommittedOffsets};
use imgpipe_infra::kafka::groups;
use imgpipe_infra::log_reader::LogReader;
use reqwest::header::LOCATION;
use reqwest::redirect::Policy;

/// The redrive group's dead letters not yet redriven.
async fn pending(pipeline: &Pipeline) -> i64 {
    let topic = pipeline.kafka.topics().dead_letter;
    let reader = LogReader::new(&pipeline.kafka, "test", groups::REDRIVE, &topic).unwrap();
    let lag = partition_lag(&reader, &CommittedOffsets(reader.clone()))
        .await
        .unwrap();
    lag.iter().map(|partition| partition.lag).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_an_admin_key_reads_the_operator_pages() {
    let pipeline = Pipeline::start().await.unwrap();
    let client = Console::sign_in(&pipeline, &pipeline.api_key).await;
    for path in ["/console/operator", "/console/operator/dead-letters"] {
        let (status, body) = client.get(&pipeline, path).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert!(body.contains("scope=admin"), "{body}");
    }
    let (status, _) = client
        .post(
            &pipeline,
            "/console/operator/dead-letters",
            &[("action", "redrive-all")],
        )
        .await;
    assert_eq!(status, 403);
    // Nor does the client's navigation offer them.
    let (_, gallery) = client.get(&pipeline, "/console").await;
    assert!(!gallery.contains("/console/operator"), "{gallery}");
    // Signed out: to the sign-in page first.
    let response = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap()
        .get(pipeline.url("/console/operator"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(
        response.headers()[LOCATION],
        "/console/sign-in?next=/console/operator"
    );
    pipeline.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_overview_shows_lag_counts_and_latency() {
    let pipeline = Pipeline::start().await.unwrap();
    pipeline.upload_settled(kite()).await.unwrap();

    let operator = Console::sign_in(&pipeline, &pipeline.admin_api_key).await;
    let (status, page) = operator.get(&pipeline, "/console/operator").await;
    assert_eq!(status, 200, "{page}");
    for group in groups::ON_EVENTS.iter().chain([&groups::REDRIVE]) {
        let named = format!("data-group=\"{}\"", pipeline.kafka.group_id(group));
        assert!(page.contains(&named), "a lag table for {group}: {page}");
    }
    // The events topic's six partitions for each of the three groups on it, and the
    // dead-letter topic's one.
    assert_eq!(page.matches("<tr><td>5</td>").count(), 3, "{page}");
    // The processed upload counts as ready at spec version 1.
    let counts = &page[page.find("id=\"counts\"").unwrap()..];
    let ready_row = "<td><span class=\"status ready\">ready</span></td><td>1</td><td>1</td>";
    assert!(counts.contains(ready_row), "{counts}");
    assert!(
        page.contains("0 images have results of a spec older"),
        "{page}"
    );
    // One result in each window, with a time for each percentile.
    let latency = &page[page.find("id=\"latency\"").unwrap()..];
    assert!(
        latency.contains("<td>last hour</td><td>1</td>"),
        "{latency}"
    );
    assert!(!latency.contains("<td>–</td>"), "{latency}");
    pipeline.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_are_listed_previewed_and_redriven_from_the_page() {
    let pipeline = Pipeline::start().await.unwrap();
    let first = stored_kite(&pipeline).await;
    let second = stored_kite(&pipeline).await;
    write_dead_letter(&pipeline, &first, 1000, "imgpipe-processor").await;
    write_dead_letter(&pipeline, &second, 1001, "imgpipe-processor").await;
    let operator = Console::sign_in(&pipeline, &pipeline.admin_api_key).await;
    let page_path = "/console/operator/dead-letters";

    let (status, page) = operator.get(&pipeline, page_path).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("2 not yet redriven"), "{page}");
    for (offset, event) in [(0, &first), (1, &second)] {
        assert!(page.contains(&format!("value=\"0:{offset}\"")), "{page}");
        assert!(page.contains(&event.image_id.to_string()), "{page}");
    }
    for shown in ["storage", "s3 get: timed out", "<td>5</td>"] {
        assert!(page.contains(shown), "the page shows {shown}: {page}");
    }

    // A preview of the first moves nothing.
    let preview = [("letter", "0:0"), ("action", "preview")];
    let (status, page) = operator.post(&pipeline, page_path, &preview).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("1 dead letters would move"), "{page}");
    assert!(
        page.contains("name=\"letter\" value=\"0:0\""),
        "the confirm form: {page}"
    );
    assert_eq!(pending(&pipeline).await, 2);
    let first_id = first.image_id.to_string();
    assert_eq!(pipeline.image(&first_id).await.unwrap().0, 404);

    // From another site: refused.
    let response = operator
        .http
        .post(pipeline.url(page_path))
        .header("cookie", &operator.cookie)
        .header("origin", "https://elsewhere.example")
        .form(&[("letter", "0:0"), ("action", "redrive")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(pending(&pipeline).await, 2);

    // The second alone: it is processed, but the position cannot move past the first (not
    // chosen), so both stay listed.
    let redrive = [("letter", "0:1"), ("action", "redrive")];
    let (status, page) = operator.post(&pipeline, page_path, &redrive).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("1 dead letters moved"), "{page}");
    assert!(page.contains("sit behind letters not chosen"), "{page}");
    let second_id = second.image_id.to_string();
    let image = pipeline
        .wait_until_settled(&second_id, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(image["status"], "ready", "{image}");
    assert_eq!(pending(&pipeline).await, 2);

    // The first, redriven: it is processed, and the position moves past it.
    let redrive = [("letter", "0:0"), ("action", "redrive")];
    let (status, page) = operator.post(&pipeline, page_path, &redrive).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("1 dead letters moved"), "{page}");
    let image = pipeline
        .wait_until_settled(&first_id, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(image["status"], "ready", "{image}");
    assert_eq!(pending(&pipeline).await, 1);
    let (_, page) = operator.get(&pipeline, page_path).await;
    assert!(page.contains("1 not yet redriven"), "{page}");

    // All that is left: the second's letter moves again, which its handlers take as a
    // repeat (it stays ready, with one set of variants).
    let all = [("action", "redrive-all")];
    let (status, page) = operator.post(&pipeline, page_path, &all).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("1 dead letters moved"), "{page}");
    assert!(page.contains("moved past what was moved"), "{page}");
    assert_eq!(pending(&pipeline).await, 0);
    pipeline
        .wait_until_projected(Duration::from_secs(120))
        .await
        .unwrap();
    let (_, image) = pipeline.image(&second_id).await.unwrap();
    assert_eq!(image["status"], "ready", "{image}");
    assert_eq!(image["variants"].as_array().unwrap().len(), 3, "{image}");

    // Choosing nothing, or something that is no letter, is a plain refusal.
    let (status, _) = operator
        .post(&pipeline, page_path, &[("action", "redrive")])
        .await;
    assert_eq!(status, 400);
    let (status, _) = operator
        .post(
            &pipeline,
            page_path,
            &[("letter", "x"), ("action", "preview")],
        )
        .await;
    assert_eq!(status, 400);
    pipeline.stop().await.unwrap();
}
