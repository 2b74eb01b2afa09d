//! The standard variant job over a folder of images, timed: what `scripts/bench-variants`
//! runs as imgpipe's column. Each image is read from disk and rendered with the processor's
//! spec (its defaults, or `IMGPIPE_PROCESSOR_VARIANTS` and the WebP settings from the
//! environment; EXIF-oriented, no metadata), exactly as the processor does, on the calling
//! thread. Prints one JSON object: images, seconds, output bytes.
//!
//! `cargo run --release -p imgpipe-processor --example variant_bench -- FOLDER [ROUNDS] [OUT]`
//!
//! With OUT, the last round's variants are written there after the timing, as
//! `<file name>.<edge>.webp`, for `variant_quality` to score.

use std::path::PathBuf;
use std::time::Instant;

use imgpipe_infra::FromEnv;
use imgpipe_processor::config::ProcessorSettings;
use imgpipe_processor::render::render;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let folder = PathBuf::from(args.next().ok_or("usage: variant_bench FOLDER [ROUNDS]")?);
    let rounds: usize = args.next().map(|r| r.parse()).transpose()?.unwrap_or(1);
    let out = args.next().map(PathBuf::from);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    // The processor's own spec and limits, from the same IMGPIPE_PROCESSOR_* variables (its
    // defaults when unset), so a sweep of encoder settings is a change of environment.
    let settings = ProcessorSettings::from_env()?;
    let (spec, limits) = (settings.spec()?, settings.limits());

    let started = Instant::now();
    let (mut images, mut output_bytes) = (0usize, 0usize);
    let mut last_round = Vec::new();
    for round in 0..rounds {
        for path in &files {
            let bytes = std::fs::read(path)?;
            let rendered = render(bytes.into(), &spec, limits)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            output_bytes += rendered
                .variants
                .iter()
                .map(|v| v.webp.len())
                .sum::<usize>();
            images += 1;
            if out.is_some() && round + 1 == rounds {
                last_round.push((path.clone(), rendered.variants));
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    if let Some(out) = out {
        for (path, variants) in last_round {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or("file name")?;
            for variant in variants {
                let edge = spec
                    .sizes
                    .iter()
                    .find(|s| s.name == variant.name)
                    .map_or(0, |s| s.max_edge);
                std::fs::write(out.join(format!("{name}.{edge}.webp")), &variant.webp)?;
            }
        }
    }
    println!(
        "{{\"images\": {images}, \"seconds\": {seconds:.4}, \"output_bytes\": {}}}",
        output_bytes / rounds.max(1)
    );
    Ok(())
}
