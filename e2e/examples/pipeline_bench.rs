//! The end-to-end benchmark's driver: what `scripts/bench-pipeline` runs against the local
//! stack (release build, rate limits off). Prints a Markdown table on stdout.
//!
//! Three runs, each `--uploads` images, after a reference run of the processing core:
//! 1. `core`: the processor's own `render()` over the same images on this thread, the
//!    standard job with the running processor's spec (`IMGPIPE_PROCESSOR_*`): CPU seconds per
//!    image without the pipeline around it (the median of 5 timed renders after a warm-up).
//! 2. `max, mix`: every image of the folder, cycled, uploaded as fast as `--concurrency`
//!    clients can; upload->ready latency and the processor's throughput. The processor's CPU
//!    time (from /proc) per image against the core's is the pipeline's overhead.
//! 3. `max, 4 MP`: the same with the folder's JPEGs of 3.5-4.5 MP only.
//! 4. `half, 4 MP`: those JPEGs at a fixed rate, half of the processing rate run 3 measured:
//!    the latency an app sees when the pipeline is not saturated.
//!
//! "Ready" is when the read model first shows the image `ready` (polled every 50 ms in one
//! query), so latency includes ingest, the broker, the processor and the projector.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use imgpipe_infra::FromEnv;
use imgpipe_processor::config::ProcessorSettings;
use imgpipe_processor::render::render;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::Semaphore;
use uuid::Uuid;

/// Timed renders per image for the core reference; the median counts.
const CORE_ROUNDS: usize = 5;

struct Args {
    folder: PathBuf,
    uploads: usize,
    concurrency: usize,
    ingest: String,
    key: String,
    database_url: String,
    schema: String,
    processor_pid: u32,
    services: Vec<(String, u32)>,
    clock_ticks: f64,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut values: HashMap<String, String> = HashMap::new();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let name = flag
            .strip_prefix("--")
            .with_context(|| format!("unexpected argument {flag}"))?;
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        values.insert(name.to_string(), value);
    }
    let take = |name: &str| {
        values
            .get(name)
            .cloned()
            .with_context(|| format!("--{name} is required"))
    };
    let services = take("pids")?
        .split(',')
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let (name, pid) = entry.split_once('=').context("--pids is name=pid,...")?;
            Ok((name.to_string(), pid.parse()?))
        })
        .collect::<anyhow::Result<Vec<(String, u32)>>>()?;
    let processor_pid = services
        .iter()
        .find(|(name, _)| name == "processor")
        .map(|(_, pid)| *pid)
        .context("--pids must name the processor")?;
    Ok(Args {
        folder: PathBuf::from(take("folder")?),
        uploads: take("uploads")?.parse()?,
        concurrency: take("concurrency")?.parse()?,
        ingest: take("ingest")?,
        key: take("key")?,
        database_url: take("database-url")?,
        schema: take("schema")?,
        processor_pid,
        services,
        clock_ticks: take("clock-ticks")?.parse()?,
    })
}

struct Image {
    name: String,
    bytes: Arc<Vec<u8>>,
    megapixels: f64,
    is_jpeg: bool,
    core_seconds: f64,
}

struct RunResult {
    label: String,
    uploads: usize,
    upload_rate: f64,
    processing_rate: f64,
    latencies: Vec<f64>,
    failed: usize,
    processor_cpu: f64,
    core_cpu: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let settings = ProcessorSettings::from_env()?;
    let spec = settings.spec()?;
    let limits = settings.limits();

    let mut images = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&args.folder)
        .with_context(|| format!("reading {}", args.folder.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.is_file())
        .collect();
    paths.sort();
    eprintln!("bench: core reference over {} images", paths.len());
    for path in paths {
        let bytes = std::fs::read(&path)?;
        let (width, height) = image::ImageReader::new(std::io::Cursor::new(&bytes))
            .with_guessed_format()?
            .into_dimensions()?;
        // One warm-up render, then the median of the timed ones: a single timing of the same
        // render varies by a quarter between runs on a shared VM.
        render(bytes.clone().into(), &spec, limits)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let mut timings = Vec::with_capacity(CORE_ROUNDS);
        for _ in 0..CORE_ROUNDS {
            let input = bytes.clone().into();
            let started = Instant::now();
            render(input, &spec, limits).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            timings.push(started.elapsed().as_secs_f64());
        }
        timings.sort_by(f64::total_cmp);
        images.push(Image {
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            megapixels: f64::from(width) * f64::from(height) / 1e6,
            is_jpeg: bytes.starts_with(&[0xFF, 0xD8, 0xFF]),
            bytes: Arc::new(bytes),
            core_seconds: timings[CORE_ROUNDS / 2],
        });
    }
    let four_mp: Vec<&Image> = images
        .iter()
        .filter(|i| i.is_jpeg && (3.5..=4.5).contains(&i.megapixels))
        .collect();
    if four_mp.is_empty() {
        bail!("no 3.5-4.5 MP JPEG in {}", args.folder.display());
    }
    let all: Vec<&Image> = images.iter().collect();

    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&args.database_url)
        .await?;
    let client = reqwest::Client::new();
    let mut results = Vec::new();

    let mix = run(&args, &client, &pool, "max, mix", &all, None).await?;
    results.push(mix);
    let four_mp_max = run(&args, &client, &pool, "max, 4 MP JPEG", &four_mp, None).await?;
    let half_rate = four_mp_max.processing_rate / 2.0;
    results.push(four_mp_max);
    let label = format!("{half_rate:.2}/s (half), 4 MP JPEG");
    results.push(run(&args, &client, &pool, &label, &four_mp, Some(half_rate)).await?);

    print_report(&args, &images, &results);
    Ok(())
}

async fn run(
    args: &Args,
    client: &reqwest::Client,
    pool: &sqlx::PgPool,
    label: &str,
    images: &[&Image],
    rate: Option<f64>,
) -> anyhow::Result<RunResult> {
    eprintln!("bench: {label}: {} uploads", args.uploads);
    let cpu_before = process_cpu_seconds(args.processor_pid, args.clock_ticks)?;
    let started = Instant::now();
    let core_cpu: f64 = (0..args.uploads)
        .map(|n| images[n % images.len()].core_seconds)
        .sum();
    // Accepted uploads (id -> when it was sent), filled by the uploader while the loop below
    // polls the read model, so an image that is ready before the last upload is seen then.
    let accepted: Arc<std::sync::Mutex<HashMap<Uuid, Instant>>> = Arc::default();
    let mut uploader = tokio::spawn(upload_all(
        client.clone(),
        format!("{}/v1/images", args.ingest),
        args.key.clone(),
        images.iter().map(|image| image.bytes.clone()).collect(),
        args.uploads,
        args.concurrency,
        rate,
        Arc::clone(&accepted),
    ));

    let mut settled: HashMap<Uuid, (Instant, bool)> = HashMap::new();
    let mut last_accepted = None;
    let deadline = Instant::now() + Duration::from_secs(900);
    let query = format!(
        "SELECT image_id, status FROM {}.images WHERE image_id = ANY($1) AND status IN ('ready', 'failed')",
        args.schema
    );
    loop {
        if last_accepted.is_none() && uploader.is_finished() {
            last_accepted = Some((&mut uploader).await??);
            continue;
        }
        let pending: Vec<Uuid> = accepted
            .lock()
            .map_err(|_| anyhow::anyhow!("uploader panicked"))?
            .keys()
            .filter(|id| !settled.contains_key(id))
            .copied()
            .collect();
        if pending.is_empty() && last_accepted.is_some() {
            break;
        }
        if Instant::now() > deadline {
            bail!("{label}: {} images not settled after 15 min", pending.len());
        }
        let rows: Vec<(Uuid, String)> = sqlx::query_as(&query)
            .bind(&pending)
            .fetch_all(pool)
            .await?;
        let now = Instant::now();
        for (id, status) in rows {
            settled.insert(id, (now, status == "ready"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sent_at = std::mem::take(
        &mut *accepted
            .lock()
            .map_err(|_| anyhow::anyhow!("uploader panicked"))?,
    );
    let upload_seconds = (last_accepted.unwrap_or(started) - started).as_secs_f64();
    let last_ready = settled.values().map(|(at, _)| *at).max().unwrap_or(started);
    let cpu_after = process_cpu_seconds(args.processor_pid, args.clock_ticks)?;
    let mut latencies: Vec<f64> = settled
        .iter()
        .filter(|(_, (_, ready))| *ready)
        .map(|(id, (at, _))| (*at - sent_at[id]).as_secs_f64())
        .collect();
    latencies.sort_by(f64::total_cmp);
    Ok(RunResult {
        label: label.to_string(),
        uploads: sent_at.len(),
        upload_rate: sent_at.len() as f64 / upload_seconds.max(1e-9),
        processing_rate: sent_at.len() as f64 / (last_ready - started).as_secs_f64().max(1e-9),
        failed: settled.values().filter(|(_, ready)| !ready).count(),
        latencies,
        processor_cpu: cpu_after - cpu_before,
        core_cpu,
    })
}

/// Uploads `count` images (cycling through `bodies`), at most `concurrency` at once and, with
/// a `rate`, no faster than that; records each accepted id with when it was sent. Returns when
/// the last upload was accepted.
#[allow(clippy::too_many_arguments)]
async fn upload_all(
    client: reqwest::Client,
    url: String,
    key: String,
    bodies: Vec<Arc<Vec<u8>>>,
    count: usize,
    concurrency: usize,
    rate: Option<f64>,
    accepted: Arc<std::sync::Mutex<HashMap<Uuid, Instant>>>,
) -> anyhow::Result<Instant> {
    let permits = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let mut uploads = tokio::task::JoinSet::new();
    for n in 0..count {
        if let Some(rate) = rate {
            let due = started + Duration::from_secs_f64(n as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let permit = permits.clone().acquire_owned().await?;
        let (client, url, key, body, accepted) = (
            client.clone(),
            url.clone(),
            key.clone(),
            bodies[n % bodies.len()].clone(),
            Arc::clone(&accepted),
        );
        uploads.spawn(async move {
            let sent = Instant::now();
            let response = client
                .post(url)
                .bearer_auth(key)
                .body(body.as_ref().clone())
                .send()
                .await?;
            let status = response.status();
            let answer: serde_json::Value = response.json().await?;
            drop(permit);
            if status != reqwest::StatusCode::ACCEPTED {
                bail!("upload answered {status}: {answer}");
            }
            let id: Uuid = answer["id"].as_str().context("no id")?.parse()?;
            accepted
                .lock()
                .map_err(|_| anyhow::anyhow!("a poisoned lock"))?
                .insert(id, sent);
            anyhow::Ok(Instant::now())
        });
    }
    let mut last_accepted = started;
    while let Some(upload) = uploads.join_next().await {
        last_accepted = last_accepted.max(upload??);
    }
    Ok(last_accepted)
}

/// User plus system CPU seconds of a process so far (/proc/PID/stat fields 14 and 15).
fn process_cpu_seconds(pid: u32, clock_ticks: f64) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("process {pid} is not running"))?;
    // The command name (field 2) may contain spaces; the fields after it are plain numbers.
    let after_name = stat.rsplit_once(')').context("unexpected /proc stat")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let user: f64 = fields.get(11).context("no utime")?.parse()?;
    let system: f64 = fields.get(12).context("no stime")?.parse()?;
    Ok((user + system) / clock_ticks)
}

/// Peak resident set size in MiB (/proc/PID/status VmHWM).
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn print_report(args: &Args, images: &[Image], results: &[RunResult]) {
    println!("Core reference (processor `render()`, one thread, the running spec):\n");
    println!("| image | MP | core s (median of {CORE_ROUNDS}) |");
    println!("| --- | ---: | ---: |");
    for image in images {
        println!(
            "| {} | {:.1} | {:.3} |",
            image.name, image.megapixels, image.core_seconds
        );
    }
    println!(
        "\nPipeline ({} uploads per run, {} concurrent clients at most; ready = read model shows it):\n",
        args.uploads, args.concurrency
    );
    println!("| run | uploads/s | processed/s | p50 s | p95 s | p99 s | failed | processor CPU s/image | core s/image | overhead |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in results {
        let per_image = r.processor_cpu / r.uploads as f64;
        let core = r.core_cpu / r.uploads as f64;
        println!(
            "| {} | {:.1} | {:.2} | {:.3} | {:.3} | {:.3} | {} | {:.3} | {:.3} | {:+.1}% |",
            r.label,
            r.upload_rate,
            r.processing_rate,
            percentile(&r.latencies, 50.0),
            percentile(&r.latencies, 95.0),
            percentile(&r.latencies, 99.0),
            r.failed,
            per_image,
            core,
            (per_image / core - 1.0) * 100.0
        );
    }
    println!("\nPeak RSS per service (VmHWM over the whole benchmark):\n");
    println!("| service | peak RSS MiB |");
    println!("| --- | ---: |");
    for (name, pid) in &args.services {
        match peak_rss_mib(*pid) {
            Some(mib) => println!("| {name} | {mib:.0} |"),
            None => println!("| {name} | (not running) |"),
        }
    }
}
