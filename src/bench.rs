//! `dermaedge bench`: per-stage and end-to-end latency of the whole pipeline on a 1280x960
//! frame, bare model inference, model load time and peak RSS — the figures in the README.
//! scripts/bench.sh runs it next to onnxruntime on the same models and prints the ratios.

use std::io::Cursor;
use std::path::Path;
use std::time::Instant;

use image::imageops::FilterType;
use serde::Serialize;

use crate::model::{self, Precision};
use crate::pipeline::{AnalysisConfig, Analyzer, Timings};
use crate::vision;

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub precision: Precision,
    pub threads: usize,
    pub iterations: usize,
    pub frame: (u32, u32),
    pub load_ms: f64,
    /// Medians of each stage over the iterations.
    pub median: Timings,
    pub p90_total_ms: f64,
    /// Median of the segmenter alone and of one classifier run alone, on prepared inputs.
    pub segmenter_bare_ms: f64,
    pub classifier_bare_ms: f64,
    pub classifier_runs_per_frame: usize,
    /// Where tract spends the bare inference time, per kind of operator (the top five).
    pub segmenter_ops: Vec<model::OpTime>,
    pub classifier_ops: Vec<model::OpTime>,
    pub peak_rss_mb: f64,
    pub status: String,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// A 1280x960 JPEG made from `image` (a dermatoscope frame's size).
pub fn frame_jpeg(image: &Path) -> Result<Vec<u8>, String> {
    let bytes =
        std::fs::read(image).map_err(|e| format!("{}: cannot read ({e})", image.display()))?;
    let img = vision::decode(&bytes, Default::default())
        .map_err(|e| format!("{}: {e}", image.display()))?;
    let big = image::imageops::resize(&img, 1280, 960, FilterType::Triangle);
    let mut out = Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 92)
        .encode_image(&big)
        .map_err(|e| e.to_string())?;
    Ok(out.into_inner())
}

pub fn run(
    models: &Path,
    precision: Precision,
    threads: usize,
    iterations: usize,
    image: &Path,
) -> Result<BenchReport, String> {
    model::set_threads(threads);
    let jpeg = frame_jpeg(image)?;
    let t = Instant::now();
    let analyzer =
        Analyzer::load(models, precision, AnalysisConfig::default()).map_err(|e| e.to_string())?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut runs: Vec<Timings> = Vec::new();
    let mut status = String::new();
    for i in 0..iterations + 2 {
        let (_, a) = analyzer
            .analyze_bytes(&jpeg, "bench.jpg")
            .map_err(|e| e.to_string())?;
        status = format!("{:?}", a.status).to_lowercase();
        if i >= 2 {
            runs.push(a.timings);
        }
    }
    let pick = |f: fn(&Timings) -> f64| median(&mut runs.iter().map(f).collect::<Vec<_>>());
    let median_t = Timings {
        decode_ms: pick(|t| t.decode_ms),
        quality_ms: pick(|t| t.quality_ms),
        segment_ms: pick(|t| t.segment_ms),
        lesion_ms: pick(|t| t.lesion_ms),
        classify_ms: pick(|t| t.classify_ms),
        measure_ms: pick(|t| t.measure_ms),
        total_ms: pick(|t| t.total_ms),
    };
    let p90 = percentile(
        &mut runs.iter().map(|t| t.total_ms).collect::<Vec<_>>(),
        0.9,
    );

    let frame = vision::decode(&jpeg, Default::default()).map_err(|e| e.to_string())?;
    let bare = |m: &model::Model| -> Result<f64, String> {
        let input = vision::prepare(&frame, &m.manifest.preprocessing, None).tensor(false);
        let mut v = Vec::new();
        for i in 0..iterations + 2 {
            let t = Instant::now();
            m.run(input.clone()).map_err(|e| e.to_string())?;
            if i >= 2 {
                v.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        Ok(median(&mut v))
    };
    let ops = |m: &model::Model| -> Result<Vec<model::OpTime>, String> {
        let input = vision::prepare(&frame, &m.manifest.preprocessing, None).tensor(false);
        let mut ops = m
            .profile_ops(&input, iterations)
            .map_err(|e| e.to_string())?;
        ops.truncate(5);
        Ok(ops)
    };
    let tta = analyzer
        .classifier
        .manifest
        .tta
        .as_ref()
        .is_some_and(|t| t.horizontal_flip);
    Ok(BenchReport {
        precision,
        threads,
        iterations,
        frame: frame.dimensions(),
        load_ms,
        median: median_t,
        p90_total_ms: p90,
        segmenter_bare_ms: bare(&analyzer.segmenter)?,
        classifier_bare_ms: bare(&analyzer.classifier)?,
        classifier_runs_per_frame: if tta { 2 } else { 1 },
        segmenter_ops: ops(&analyzer.segmenter)?,
        classifier_ops: ops(&analyzer.classifier)?,
        peak_rss_mb: crate::sys::peak_rss_mb(),
        status,
    })
}
