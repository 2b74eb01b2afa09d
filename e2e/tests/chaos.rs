//! Issue #14: after any sequence of crashes the pipeline resumes by itself.
//!
//! A careful client (Idempotency-Key, retries on 503 and refused connections) uploads while
//! the broker, the S3 server, PostgreSQL, the processor, the projector and ingest are each
//! SIGKILLed and restarted in turn, in a seeded order, for several rounds. After each restart a
//! probe upload measures how long until the pipeline flows again (the probe is `ready`). Then
//! every upload that got a 202 must end `ready` or `failed` within a bounded time, no image
//! exists twice, the orphan sweep finds nothing missing, and no consumer is left stalled.
//!
//! Everything runs privately: its own Tansu, s3s-fs and PostgreSQL (so killing them disturbs
//! no other test), and the three services as processes of their own, which are this test
//! executable again running `service_child`. Scale and seed come from the environment
//! (`IMGPIPE_CHAOS_SEED`, `IMGPIPE_CHAOS_ROUNDS`, `IMGPIPE_CHAOS_UPLOADS`); `scripts/chaos`
//! runs a longer one. The figures are printed as a table.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use imgpipe_e2e::private_stack::{eventually, Component, PrivateStack, API_KEY, COMPONENTS};
use imgpipe_projector::orphans::{self, StoreBackend, SweepOptions};
use serde_json::Value;
use uuid::Uuid;

/// How long lag may go unserved before a consumer rejoins: short, so the test is quick.
const STALL_SECS: u64 = 8;
/// The longest the pipeline may take to flow again after one restart.
const RECOVERY_LIMIT: Duration = Duration::from_secs(180);

/// A service process of this test (see `service_process`); the test starts it itself.
#[test]
#[ignore = "a service process of the chaos test; it starts it itself"]
fn service_child() {
    imgpipe_e2e::service_process::run_service_from_env();
}

/// A small PNG unlike every other (its pixels encode `n`).
fn distinct_png(n: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(48, 32, |x, y| {
        let v = n.wrapping_mul(2_654_435_761).wrapping_add(x * 7 + y * 13);
        image::Rgb([
            (v & 0xff) as u8,
            (v >> 8 & 0xff) as u8,
            (v >> 16 & 0xff) as u8,
        ])
    });
    let mut bytes = std::io::Cursor::new(Vec::new());
    image.write_to(&mut bytes, image::ImageFormat::Png).unwrap();
    bytes.into_inner()
}

/// What the careful client saw.
#[derive(Default)]
struct ClientLog {
    /// Idempotency key -> the image id its 202 named (every 202 of a key must name one id).
    accepted: BTreeMap<String, BTreeSet<String>>,
    unavailable: u64,
    /// Retries by what the attempt met: a status code, or `connection` (refused, reset).
    retries: BTreeMap<String, u64>,
}

/// Uploads `body` until it gets a 202, retrying what a careful client retries (503, 429,
/// connection errors, 5xx) with the same Idempotency-Key.
async fn careful_upload(
    http: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
    log: &Mutex<ClientLog>,
) -> String {
    let key = Uuid::now_v7().to_string();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let sent = http
            .post(format!("{url}/v1/images"))
            .bearer_auth(API_KEY)
            .header("idempotency-key", &key)
            .header("content-type", "application/octet-stream")
            .body(body.clone())
            .send()
            .await;
        let met = match &sent {
            Ok(response) => response.status().as_u16().to_string(),
            Err(_) => "connection".to_string(),
        };
        let retry = match sent {
            Ok(response) if response.status() == 202 => {
                let answer: Value = response.json().await.unwrap();
                let id = answer["id"].as_str().unwrap().to_string();
                log.lock()
                    .unwrap()
                    .accepted
                    .entry(key)
                    .or_default()
                    .insert(id.clone());
                return id;
            }
            Ok(response) if response.status() == 503 => {
                log.lock().unwrap().unavailable += 1;
                true
            }
            Ok(response) if response.status() == 429 || response.status() == 409 => true,
            Ok(response) if response.status().is_server_error() => true,
            Ok(response) => {
                let status = response.status();
                panic!(
                    "upload refused: {status} {}",
                    response.text().await.unwrap_or_default()
                )
            }
            Err(_) => true,
        };
        assert!(
            retry && Instant::now() < deadline,
            "an upload not accepted in 300 s"
        );
        *log.lock().unwrap().retries.entry(met).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The image's status as ingest reports it, if it answers.
async fn status_of(http: &reqwest::Client, url: &str, id: &str) -> Option<String> {
    let response = http
        .get(format!("{url}/v1/images/{id}"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .ok()?;
    if response.status() != 200 {
        return None;
    }
    let body: Value = response.json().await.ok()?;
    body["status"].as_str().map(str::to_string)
}

fn settled(status: Option<&str>) -> bool {
    matches!(status, Some("ready" | "failed"))
}

/// The sum of a metric's series (all partitions' lag, say).
async fn metric_sum(http: &reqwest::Client, ops: &str, name: &str) -> Option<f64> {
    let page = imgpipe_e2e::metrics::page(http, ops).await?;
    let values: Vec<f64> = page
        .lines()
        .filter(|line| line.starts_with(name) && !line.starts_with('#'))
        .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// Neither consumer is stalled, and both report no lag.
async fn consumers_caught_up(http: &reqwest::Client, stack: &PrivateStack) -> bool {
    for ops in [&stack.processor_ops, &stack.projector_ops] {
        let stalled = metric_sum(http, ops, "imgpipe_consumer_stalled").await;
        if stalled != Some(0.0) || metric_sum(http, ops, "imgpipe_consumer_lag").await != Some(0.0)
        {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_any_sequence_of_crashes_the_pipeline_resumes_by_itself() {
    let seed: u64 = std::env::var("IMGPIPE_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let rounds: usize = std::env::var("IMGPIPE_CHAOS_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let uploads: u32 = std::env::var("IMGPIPE_CHAOS_UPLOADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150);
    eprintln!("chaos: seed {seed} (IMGPIPE_CHAOS_SEED={seed} replays it), {rounds} rounds, {uploads} uploads");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut stack = PrivateStack::start(STALL_SECS).await;
    eprintln!("chaos: service logs in {}", stack.log_dir.display());
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let url = stack.ingest_url.clone();
    let log = Arc::new(Mutex::new(ClientLog::default()));
    let broker_restarts = Arc::new(AtomicU64::new(0));
    let supervisor = stack.supervise_broker(Arc::clone(&broker_restarts));

    // Background uploads from four careful clients, paced over the chaos.
    let clients: Vec<_> = (0..4u32)
        .map(|client| {
            let (http, url, log) = (http.clone(), url.clone(), Arc::clone(&log));
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for n in (client..uploads).step_by(4) {
                    ids.push(careful_upload(&http, &url, distinct_png(n), &log).await);
                    tokio::time::sleep(Duration::from_millis(150)).await;
                }
                ids
            })
        })
        .collect();

    // The pipeline flows before the chaos starts.
    let first = careful_upload(&http, &url, distinct_png(1_000_000), &log).await;
    eventually("the first image is ready", RECOVERY_LIMIT, || async {
        settled(status_of(&http, &url, &first).await.as_deref())
    })
    .await;

    let mut recoveries: Vec<(Component, Duration)> = Vec::new();
    let mut failures = Vec::new();
    let mut probe = 2_000_000u32;
    for round in 0..rounds {
        let mut order = COMPONENTS.to_vec();
        rng.shuffle(&mut order);
        eprintln!("chaos: round {round}: {order:?}");
        for component in order {
            stack.kill(component).await;
            tokio::time::sleep(Duration::from_millis(rng.u64(500..3_000))).await;
            stack.restart(component).await;
            let restarted = Instant::now();
            probe += 1;
            let id = careful_upload(&http, &url, distinct_png(probe), &log).await;
            let deadline = restarted + RECOVERY_LIMIT;
            loop {
                if settled(status_of(&http, &url, &id).await.as_deref()) {
                    recoveries.push((component, restarted.elapsed()));
                    break;
                }
                if Instant::now() > deadline {
                    failures.push(format!(
                        "round {round}: no flow {RECOVERY_LIMIT:?} after restarting {component:?}"
                    ));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            if !failures.is_empty() {
                break;
            }
        }
        if !failures.is_empty() {
            break;
        }
    }
    let last_restart = Instant::now();
    let mut background = Vec::new();
    for client in clients {
        background.extend(client.await.unwrap());
    }

    // Every accepted upload ends ready or failed within a bounded time.
    let accepted: BTreeMap<String, BTreeSet<String>> = log.lock().unwrap().accepted.clone();
    let ids: BTreeSet<String> = accepted.values().flatten().cloned().collect();
    let mut unsettled: BTreeSet<String> = ids.clone();
    let settle_limit = Duration::from_secs(240);
    while !unsettled.is_empty() && last_restart.elapsed() < settle_limit {
        let mut still = BTreeSet::new();
        for id in &unsettled {
            if !settled(status_of(&http, &url, id).await.as_deref()) {
                still.insert(id.clone());
            }
        }
        unsettled = still;
        if !unsettled.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let settled_after = last_restart.elapsed();

    // No consumer left stalled, both caught up.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut caught_up = consumers_caught_up(&http, &stack).await;
    while !caught_up && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(2)).await;
        caught_up = consumers_caught_up(&http, &stack).await;
    }

    // No image twice: the read model holds exactly the accepted images.
    let pool = stack.database.pool().unwrap();
    let rows: Vec<(Uuid,)> = sqlx::query_as("SELECT image_id FROM chaos.images")
        .fetch_all(&pool)
        .await
        .unwrap();
    let in_read_model: BTreeSet<String> = rows.iter().map(|(id,)| id.to_string()).collect();
    let keys_with_two_images: Vec<_> = accepted.iter().filter(|(_, ids)| ids.len() > 1).collect();

    // The orphan sweep finds nothing missing.
    let backend = StoreBackend::connect(
        &stack.kafka,
        &stack.s3_config,
        &stack.database,
        &Default::default(),
        "chaos-orphans",
    )
    .await
    .unwrap();
    let options = SweepOptions::new(Duration::ZERO, false, "imgpipe-e2e");
    let summary = orphans::sweep(&backend, &options, &mut |_: &orphans::Finding| {})
        .await
        .unwrap();

    supervisor.abort();
    let client = log.lock().unwrap();
    eprintln!("\nchaos figures (seed {seed}):");
    eprintln!("| figure | value |\n| --- | ---: |");
    eprintln!("| uploads accepted | {} |", ids.len());
    eprintln!("| 503s seen by the client | {} |", client.unavailable);
    eprintln!(
        "| retries by the client | {} ({:?}) |",
        client.retries.values().sum::<u64>(),
        client.retries
    );
    eprintln!(
        "| images not settled {settle_limit:?} after the last restart (lost) | {} |",
        unsettled.len()
    );
    eprintln!(
        "| all settled after the last restart | {:.1} s |",
        settled_after.as_secs_f64()
    );
    eprintln!(
        "| orphans (uploads answered 503, within grace 0) | {} |",
        summary.orphans()
    );
    eprintln!("| missing objects | {} |", summary.missing());
    eprintln!(
        "| private broker restarted after a panic of its own (Tansu 0.6) | {} |",
        broker_restarts.load(Ordering::Relaxed)
    );
    let mut worst = BTreeMap::<Component, Duration>::new();
    for (component, took) in &recoveries {
        let entry = worst.entry(*component).or_default();
        *entry = (*entry).max(*took);
    }
    for (component, took) in &worst {
        eprintln!(
            "| worst time from restart to flowing: {component:?} | {:.1} s |",
            took.as_secs_f64()
        );
    }
    if let Some((component, took)) = recoveries.iter().max_by_key(|(_, took)| *took) {
        eprintln!(
            "| worst case overall | {:.1} s ({component:?}) |",
            took.as_secs_f64()
        );
    }
    drop(client);

    assert!(
        failures.is_empty(),
        "{failures:?} (seed {seed}; logs in {})",
        stack.log_dir.display()
    );
    assert!(
        unsettled.is_empty(),
        "not settled: {unsettled:?} (seed {seed})"
    );
    assert!(
        keys_with_two_images.is_empty(),
        "one key, two images: {keys_with_two_images:?}"
    );
    assert_eq!(
        in_read_model, ids,
        "the read model holds exactly the accepted images"
    );
    assert!(background.len() as u32 == uploads);
    assert_eq!(summary.missing(), 0, "{summary:?}");
    assert!(
        caught_up,
        "a consumer left stalled or with lag (seed {seed})"
    );
    let _ = std::fs::remove_dir_all(&stack.log_dir);
}
