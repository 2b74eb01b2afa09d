//! Slow clients against a running ingest: what `scripts/hostile-ingest` runs. Keeps
//! `--connections` slowloris connections (half a request head, a byte a second, reconnecting
//! when cut off) and `--trickles` uploads that send a byte every 500 ms, and meanwhile times
//! `--uploads` normal uploads of `--image`. Prints the answers and ingest's memory (VmRSS, and
//! VmHWM, its peak since it started) from /proc/<--pid>/status.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

struct Args {
    ingest: String,
    key: String,
    /// The trickling uploads' key: another client's, to see what an honest client sees.
    trickle_key: String,
    pid: u32,
    connections: usize,
    trickles: usize,
    uploads: usize,
    warmup_secs: u64,
    image: std::path::PathBuf,
}

fn args() -> anyhow::Result<Args> {
    let mut args = Args {
        ingest: "http://127.0.0.1:18080".into(),
        key: String::new(),
        trickle_key: String::new(),
        pid: 0,
        connections: 2_000,
        trickles: 60,
        uploads: 20,
        warmup_secs: 15,
        image: imgpipe_e2e::corpus_dir().join("photos/kde-PastelHills-3200.jpg"),
    };
    let mut given = std::env::args().skip(1);
    while let Some(flag) = given.next() {
        let value = given
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--ingest" => args.ingest = value,
            "--key" => args.key = value,
            "--trickle-key" => args.trickle_key = value,
            "--pid" => args.pid = value.parse()?,
            "--connections" => args.connections = value.parse()?,
            "--trickles" => args.trickles = value.parse()?,
            "--uploads" => args.uploads = value.parse()?,
            "--warmup-secs" => args.warmup_secs = value.parse()?,
            "--image" => args.image = value.into(),
            _ => bail!("unknown flag {flag}"),
        }
    }
    if args.key.is_empty() || args.pid == 0 {
        bail!("--key and --pid are required");
    }
    if args.trickle_key.is_empty() {
        args.trickle_key.clone_from(&args.key);
    }
    Ok(args)
}

/// `VmRSS` and `VmHWM` of the process, in kB.
fn memory_kb(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

#[derive(Default)]
struct Counts {
    slow_connects: AtomicU64,
    slow_cut_off: AtomicU64,
    trickles_started: AtomicU64,
    trickles_answered: AtomicU64,
}

/// Half a head, then a header byte a second until ingest cuts the connection; again.
async fn slowloris(address: String, counts: Arc<Counts>, stop: CancellationToken) {
    while !stop.is_cancelled() {
        let Ok(mut stream) = TcpStream::connect(&address).await else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        counts.slow_connects.fetch_add(1, Ordering::Relaxed);
        let mut sent = stream
            .write_all(b"GET /v1/stats HTTP/1.1\r\nHost: slow\r\nX-Slow: ")
            .await;
        while sent.is_ok() && !stop.is_cancelled() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            sent = stream.write_all(b"a").await;
            let mut byte = [0u8; 1];
            // Whatever ingest answers, or its closing, ends this connection.
            let ready = tokio::time::timeout(Duration::ZERO, stream.read(&mut byte)).await;
            if ready.is_ok() {
                break;
            }
        }
        counts.slow_cut_off.fetch_add(1, Ordering::Relaxed);
    }
}

/// An upload declaring 10 MB that sends a byte every 500 ms until answered; again a second
/// later (a tight loop would only measure the per-IP limit).
async fn trickle(address: String, key: String, counts: Arc<Counts>, stop: CancellationToken) {
    while !stop.is_cancelled() {
        let Ok(stream) = TcpStream::connect(&address).await else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        counts.trickles_started.fetch_add(1, Ordering::Relaxed);
        let (mut reader, mut writer) = stream.into_split();
        let head = format!(
            "POST /v1/images HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {key}\r\n\
             Content-Type: image/jpeg\r\nContent-Length: 10000000\r\n\r\n"
        );
        let sending = tokio::spawn(async move {
            writer.write_all(head.as_bytes()).await?;
            writer.write_all(&[0xFF, 0xD8, 0xFF, 0xE0]).await?;
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                writer.write_all(&[0]).await?;
            }
            #[allow(unreachable_code)]
            Ok::<_, std::io::Error>(())
        });
        let mut answer = [0u8; 512];
        tokio::select! {
            _ = reader.read(&mut answer) => {
                counts.trickles_answered.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            () = stop.cancelled() => {}
        }
        sending.abort();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let address = args.ingest.trim_start_matches("http://").to_string();
    let image = std::fs::read(&args.image).context("reading --image")?;
    let (rss_before, _) = memory_kb(args.pid)?;
    let counts = Arc::new(Counts::default());
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    for _ in 0..args.connections {
        tasks.push(tokio::spawn(slowloris(
            address.clone(),
            Arc::clone(&counts),
            stop.clone(),
        )));
    }
    for _ in 0..args.trickles {
        tasks.push(tokio::spawn(trickle(
            address.clone(),
            args.trickle_key.clone(),
            Arc::clone(&counts),
            stop.clone(),
        )));
    }
    eprintln!(
        "hostile-ingest: {} slowloris connections and {} trickling uploads; {} s before timing uploads",
        args.connections, args.trickles, args.warmup_secs
    );
    tokio::time::sleep(Duration::from_secs(args.warmup_secs)).await;

    let http = reqwest::Client::new();
    let mut latencies = Vec::new();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for _ in 0..args.uploads {
        let started = Instant::now();
        let status = match http
            .post(format!("{}/v1/images", args.ingest))
            .bearer_auth(&args.key)
            .body(image.clone())
            .timeout(Duration::from_secs(60))
            .send()
            .await
        {
            Ok(response) => response.status().as_u16(),
            Err(_) => 0,
        };
        latencies.push(started.elapsed());
        *statuses.entry(status).or_default() += 1;
    }
    let (rss_during, hwm) = memory_kb(args.pid)?;
    stop.cancel();
    for task in tasks {
        task.abort();
    }
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "normal uploads ({} bytes): {statuses:?} (0 = no answer); latency p50 {:.0} ms, max {:.0} ms",
        image.len(),
        ms(latencies[latencies.len() / 2]),
        ms(latencies[latencies.len() - 1]),
    );
    println!(
        "slowloris: {} connections opened, {} cut off by ingest; trickling uploads: {} started, {} answered",
        counts.slow_connects.load(Ordering::Relaxed),
        counts.slow_cut_off.load(Ordering::Relaxed),
        counts.trickles_started.load(Ordering::Relaxed),
        counts.trickles_answered.load(Ordering::Relaxed),
    );
    println!(
        "ingest memory: VmRSS {} MB before, {} MB under attack; VmHWM (peak) {} MB",
        rss_before / 1024,
        rss_during / 1024,
        hwm / 1024
    );
    Ok(())
}
