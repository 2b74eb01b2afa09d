//! `imgpipe events` against a live pipeline on the real stack, through the functions the
//! command runs (`imgpipe_admin::events`) with the pipeline's configuration.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use imgpipe_admin::events::{self, Start, Tail};
use imgpipe_e2e::Pipeline;
use imgpipe_infra::registry::{EventCodec, RegistryConfig};
use serde_json::Value;
use uuid::Uuid;

fn codec() -> EventCodec {
    EventCodec::reader(&RegistryConfig::default())
}

/// `imgpipe events tail --topic <topic> --from <start> [--image <image>]`.
async fn tail(pipeline: &Pipeline, topic: &str, start: Start, image: Option<&str>) -> Vec<Value> {
    let wanted = Tail {
        topics: vec![events::topic_named(&pipeline.kafka, topic)],
        start,
        image: image.map(|id| id.parse().unwrap()),
        follow: false,
    };
    events::read(pipeline.kafka.clone(), codec(), wanted)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_tail_and_decode_show_what_happened_to_an_image() {
    let pipeline = Pipeline::start().await.expect("pipeline starts");
    let photo = imgpipe_e2e::fixtures::kite();
    let (status, accepted) = pipeline.upload(photo.clone()).await.unwrap();
    assert_eq!(status, 202);
    let id = accepted["id"].as_str().unwrap().to_string();
    let (_, other) = pipeline.upload(photo).await.unwrap();
    let other_id = other["id"].as_str().unwrap().to_string();
    pipeline
        .wait_until_settled(&id, Duration::from_secs(120))
        .await
        .unwrap();
    pipeline
        .wait_until_settled(&other_id, Duration::from_secs(120))
        .await
        .unwrap();

    let image: Uuid = id.parse().unwrap();
    let history = events::history(pipeline.kafka.clone(), codec(), image)
        .await
        .unwrap();
    let types: Vec<&str> = history
        .iter()
        .map(|line| line["value"]["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["ImageUploaded", "ImageProcessed"], "{history:?}");
    let (uploaded, processed) = (&history[0], &history[1]);
    assert_eq!(uploaded["key"], id.as_str());
    assert_eq!(uploaded["headers"]["event-type"], "ImageUploaded");
    assert!(uploaded["headers"]["content-type"]
        .as_str()
        .unwrap()
        .contains("avro"));
    assert_eq!(
        processed["value"]["causation_id"],
        uploaded["value"]["event_id"]
    );
    assert_eq!(
        processed["value"]["correlation_id"],
        uploaded["value"]["correlation_id"]
    );
    assert_eq!(
        processed["value"]["payload"]["variants"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // The whole topic: both images, two events each; --image narrows it to one.
    let all = tail(&pipeline, "events", Start::Beginning, None).await;
    assert_eq!(all.len(), 4, "{all:?}");
    let one = tail(&pipeline, "events", Start::Beginning, Some(&other_id)).await;
    assert_eq!(one.len(), 2);
    assert!(one.iter().all(|line| line["key"] == other_id.as_str()));
    // From the end there is nothing yet to read, and it returns.
    let none = tail(&pipeline, "events", "end".parse().unwrap(), None).await;
    assert!(none.is_empty());
    // From a future time nothing qualifies, whatever the broker's time lookup says.
    let from = "2099-01-01T00:00:00Z".parse().unwrap();
    let future = tail(&pipeline, "events", from, None).await;
    assert!(future.is_empty(), "{future:?}");

    pipeline.stop().await.unwrap();
}
