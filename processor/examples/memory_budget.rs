//! Peak memory of rendering a hostile set, two renders at a time, with and without the memory
//! budget: 48 MP 16-bit RGBA and 49 MP 16-bit grey+alpha PNGs, PNGs whose ICC profile or zTXt
//! chunk inflates to 256 MiB, and a GIF of 3,000 frames on a 16 MP canvas, all submitted at
//! once, the way the processor's partition tasks would.
//!
//! cargo run -p imgpipe-processor --example memory_budget -- [--no-budget] [BUDGET_BYTES] [NAME]
//!   [--files DIR]
//!
//! `--files DIR` renders the files of DIR instead (real photos: the processor's everyday peak).
//! Prints each render's outcome and the process's peak RSS (VmHWM) over the renders: the
//! images are generated first and the peak is reset (`/proc/self/clear_refs`) before they run.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use imgpipe_processor::config::DEFAULT_MEMORY_BUDGET_BYTES;
use imgpipe_processor::memory::MemoryBudget;
use imgpipe_processor::render::{self, Limits, VariantSize, VariantSpec};
use tokio::sync::Semaphore;

const MIB: usize = 1024 * 1024;
const CPU_JOBS: usize = 2;

/// A PNG written a row at a time (the generator never holds the pixels), with an optional
/// ICC profile and zTXt chunk.
fn png_rows(
    width: u32,
    height: u32,
    color: png::ColorType,
    depth: png::BitDepth,
    icc_profile: Option<Vec<u8>>,
    ztxt: Option<String>,
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut info = png::Info::with_size(width, height);
    info.color_type = color;
    info.bit_depth = depth;
    info.icc_profile = icc_profile.map(Into::into);
    let mut encoder = png::Encoder::with_info(&mut out, info).unwrap();
    encoder.set_compression(png::Compression::Fast);
    if let Some(text) = ztxt {
        encoder
            .add_ztxt_chunk("Raw profile type exif".into(), text)
            .unwrap();
    }
    let mut writer = encoder.write_header().unwrap();
    let row_bytes = width as usize * color.samples() * (depth as usize).div_ceil(8);
    let mut stream = writer.stream_writer().unwrap();
    let row: Vec<u8> = (0..row_bytes).map(|i| (i % 251) as u8).collect();
    for _ in 0..height {
        stream.write_all(&row).unwrap();
    }
    stream.finish().unwrap();
    writer.finish().unwrap();
    out
}

fn animation(width: u16, height: u16, frames: usize) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let palette = [0, 0, 0, 255, 255, 255];
        let mut encoder = gif::Encoder::new(&mut out, width, height, &palette).unwrap();
        encoder.set_repeat(gif::Repeat::Infinite).unwrap();
        for i in 0..frames {
            let mut frame = gif::Frame::from_indexed_pixels(16, 16, vec![(i % 2) as u8; 256], None);
            frame.left = (i % 200) as u16 * 16 % width;
            frame.top = (i / 200) as u16 * 16 % height;
            encoder.write_frame(&frame).unwrap();
        }
    }
    out
}

/// The files of a folder, for `--files DIR`: real photos rather than the hostile set.
fn files_in(dir: &str) -> Vec<(String, Vec<u8>)> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect()
}

fn hostile_set() -> Vec<(String, Vec<u8>)> {
    use png::{BitDepth, ColorType};
    let (rgba, grey_alpha, rgb) = (ColorType::Rgba, ColorType::GrayscaleAlpha, ColorType::Rgb);
    let (sixteen, eight) = (BitDepth::Sixteen, BitDepth::Eight);
    let bomb = 256 * MIB;
    [
        (
            "rgba16-48mp",
            png_rows(8000, 6000, rgba, sixteen, None, None),
        ),
        (
            "grey-alpha16-49mp",
            png_rows(7000, 7000, grey_alpha, sixteen, None, None),
        ),
        (
            "icc-bomb",
            png_rows(2000, 2000, rgb, eight, Some(vec![0; bomb]), None),
        ),
        (
            "ztxt-bomb",
            png_rows(2000, 2000, rgb, eight, None, Some("0".repeat(bomb))),
        ),
        ("animation-3000-frames", animation(4000, 4000, 3000)),
    ]
    .into_iter()
    .map(|(name, bytes)| (name.to_string(), bytes))
    .collect()
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let use_budget = !args.iter().any(|a| a == "--no-budget");
    let budget_bytes = args
        .iter()
        .find_map(|a| a.parse().ok())
        .unwrap_or(DEFAULT_MEMORY_BUDGET_BYTES);
    let spec = Arc::new(VariantSpec {
        version: 1,
        sizes: [("thumb", 256), ("medium", 1024), ("large", 2048)]
            .into_iter()
            .map(|(name, max_edge)| VariantSize::new(name, max_edge))
            .collect(),
    });
    let limits = Limits {
        max_pixels: 50_000_000,
        max_side: 20_000,
        max_alloc: budget_bytes,
    };
    // A name given: only the images whose name contains it.
    let files = args
        .iter()
        .position(|a| a == "--files")
        .map(|at| args.get(at + 1).expect("--files DIR").clone());
    let only = args.iter().enumerate().find_map(|(i, a)| {
        let is_files_dir = i > 0 && args[i - 1] == "--files";
        (!a.starts_with("--") && a.parse::<u64>().is_err() && !is_files_dir).then_some(a)
    });
    let set = match &files {
        Some(dir) => files_in(dir),
        None => hostile_set(),
    };
    let set: Vec<_> = set
        .into_iter()
        .filter(|(name, _)| only.is_none_or(|only| name.contains(only.as_str())))
        .collect();
    for (name, bytes) in &set {
        println!("{name}: {} bytes", bytes.len());
    }
    // Forget the generation's peak: from here VmHWM is the renders'.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    println!(
        "before the renders: VmRSS {} MiB, VmHWM {} MiB",
        status_kib("VmRSS:") / 1024,
        status_kib("VmHWM:") / 1024
    );
    let budget = MemoryBudget::new(budget_bytes);
    let cpu = Arc::new(Semaphore::new(CPU_JOBS));
    let started = Instant::now();
    let count = set.len();
    let jobs: Vec<_> = set
        .into_iter()
        .map(|(name, bytes)| {
            let (spec, budget, cpu) = (Arc::clone(&spec), budget.clone(), Arc::clone(&cpu));
            tokio::spawn(async move {
                let bytes = bytes::Bytes::from(bytes);
                let probe = {
                    let (bytes, spec) = (bytes.clone(), Arc::clone(&spec));
                    tokio::task::spawn_blocking(move || render::probe(&bytes, &spec, limits))
                        .await
                        .unwrap()
                };
                let outcome = match probe {
                    Err(error) => format!("refused before decoding: {error}"),
                    Ok(probe) => {
                        let _memory = match use_budget {
                            true => Some(budget.reserve(probe.peak_bytes).await.unwrap()),
                            false => None,
                        };
                        let _cpu = cpu.acquire().await.unwrap();
                        let rendered = tokio::task::spawn_blocking(move || {
                            render::render(bytes, &spec, limits)
                        })
                        .await
                        .unwrap();
                        match rendered {
                            Ok(rendered) => format!(
                                "rendered {}x{} (estimated peak {} MiB)",
                                rendered.width,
                                rendered.height,
                                probe.peak_bytes / MIB as u64
                            ),
                            Err(error) => format!("failed: {error}"),
                        }
                    }
                };
                println!("{name}: {outcome}");
            })
        })
        .collect();
    for job in jobs {
        job.await.unwrap();
    }
    println!(
        "budget {}: {} renders, {CPU_JOBS} at a time, in {:.1} s; peak RSS (VmHWM) {} MiB",
        if use_budget {
            format!("{} MiB", budget_bytes / MIB as u64)
        } else {
            "off".into()
        },
        count,
        started.elapsed().as_secs_f64(),
        status_kib("VmHWM:") / 1024
    );
}
