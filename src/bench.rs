//! `dermaedge bench`: per-stage and end-to-end latency of the whole pipeline on a 1280x960
//! frame, bare model inference, model load time and peak RSS — the figures in the README.
//! scripts/bench.sh runs it next to onnxruntime on the same models and prints the ratios.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::Instant;

use image::imageops::FilterType;
use image::RgbImage;
use serde::Serialize;

use crate::manifest::Precision;
use crate::model::{self, Model, ModelError, OpTime};
use crate::pipeline::{AnalysisConfig, AnalyzeError, Analyzer, Timings};
use crate::vision::{self, DecodeError};
use crate::wire;

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
    pub segmenter_ops: Vec<OpTime>,
    pub classifier_ops: Vec<OpTime>,
    pub peak_rss_mb: f64,
    pub status: String,
}

/// Why a benchmark could not run: its input image, the models, or an inference.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{path}: {message}")]
    Image { path: PathBuf, message: String },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Analyze(#[from] AnalyzeError),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("{model}: inference failed: {message}")]
    Inference { model: String, message: String },
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
pub fn frame_jpeg(image: &Path) -> Result<Vec<u8>, BenchError> {
    let failed = |message: String| BenchError::Image {
        path: image.to_path_buf(),
        message,
    };
    let bytes = std::fs::read(image).map_err(|e| failed(format!("cannot read ({e})")))?;
    let img = vision::decode(&bytes, Default::default()).map_err(|e| failed(e.to_string()))?;
    let big = image::imageops::resize(&img, 1280, 960, FilterType::Triangle);
    let mut out = Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 92)
        .encode_image(&big)
        .map_err(|e| failed(format!("cannot encode the test frame ({e})")))?;
    Ok(out.into_inner())
}

pub fn run(
    models: &Path,
    precision: Precision,
    threads: usize,
    iterations: usize,
    image: &Path,
) -> Result<BenchReport, BenchError> {
    model::set_threads(threads);
    let jpeg = frame_jpeg(image)?;
    let t = Instant::now();
    let analyzer = Analyzer::load(models, precision, AnalysisConfig::default())?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let pipeline = time_pipeline(&analyzer, &jpeg, iterations)?;
    let frame = vision::decode(&jpeg, Default::default())?;
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
        median: pipeline.median,
        p90_total_ms: pipeline.p90_total_ms,
        segmenter_bare_ms: bare_ms(&analyzer.segmenter, &frame, iterations)?,
        classifier_bare_ms: bare_ms(&analyzer.classifier, &frame, iterations)?,
        classifier_runs_per_frame: if tta { 2 } else { 1 },
        segmenter_ops: top_ops(&analyzer.segmenter, &frame, iterations)?,
        classifier_ops: top_ops(&analyzer.classifier, &frame, iterations)?,
        peak_rss_mb: crate::sys::peak_rss_mb(),
        status: pipeline.status,
    })
}

struct PipelineTimes {
    median: Timings,
    p90_total_ms: f64,
    /// The last run's verdict (`ok` or `recapture`): a benchmark of a refused frame skips
    /// the classifier and says so.
    status: String,
}

/// The whole analysis, `iterations` times after two warm-up runs: the median per stage.
fn time_pipeline(
    analyzer: &Analyzer,
    jpeg: &[u8],
    iterations: usize,
) -> Result<PipelineTimes, BenchError> {
    let mut runs: Vec<Timings> = Vec::new();
    let mut status = String::new();
    for i in 0..iterations + 2 {
        let (_, a) = analyzer.analyze_bytes(jpeg, "bench.jpg")?;
        status = wire::name(&a.status);
        if i >= 2 {
            runs.push(a.timings);
        }
    }
    let pick = |f: fn(&Timings) -> f64| median(&mut runs.iter().map(f).collect::<Vec<_>>());
    let median = Timings {
        decode_ms: pick(|t| t.decode_ms),
        quality_ms: pick(|t| t.quality_ms),
        segment_ms: pick(|t| t.segment_ms),
        lesion_ms: pick(|t| t.lesion_ms),
        classify_ms: pick(|t| t.classify_ms),
        measure_ms: pick(|t| t.measure_ms),
        total_ms: pick(|t| t.total_ms),
    };
    let p90_total_ms = percentile(
        &mut runs.iter().map(|t| t.total_ms).collect::<Vec<_>>(),
        0.9,
    );
    Ok(PipelineTimes {
        median,
        p90_total_ms,
        status,
    })
}

fn inference_failed(m: &Model, e: impl std::fmt::Display) -> BenchError {
    BenchError::Inference {
        model: m.manifest.name.clone(),
        message: e.to_string(),
    }
}

/// The median of `m` alone on the prepared frame (after two warm-up runs).
fn bare_ms(m: &Model, frame: &RgbImage, iterations: usize) -> Result<f64, BenchError> {
    let input = vision::prepare(frame, &m.manifest.preprocessing, None).tensor(false);
    let mut v = Vec::new();
    for i in 0..iterations + 2 {
        let t = Instant::now();
        m.run(input.clone()).map_err(|e| inference_failed(m, e))?;
        if i >= 2 {
            v.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(median(&mut v))
}

/// Where `m` spends its time, per kind of operator: the top five.
fn top_ops(m: &Model, frame: &RgbImage, iterations: usize) -> Result<Vec<OpTime>, BenchError> {
    let input = vision::prepare(frame, &m.manifest.preprocessing, None).tensor(false);
    let mut ops = m
        .profile_ops(&input, iterations)
        .map_err(|e| inference_failed(m, e))?;
    ops.truncate(5);
    Ok(ops)
}
