//! The standard variant job over a folder of images, timed: what `scripts/bench-variants`
//! runs as imgpipe's column. Each image is read from disk and rendered with the default spec
//! (256/1024/2048 px, lossy WebP q80, EXIF-oriented, no metadata), exactly as the processor
//! does, on the calling thread. Prints one JSON object: images, seconds, output bytes.
//!
//! `cargo run --release -p imgpipe-processor --example variant_bench -- FOLDER [ROUNDS]`

use std::path::PathBuf;
use std::time::Instant;

use imgpipe_processor::render::{render, Limits, VariantSize, VariantSpec};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let folder = PathBuf::from(args.next().ok_or("usage: variant_bench FOLDER [ROUNDS]")?);
    let rounds: usize = args.next().map(|r| r.parse()).transpose()?.unwrap_or(1);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    let spec = VariantSpec {
        version: 1,
        sizes: [("large", 2048), ("medium", 1024), ("thumb", 256)]
            .map(|(name, max_edge)| VariantSize {
                name: name.into(),
                max_edge,
            })
            .into(),
        webp_quality: 80.0,
    };
    let limits = Limits {
        max_pixels: 50_000_000,
        max_side: 20_000,
        max_alloc: 512 * 1024 * 1024,
    };

    let started = Instant::now();
    let (mut images, mut output_bytes) = (0usize, 0usize);
    for _ in 0..rounds {
        for path in &files {
            let bytes = std::fs::read(path)?;
            let rendered =
                render(&bytes, &spec, limits).map_err(|e| format!("{}: {e}", path.display()))?;
            output_bytes += rendered
                .variants
                .iter()
                .map(|v| v.webp.len())
                .sum::<usize>();
            images += 1;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{{\"images\": {images}, \"seconds\": {seconds:.4}, \"output_bytes\": {}}}",
        output_bytes / rounds.max(1)
    );
    Ok(())
}
