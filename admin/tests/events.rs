//! `imgpipe events` against a live pipeline on the real stack.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use imgpipe_e2e::Pipeline;
use serde_json::Value;

fn imgpipe(pipeline: &Pipeline, args: &[&str], stdin: Option<&str>) -> Vec<Value> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_imgpipe"))
        .args(args)
        .env("IMGPIPE_KAFKA_TOPIC_PREFIX", &pipeline.kafka.topic_prefix)
        .env("IMGPIPE_KAFKA_BROKERS", &pipeline.kafka.brokers)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "imgpipe {args:?} failed");
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_tail_and_decode_show_what_happened_to_an_image() {
    let pipeline = Pipeline::start().await.expect("pipeline starts");
    let photo = std::fs::read(imgpipe_e2e::corpus_dir().join("photos/kde-Kite-2560.jpg")).unwrap();
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

    let history =
        tokio::task::block_in_place(|| imgpipe(&pipeline, &["events", "history", &id], None));
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
    let all = tokio::task::block_in_place(|| imgpipe(&pipeline, &["events", "tail"], None));
    assert_eq!(all.len(), 4, "{all:?}");
    let one = tokio::task::block_in_place(|| {
        imgpipe(&pipeline, &["events", "tail", "--image", &other_id], None)
    });
    assert_eq!(one.len(), 2);
    assert!(one.iter().all(|line| line["key"] == other_id.as_str()));
    // From the end there is nothing yet to read, and it returns.
    let none = tokio::task::block_in_place(|| {
        imgpipe(&pipeline, &["events", "tail", "--from", "end"], None)
    });
    assert!(none.is_empty());
    // From a future time nothing qualifies, whatever the broker's time lookup says.
    let future = tokio::task::block_in_place(|| {
        imgpipe(
            &pipeline,
            &["events", "tail", "--from", "2099-01-01T00:00:00Z"],
            None,
        )
    });
    assert!(future.is_empty(), "{future:?}");

    pipeline.stop().await.unwrap();
}
