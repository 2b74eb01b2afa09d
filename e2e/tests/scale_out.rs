//! Many instances: three processors and two projectors, each a process of its own, share the
//! work as members of their consumer groups. One of each is SIGKILLed mid-run and a fresh
//! processor joins later; every accepted image still ends ready, once, and every processor
//! did some of the work (by its own `/metrics`). The time from the kill to the partitions
//! being held again, and from the scale-up to the newcomer holding some, are printed (they
//! are measurements, not assertions).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use imgpipe_e2e::metrics::{self, series_value};
use imgpipe_e2e::private_stack::{eventually, free_port};
use imgpipe_e2e::service_process::{ServiceOutput, ServiceProcess};
use imgpipe_e2e::{fixtures, Pipeline};
use imgpipe_infra::consume::health::metric_names::ASSIGNED_PARTITIONS;
use imgpipe_processor::metrics::IMAGES_PROCESSED;
use sqlx::PgPool;

/// Uploads before the kill, right after it, and after the scale-up.
const WAVE: usize = 100;
/// A small photo: the test is about sharing work, not about rendering.
const PHOTO: &str = "exif/camera-Canon_40D.jpg";
const PATIENCE: Duration = Duration::from_secs(300);

/// The service processes of this test (see `service_process`); the test starts them itself.
#[test]
#[ignore = "the processor and projector processes of the scale-out test; it starts them itself"]
fn service_child() {
    imgpipe_e2e::service_process::run_service_from_env();
}

/// A worker process with its own ops port.
struct Worker {
    process: ServiceProcess,
    ops: String,
}

impl Worker {
    fn start(pipeline: &Pipeline, service: &'static str, number: usize) -> Self {
        let port = free_port();
        let (mut env, ops_var) = match service {
            "processor" => (pipeline.processor_env(), "IMGPIPE_PROCESSOR_OPS_ADDR"),
            _ => (pipeline.projector_env(), "IMGPIPE_PROJECTOR_OPS_ADDR"),
        };
        env.push((ops_var.to_string(), format!("127.0.0.1:{port}")));
        let log = std::env::temp_dir().join(format!(
            "imgpipe-scale-out-{}-{service}-{number}.log",
            pipeline.namespace
        ));
        eprintln!("{service} {number}: ops on {port}, log {}", log.display());
        Self {
            process: ServiceProcess::start(service, env, ServiceOutput::LogFile(log)),
            ops: format!("http://127.0.0.1:{port}"),
        }
    }

    /// A series' value on its `/metrics`; `None` while it does not answer.
    async fn metric(&self, pipeline: &Pipeline, series: &str) -> Option<f64> {
        let page = metrics::page(&pipeline.http, &self.ops).await?;
        Some(series_value(&page, series).unwrap_or(0.0))
    }

    async fn assigned(&self, pipeline: &Pipeline, group: &str) -> f64 {
        let series = format!("{ASSIGNED_PARTITIONS}{{group=\"{group}\"}}");
        self.metric(pipeline, &series).await.unwrap_or(0.0)
    }

    async fn processed(&self, pipeline: &Pipeline) -> f64 {
        self.metric(pipeline, IMAGES_PROCESSED).await.unwrap_or(0.0)
    }
}

/// Partitions held by these members of `group`, in all.
async fn held(pipeline: &Pipeline, workers: &[&Worker], group: &str) -> f64 {
    let mut sum = 0.0;
    for worker in workers {
        sum += worker.assigned(pipeline, group).await;
    }
    sum
}

async fn upload_wave(pipeline: &Pipeline, photo: &[u8]) {
    for _ in 0..WAVE {
        let (status, body) = pipeline.upload(photo.to_vec()).await.unwrap();
        assert_eq!(status, 202, "{body}");
    }
}

/// Waits until `images` holds this many ready images.
async fn ready_count_reaches(pool: &PgPool, schema: &str, images: usize) {
    eventually(&format!("{images} images ready"), PATIENCE, || async {
        let ready = count(
            pool,
            schema,
            "SELECT count(*) FROM \"{schema}\".images WHERE status = 'ready'",
        )
        .await;
        ready == images as i64
    })
    .await;
}

async fn count(pool: &PgPool, schema: &str, query: &str) -> i64 {
    let sql = query.replace("{schema}", schema);
    sqlx::query_scalar(&sql).fetch_one(pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_processors_and_two_projectors_share_the_work_and_survive_a_kill_and_a_scale_up() {
    let pipeline = Pipeline::start_ingest_only()
        .await
        .expect("pipeline starts");
    let partitions = pipeline.log_ends().await.unwrap().iter().count() as f64;
    let pool = pipeline.database.pool().unwrap();
    let schema = pipeline.database.schema.clone();
    let photo = fixtures::corpus_file(PHOTO);
    let (processor_group, projector_group) = (imgpipe_processor::GROUP, imgpipe_projector::GROUP);

    let mut processors: Vec<Worker> = (1..=3)
        .map(|n| Worker::start(&pipeline, "processor", n))
        .collect();
    let mut projectors: Vec<Worker> = (1..=2)
        .map(|n| Worker::start(&pipeline, "projector", n))
        .collect();
    eventually(
        "every partition held by the processors",
        PATIENCE,
        || async {
            held(
                &pipeline,
                &processors.iter().collect::<Vec<_>>(),
                processor_group,
            )
            .await
                == partitions
        },
    )
    .await;
    eventually(
        "every partition held by the projectors",
        PATIENCE,
        || async {
            held(
                &pipeline,
                &projectors.iter().collect::<Vec<_>>(),
                projector_group,
            )
            .await
                == partitions
        },
    )
    .await;

    // Wave one, until every processor has done some of it.
    upload_wave(&pipeline, &photo).await;
    eventually(
        "each of the three processors processed an image",
        PATIENCE,
        || async {
            let mut all = true;
            for processor in &processors {
                all &= processor.processed(&pipeline).await > 0.0;
            }
            all
        },
    )
    .await;
    let done_by_the_killed = processors[1].processed(&pipeline).await;

    // SIGKILL one processor and one projector (no leave, no commit: the groups notice when
    // their sessions lapse), and upload the second wave at once, so every partition has work
    // waiting while the groups rebalance.
    processors[1].process.kill();
    projectors[1].process.kill();
    let killed_at = Instant::now();
    upload_wave(&pipeline, &photo).await;
    let (survivors, projector_survivor) = ([&processors[0], &processors[2]], [&projectors[0]]);
    eventually(
        "the survivors hold every processor partition",
        PATIENCE,
        || async { held(&pipeline, &survivors, processor_group).await == partitions },
    )
    .await;
    let processors_back = killed_at.elapsed();
    eventually(
        "the surviving projector holds every partition",
        PATIENCE,
        || async { held(&pipeline, &projector_survivor, projector_group).await == partitions },
    )
    .await;
    let projectors_back = killed_at.elapsed();
    ready_count_reaches(&pool, &schema, 2 * WAVE).await;

    // Scale up: a fresh processor joins and takes a share of the third wave.
    processors.push(Worker::start(&pipeline, "processor", 4));
    let joined_at = Instant::now();
    eventually("the new processor holds partitions", PATIENCE, || async {
        processors[3].assigned(&pipeline, processor_group).await > 0.0
    })
    .await;
    let scaled_up = joined_at.elapsed();
    upload_wave(&pipeline, &photo).await;
    let total = (3 * WAVE) as i64;
    ready_count_reaches(&pool, &schema, 3 * WAVE).await;

    eprintln!(
        "scale-out: kill -> processor partitions held again {:.1} s, projector {:.1} s; \
         scale-up -> new processor holds partitions {:.1} s",
        processors_back.as_secs_f64(),
        projectors_back.as_secs_f64(),
        scaled_up.as_secs_f64()
    );
    assert_eq!(
        count(&pool, &schema, "SELECT count(*) FROM \"{schema}\".images").await,
        total,
        "one read-model row per accepted image"
    );
    assert_eq!(
        count(
            &pool,
            &schema,
            "SELECT count(*) FROM (SELECT image_id FROM \"{schema}\".image_events \
             WHERE event_type = 'ImageUploaded' GROUP BY image_id HAVING count(*) > 1) twice",
        )
        .await,
        0,
        "no image's upload is in its timeline twice"
    );
    assert!(done_by_the_killed > 0.0);
    for (number, processor) in [
        (1, &processors[0]),
        (3, &processors[2]),
        (4, &processors[3]),
    ] {
        let processed = processor.processed(&pipeline).await;
        eprintln!("processor {number} processed {processed}");
        assert!(processed > 0.0, "processor {number} processed nothing");
    }
    eprintln!("processor 2 processed {done_by_the_killed} before its kill");
    drop(processors);
    drop(projectors);
    pool.close().await;
    pipeline.stop().await.unwrap();
}
