//! Records on the events topic are checked against their own image: a forged record naming
//! another image's objects touches none of them and is dead-lettered with the reason.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use imgpipe_e2e::dead_letters::{header, DeadLetters};
use imgpipe_e2e::Pipeline;
use imgpipe_infra::consume::dead_letter_headers as dlq;
use imgpipe_infra::kafka::EventProducer;
use imgpipe_infra::registry::EventCodec;
use imgpipe_schemas::{Event, ImageDeleted, Payload, ReprocessRequested};
use rdkafka::Message;
use uuid::Uuid;

/// The processor's dead letters of the given images, by image: (error class, message).
async fn processor_dead_letters(
    pipeline: &Pipeline,
    images: &[Uuid],
    timeout: Duration,
) -> BTreeMap<Uuid, (String, String)> {
    let mut letters = DeadLetters::open(pipeline).await;
    let processor_group = pipeline.kafka.group_id("imgpipe-processor");
    let mut found = BTreeMap::new();
    let deadline = Instant::now() + timeout;
    while found.len() < images.len() {
        let Some(message) = letters.next_before(deadline).await else {
            break;
        };
        let Some(image) = message
            .key()
            .and_then(|key| std::str::from_utf8(key).ok())
            .and_then(|key| key.parse::<Uuid>().ok())
        else {
            continue;
        };
        if images.contains(&image)
            && header(&message, dlq::CONSUMER_GROUP).as_deref() == Some(&processor_group)
        {
            found.insert(
                image,
                (
                    header(&message, dlq::ERROR_CLASS).unwrap_or_default(),
                    header(&message, dlq::ERROR_MESSAGE).unwrap_or_default(),
                ),
            );
        }
    }
    found
}

fn forged(image_id: Uuid, payload: impl Into<Payload>) -> Event {
    Event::new(
        image_id,
        "req-forged",
        None,
        imgpipe_schemas::Producer {
            service: "attacker".into(),
            version: "0".into(),
        },
        payload,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_records_naming_another_images_objects_touch_none_of_them() {
    let pipeline = Pipeline::start().await.expect("pipeline starts");
    let photo = imgpipe_e2e::fixtures::kite();
    let (_, accepted) = pipeline.upload(photo).await.unwrap();
    let victim = accepted["id"].as_str().unwrap().to_string();
    let image = pipeline
        .wait_until_settled(&victim, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(image["status"], "ready", "{image}");
    let victim_original = pipeline.store.original_key(victim.parse().unwrap());
    let victim_variants: Vec<String> = image["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["key"].as_str().unwrap().to_string())
        .collect();
    assert!(!victim_variants.is_empty());

    // Records of other images that name the victim's objects as their own.
    let forged_delete = forged(
        Uuid::now_v7(),
        ImageDeleted {
            requested_by: "attacker".into(),
            original_key: victim_original.clone(),
            variant_keys: victim_variants.clone(),
        },
    );
    let forged_reprocess = forged(
        Uuid::now_v7(),
        ReprocessRequested {
            requested_by: "attacker".into(),
            reason: "steal the pixels".into(),
            original_key: victim_original.clone(),
            format: "jpeg".into(),
        },
    );
    let producer =
        EventProducer::new(&pipeline.kafka, "forger", EventCodec::single_object()).unwrap();
    for event in [&forged_delete, &forged_reprocess] {
        producer.publish(event).await.unwrap();
    }

    let dead = processor_dead_letters(
        &pipeline,
        &[forged_delete.image_id, forged_reprocess.image_id],
        Duration::from_secs(60),
    )
    .await;
    for key in victim_variants.iter().chain([&victim_original]) {
        assert!(
            pipeline.store.exists(key).await.unwrap(),
            "the forged deletion removed the victim's {key}"
        );
    }
    for forged in [&forged_delete, &forged_reprocess] {
        let (class, message) = dead
            .get(&forged.image_id)
            .unwrap_or_else(|| panic!("{} not dead-lettered: {dead:?}", forged.event_type()));
        assert_eq!(
            class,
            imgpipe_schemas::headers::ErrorClass::ForeignObject.as_str(),
            "{message}"
        );
        assert!(message.contains(&victim_original), "{message}");
    }
    // The forged reprocess made no variants of the victim's pixels under its own image.
    let forged_variants = pipeline
        .store
        .list(&pipeline.store.variants_prefix(forged_reprocess.image_id))
        .await
        .unwrap();
    assert!(forged_variants.is_empty(), "{forged_variants:?}");
    let (status, _) = pipeline.image(&victim).await.unwrap();
    assert_eq!(status, 200);
    pipeline.stop().await.unwrap();
}
