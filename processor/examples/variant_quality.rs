//! The quality column of `scripts/bench-variants`: SSIMULACRA2 of each tool's variants against
//! one reference per original and size, the same for every tool: the original decoded upright
//! in sRGB (imgpipe's decoder, so every tool is judged against the same pixels) and downscaled
//! with Lanczos3 in 32-bit float to the variant's own dimensions.
//!
//! `cargo run --release -p imgpipe-processor --example variant_quality -- ORIGINALS OUTPUTS`
//!
//! OUTPUTS holds `<original file name>.<edge>.webp` for each original in ORIGINALS. Prints one
//! JSON object: the images scored, the mean of their scores and the worst image (an image's
//! score is the mean over its variants). SSIMULACRA2: 90 and up is visually lossless, 70 high
//! quality, 50 medium.
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use image::Rgb32FImage;
use imgpipe_processor::render::{decode_upright_srgb, Limits};
use ssimulacra2::{compute_frame_ssimulacra2, ColorPrimaries, Rgb, TransferCharacteristic};

type BoxError = Box<dyn std::error::Error>;

fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: variant_quality ORIGINALS OUTPUTS";
    let originals = PathBuf::from(args.next().ok_or(usage)?);
    let outputs = PathBuf::from(args.next().ok_or(usage)?);
    let limits = Limits {
        max_pixels: 50_000_000,
        max_side: 20_000,
        max_alloc: 2 * 1024 * 1024 * 1024,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&originals)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    let mut scores = Vec::new();
    for original in &files {
        let name = original
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or("file name")?;
        let variants = variants_of(&outputs, name)?;
        if variants.is_empty() {
            return Err(format!("no variants of {name} in {}", outputs.display()).into());
        }
        let bytes = std::fs::read(original)?;
        let upright = decode_upright_srgb(&bytes, limits).map_err(|e| format!("{name}: {e}"))?;
        let upright = upright.to_rgb32f();
        let mut references: HashMap<(u32, u32), Rgb32FImage> = HashMap::new();
        let mut total = 0.0;
        for variant in &variants {
            let distorted = image::open(variant)?.to_rgb32f();
            let size = distorted.dimensions();
            let reference = references.entry(size).or_insert_with(|| {
                image::imageops::resize(&upright, size.0, size.1, FilterType::Lanczos3)
            });
            let score = compute_frame_ssimulacra2(frame(reference)?, frame(&distorted)?)?;
            total += score;
        }
        scores.push((name.to_string(), total / variants.len() as f64));
    }
    let mean = scores.iter().map(|(_, s)| s).sum::<f64>() / scores.len().max(1) as f64;
    let (worst_image, worst) = scores
        .iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .cloned()
        .unwrap_or_default();
    println!(
        "{{\"images\": {}, \"mean\": {mean:.3}, \"worst\": {worst:.3}, \"worst_image\": {worst_image:?}}}",
        scores.len()
    );
    Ok(())
}

/// `<name>.<edge>.webp` files in `outputs`.
fn variants_of(outputs: &Path, name: &str) -> Result<Vec<PathBuf>, BoxError> {
    let prefix = format!("{name}.");
    let mut found: Vec<PathBuf> = std::fs::read_dir(outputs)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix(&prefix))
                .and_then(|rest| rest.strip_suffix(".webp"))
                .is_some_and(|edge| edge.parse::<u32>().is_ok())
        })
        .collect();
    found.sort();
    Ok(found)
}

fn frame(image: &Rgb32FImage) -> Result<Rgb, BoxError> {
    let pixels: Vec<[f32; 3]> = image.pixels().map(|p| p.0).collect();
    Ok(Rgb::new(
        pixels,
        image.width() as usize,
        image.height() as usize,
        TransferCharacteristic::SRGB,
        ColorPrimaries::BT709,
    )?)
}
