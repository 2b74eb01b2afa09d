//! Operations endpoints: ingest's `/metrics` can live on an address of its own, away from the
//! public API.
#![allow(clippy::unwrap_used)]

use imgpipe_e2e::Pipeline;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_can_be_served_on_a_separate_ops_address() {
    let pipeline = Pipeline::start_with(|settings| settings.ops_addr = Some("127.0.0.1:0".into()))
        .await
        .expect("pipeline starts");
    let (status, _) = pipeline.get("/v1/images").await.unwrap();
    assert_eq!(status, 200);

    let public = pipeline
        .http
        .get(pipeline.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), 404);
    let body: Value = public.json().await.unwrap();
    assert_eq!(body["code"], "route-not-found");

    let ops = pipeline.ingest_ops_url.clone().expect("an ops address");
    let metrics = pipeline
        .http
        .get(format!("{ops}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    assert!(text.contains("imgpipe_ingest_requests_total"), "{text}");
    let ready = pipeline
        .http
        .get(format!("{ops}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready, serde_json::json!({"status": "ready"}));
    pipeline.stop().await.unwrap();
}
