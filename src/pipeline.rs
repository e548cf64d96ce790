//! One frame to one result: quality gate -> segmentation -> lesion selection -> lesion crop
//! -> classifier pass -> out-of-distribution decision -> classification (flip TTA) ->
//! calibrated probabilities, plus the lesion measurements.
//!
//! A frame that fails the quality gate, or that the classifier's own statistics place outside
//! the dermoscopy it learnt from (`not_dermoscopic`), gets `status: "recapture"` with its
//! reasons and no classification: the device never offers a confident guess on a bad frame. The result type
//! is the device's public contract (docs/result.md, docs/result.schema.json).

use std::path::Path;
use std::time::Instant;

use image::{GrayImage, RgbImage};
use serde::Serialize;

use crate::manifest::{self, Precision, CLASSES};
use crate::model::{Model, ModelError};
use crate::vision::{self, DecodeError, DecodeLimits, FrameQuality, Measurements};

/// 2: the `not_dermoscopic` reason and `quality.ood_distance` / `ood_threshold`.
pub const RESULT_SCHEMA_VERSION: u32 = 2;

/// Long side of the working resolution for quality, mask clean-up and measurements.
pub const WORKING_SIDE: u32 = 512;

/// Measurements made on the working field, expressed in frame pixels.
fn to_frame_scale(mut m: Measurements, scale: f64, field: vision::Rect) -> Measurements {
    let back = |v: u32| (f64::from(v) / scale).round() as u32;
    m.area_px = (m.area_px as f64 / (scale * scale)).round() as u64;
    m.bbox = vision::Rect {
        top: field.top + back(m.bbox.top),
        bottom: (field.top + back(m.bbox.bottom)).min(field.bottom),
        left: field.left + back(m.bbox.left),
        right: (field.left + back(m.bbox.right)).min(field.right),
    };
    m
}

/// The quality gate's limits and the analysis options.
#[derive(Debug, Clone)]
pub struct AnalysisConfig {
    pub limits: DecodeLimits,
    /// Mean field luma below this: too dark.
    pub min_mean_luma: f32,
    /// Mean field luma above this, or more than `max_overexposed_fraction` saturated: overexposed.
    pub max_mean_luma: f32,
    pub max_overexposed_fraction: f32,
    /// Variance of the Laplacian below this: blurred.
    pub min_sharpness: f32,
    /// Lesion smaller than this fraction of the field: no lesion found.
    pub min_lesion_fraction: f32,
    /// More than this fraction of the lesion's outline on the field's edge: cut off.
    pub max_border_contact: f32,
    /// Size of one pixel on the skin, for areas in mm².
    pub pixel_pitch_mm: Option<f64>,
    /// Average the classifier over the frame and its mirror, when the manifest asks for it.
    pub tta: bool,
}

impl Default for AnalysisConfig {
    fn default() -> Self {
        AnalysisConfig {
            limits: DecodeLimits::default(),
            min_mean_luma: 40.0,
            max_mean_luma: 235.0,
            max_overexposed_fraction: 0.25,
            min_sharpness: 4.0,
            min_lesion_fraction: 0.005,
            max_border_contact: 0.25,
            pixel_pitch_mm: None,
            tta: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("{model}: inference failed: {msg}")]
    Inference { model: String, msg: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Recapture,
}

impl Status {
    /// Ok only when nothing asks for a recapture.
    fn of(reasons: &[Reason]) -> Status {
        if reasons.is_empty() {
            Status::Ok
        } else {
            Status::Recapture
        }
    }
}

/// Why a frame must be captured again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    TooDark,
    Overexposed,
    Blurred,
    NoLesion,
    LesionCutOff,
    /// Not a dermoscopic image like those the classifier learnt from (a wall, a photo, the
    /// colour bars of a camera without its sensor): the classifier is not asked.
    NotDermoscopic,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Quality {
    #[serde(flatten)]
    pub frame: FrameQuality,
    /// Lesion area over the usable field area (0 when none was found).
    pub lesion_fraction: f32,
    /// Fraction of the lesion's outline lying on the field's edge (0 = wholly inside).
    pub lesion_border_contact: f32,
    /// The classifier's distance of this frame to its training dermoscopy, and the manifest's
    /// limit; null when an earlier check already refused the frame.
    pub ood_distance: Option<f32>,
    pub ood_threshold: Option<f32>,
}

/// Per-class probabilities in the ISIC order.
#[allow(non_snake_case)]
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Probabilities {
    pub MEL: f32,
    pub NV: f32,
    pub BCC: f32,
    pub AK: f32,
    pub BKL: f32,
    pub DF: f32,
    pub VASC: f32,
    pub SCC: f32,
}

impl Probabilities {
    pub fn from_slice(p: &[f32]) -> Probabilities {
        Probabilities {
            MEL: p[0],
            NV: p[1],
            BCC: p[2],
            AK: p[3],
            BKL: p[4],
            DF: p[5],
            VASC: p[6],
            SCC: p[7],
        }
    }
    pub fn to_array(self) -> [f32; 8] {
        [
            self.MEL, self.NV, self.BCC, self.AK, self.BKL, self.DF, self.VASC, self.SCC,
        ]
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Classification {
    pub probabilities: Probabilities,
    pub top_class: &'static str,
    pub top_probability: f32,
    /// P(MEL) + P(BCC) + P(SCC) + P(AK).
    pub malignancy_score: f32,
    /// P(MEL) at or above the manifest's operating point.
    pub melanoma_flag: bool,
    pub melanoma_threshold: f32,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    pub precision: Precision,
    pub sha256: String,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Timings {
    pub decode_ms: f64,
    pub quality_ms: f64,
    pub segment_ms: f64,
    pub lesion_ms: f64,
    pub classify_ms: f64,
    pub measure_ms: f64,
    pub total_ms: f64,
}

/// The result of analyzing one frame.
#[derive(Debug, Clone, Serialize)]
pub struct Analysis {
    pub schema_version: u32,
    pub image: String,
    pub width: u32,
    pub height: u32,
    pub status: Status,
    pub recapture_reasons: Vec<Reason>,
    pub quality: Quality,
    pub classification: Option<Classification>,
    pub lesion: Option<Measurements>,
    pub models: Vec<ModelInfo>,
    pub timings: Timings,
    /// The lesion mask at frame size (for overlays; not part of the JSON result).
    #[serde(skip)]
    pub mask: GrayImage,
}

/// The loaded models and the options: analyzes frames.
pub struct Analyzer {
    pub segmenter: Model,
    pub classifier: Model,
    pub config: AnalysisConfig,
}

/// No lesion, or one cut off by the field's edge (only the first applies).
fn lesion_reason(c: &AnalysisConfig, lesion_fraction: f32, contact: f32) -> Option<Reason> {
    if lesion_fraction < c.min_lesion_fraction {
        Some(Reason::NoLesion)
    } else if contact > c.max_border_contact {
        Some(Reason::LesionCutOff)
    } else {
        None
    }
}

/// The lesion found at the working size.
struct LesionMask {
    work_mask: GrayImage,
    lesion_fraction: f32,
    contact: f32,
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

impl Analyzer {
    /// Load the segmenter and classifier of `precision` from `dir`.
    pub fn load(
        dir: &Path,
        precision: Precision,
        config: AnalysisConfig,
    ) -> Result<Analyzer, ModelError> {
        let segmenter = Model::load(&manifest::find(dir, "segmentation", precision)?)?;
        let classifier = Model::load(&manifest::find(dir, "classification", precision)?)?;
        Ok(Analyzer {
            segmenter,
            classifier,
            config,
        })
    }

    fn infer(
        &self,
        model: &Model,
        input: tract_onnx::prelude::Tensor,
    ) -> Result<Vec<f32>, AnalyzeError> {
        Ok(self.infer_all(model, input)?.swap_remove(0))
    }

    /// Every output the manifest names (the classifier's logits, then its OOD distance).
    fn infer_all(
        &self,
        model: &Model,
        input: tract_onnx::prelude::Tensor,
    ) -> Result<Vec<Vec<f32>>, AnalyzeError> {
        model.run_all(input).map_err(|e| AnalyzeError::Inference {
            model: model.path.display().to_string(),
            msg: format!("{e:#}"),
        })
    }

    /// Decode and analyze; the decoded frame comes back too (for overlays).
    pub fn analyze_bytes(
        &self,
        bytes: &[u8],
        name: &str,
    ) -> Result<(RgbImage, Analysis), AnalyzeError> {
        let t = Instant::now();
        let frame = vision::decode(bytes, self.config.limits)?;
        let timings = Timings {
            decode_ms: ms(t),
            ..Timings::default()
        };
        let a = self.analyze_frame(&frame, name, timings)?;
        Ok((frame, a))
    }

    /// Analyze a decoded frame (the camera path hands frames over already decoded).
    pub fn analyze_frame(
        &self,
        frame: &RgbImage,
        name: &str,
        mut timings: Timings,
    ) -> Result<Analysis, AnalyzeError> {
        let t_all = Instant::now();
        let c = &self.config;
        let seg = &self.segmenter.manifest;

        // The usable field (inside the dermatoscope's border) at the working resolution.
        let t = Instant::now();
        let prepared_seg = vision::prepare(frame, &seg.preprocessing, None);
        let field = prepared_seg.border_box;
        let prepare_ms = ms(t);
        let t = Instant::now();
        let (work, scale, fq, mut reasons) = self.judge_field(frame, field);
        timings.quality_ms = ms(t);

        // Segment, keep the largest lesion, fill its holes (at the working resolution).
        let t = Instant::now();
        let logits = self.infer(&self.segmenter, prepared_seg.tensor(false))?;
        timings.segment_ms = prepare_ms + ms(t); // preprocessing + inference
        let t = Instant::now();
        let LesionMask {
            work_mask,
            lesion_fraction,
            contact,
        } = self.lesion_mask(&logits, work.dimensions());
        let mask = vision::frame_mask(&work_mask, frame.dimensions(), field);
        timings.lesion_ms = ms(t);
        reasons.extend(lesion_reason(c, lesion_fraction, contact));

        let t = Instant::now();
        let lesion = (lesion_fraction > 0.0)
            .then(|| vision::measure(&work, &work_mask, c.pixel_pitch_mm.map(|p| p / scale)))
            .flatten()
            .map(|m| to_frame_scale(m, scale, field));
        timings.measure_ms = ms(t);

        let (mut classification, mut ood_distance) = (None, None);
        let ood_threshold = self.classifier.manifest.ood.as_ref().map(|o| o.threshold);
        if reasons.is_empty() {
            let t = Instant::now();
            let (cls, distance) = self.classify(frame, &mask, field)?;
            timings.classify_ms = ms(t);
            ood_distance = distance;
            match cls {
                Some(cls) => classification = Some(cls),
                None => reasons.push(Reason::NotDermoscopic),
            }
        }
        timings.total_ms = timings.decode_ms + ms(t_all);
        Ok(Analysis {
            schema_version: RESULT_SCHEMA_VERSION,
            image: name.to_string(),
            width: frame.width(),
            height: frame.height(),
            status: Status::of(&reasons),
            recapture_reasons: reasons,
            quality: Quality {
                frame: fq,
                lesion_fraction,
                lesion_border_contact: contact,
                ood_distance,
                ood_threshold,
            },
            classification,
            lesion,
            models: self.model_infos(),
            timings,
            mask,
        })
    }

    /// The segmenter's logits to the lesion at the working size: thresholded, the largest
    /// component with its holes filled, its share of the field and of the field's edge.
    fn lesion_mask(&self, logits: &[f32], work: (u32, u32)) -> LesionMask {
        let seg = &self.segmenter.manifest;
        let threshold = seg.decision.mask_threshold.unwrap_or(0.5);
        let raw = vision::mask_from_logits(logits, seg.input_hw(), work, threshold);
        let work_mask = vision::largest_component_filled(&raw);
        let area = work_mask.pixels().filter(|p| p[0] > 0).count() as f64;
        let lesion_fraction = (area / (f64::from(work.0) * f64::from(work.1))) as f32;
        let contact =
            vision::border_contact(&work_mask, vision::Rect::whole(work.0, work.1)) as f32;
        LesionMask {
            work_mask,
            lesion_fraction,
            contact,
        }
    }

    /// Which models made a result (name, version, precision, checksum).
    fn model_infos(&self) -> Vec<ModelInfo> {
        [&self.segmenter, &self.classifier]
            .iter()
            .map(|m| ModelInfo {
                name: m.manifest.name.clone(),
                version: m.manifest.version.clone(),
                precision: m.manifest.precision,
                sha256: m.manifest.sha256.clone(),
            })
            .collect()
    }

    /// The usable field of `frame`: inside the dermatoscope's border, as the segmenter's
    /// preprocessing crops it (the analysis takes the same box from `vision::prepare`).
    pub fn field(&self, frame: &RgbImage) -> vision::Rect {
        match self.segmenter.manifest.preprocessing.first() {
            Some(manifest::Step::CropBorder {
                luma_threshold,
                min_bright_fraction,
                min_keep,
            }) => vision::crop_border_box(frame, *luma_threshold, *min_bright_fraction, *min_keep),
            _ => vision::Rect::whole(frame.width(), frame.height()),
        }
    }

    /// The frame part of the quality gate (exposure, focus) without the models: what auto
    /// capture asks of every live frame. The same field, resolution and limits as the analysis,
    /// so a frame auto capture takes is not then refused as blurred (and the reverse). Returns
    /// the field at the working resolution too (auto capture measures motion on it).
    pub fn judge_frame(&self, frame: &RgbImage) -> (RgbImage, FrameQuality, Vec<Reason>) {
        let (work, _, q, reasons) = self.judge_field(frame, self.field(frame));
        (work, q, reasons)
    }

    /// The gate itself, on the usable `field` of `frame` at the working resolution (and the
    /// scale from frame to working pixels): both `judge_frame` and the analysis call it.
    fn judge_field(
        &self,
        frame: &RgbImage,
        field: vision::Rect,
    ) -> (RgbImage, f64, FrameQuality, Vec<Reason>) {
        let (work, scale) = vision::working_field(frame, field, WORKING_SIDE);
        let q = vision::frame_quality(&work);
        let reasons = frame_reasons(&self.config, &q);
        (work, scale, q, reasons)
    }

    /// The classifier's pass on the frame as it is gives the logits and the OOD distance; a
    /// frame over the manifest's threshold gets no classification (`None`) and no flipped
    /// pass. Returns the classification and the distance.
    fn classify(
        &self,
        frame: &RgbImage,
        mask: &GrayImage,
        field: vision::Rect,
    ) -> Result<(Option<Classification>, Option<f32>), AnalyzeError> {
        let m = &self.classifier.manifest;
        let seg_border = self.segmenter.manifest.preprocessing.first();
        let prepared = vision::prepare_with_border(
            frame,
            &m.preprocessing,
            Some(mask),
            seg_border.map(|step| (step, field)),
        );
        let mut outputs = self.infer_all(&self.classifier, prepared.tensor(false))?;
        let distance = outputs.get(1).and_then(|d| d.first().copied());
        if let (Some(ood), Some(d)) = (&m.ood, distance) {
            // NaN counts as out of distribution: no number, no diagnosis.
            if d.is_nan() || d > ood.threshold {
                return Ok((None, Some(d)));
            }
        }
        let mut logits = outputs.swap_remove(0);
        if self.config.tta && m.tta.as_ref().is_some_and(|t| t.horizontal_flip) {
            let flipped = self.infer(&self.classifier, prepared.tensor(true))?;
            for (a, b) in logits.iter_mut().zip(flipped) {
                *a = (*a + b) / 2.0;
            }
        }
        let temperature = m.calibration.as_ref().map_or(1.0, |c| c.temperature);
        let p = softmax(&logits, temperature);
        let (top, top_p) =
            p.iter().enumerate().fold(
                (0, f32::MIN),
                |best, (i, &v)| if v > best.1 { (i, v) } else { best },
            );
        let threshold = m.decision.melanoma_threshold.unwrap_or(0.5);
        let classification = Classification {
            probabilities: Probabilities::from_slice(&p),
            top_class: CLASSES[top],
            top_probability: top_p,
            malignancy_score: p[0] + p[2] + p[7] + p[3],
            melanoma_flag: p[0] >= threshold,
            melanoma_threshold: threshold,
        };
        Ok((Some(classification), distance))
    }
}

/// One line for people: the top class and flags, or why the frame must be taken again.
pub fn summary(a: &Analysis) -> String {
    match (&a.status, &a.classification) {
        (Status::Ok, Some(c)) => format!(
            "{}: {} {:.1}% | malignancy {:.2} | melanoma flag {} | lesion {} px, asymmetry {:.2}/{:.2}, compactness {:.2}, colours {}",
            a.image,
            c.top_class,
            c.top_probability * 100.0,
            c.malignancy_score,
            if c.melanoma_flag { "RAISED" } else { "no" },
            a.lesion.as_ref().map_or(0, |l| l.area_px),
            a.lesion.as_ref().map_or(0.0, |l| l.asymmetry[0]),
            a.lesion.as_ref().map_or(0.0, |l| l.asymmetry[1]),
            a.lesion.as_ref().map_or(0.0, |l| l.compactness),
            a.lesion.as_ref().map_or(0, |l| l.colors.len()),
        ),
        _ => format!(
            "{}: RECAPTURE ({}) - no diagnosis support for this frame",
            a.image,
            a.recapture_reasons
                .iter()
                .map(|r| serde_json::to_string(r).unwrap_or_default().trim_matches('"').to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Too dark, overexposed, blurred: the frame's own part of the quality gate.
pub fn frame_reasons(c: &AnalysisConfig, q: &FrameQuality) -> Vec<Reason> {
    let mut reasons = Vec::new();
    if q.mean_luma < c.min_mean_luma {
        reasons.push(Reason::TooDark);
    }
    if q.mean_luma > c.max_mean_luma || q.overexposed_fraction > c.max_overexposed_fraction {
        reasons.push(Reason::Overexposed);
    }
    if q.sharpness < c.min_sharpness {
        reasons.push(Reason::Blurred);
    }
    reasons
}

pub fn softmax(logits: &[f32], temperature: f32) -> Vec<f32> {
    let z: Vec<f64> = logits
        .iter()
        .map(|&l| f64::from(l) / f64::from(temperature))
        .collect();
    let max = z.iter().cloned().fold(f64::MIN, f64::max);
    let e: Vec<f64> = z.iter().map(|v| (v - max).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| (v / s) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn analyzer() -> Analyzer {
        let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        Analyzer::load(&models, Precision::Float32, AnalysisConfig::default()).unwrap()
    }

    /// One gate: auto capture's verdict on a frame is the analysis's, on sharp, dark, blurred
    /// and overexposed versions of a real dermoscopic frame inside a black dermatoscope border.
    #[test]
    fn auto_capture_and_analysis_judge_a_frame_alike() {
        let a = analyzer();
        let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/samples/ISIC_0001100.jpg");
        let lesion = image::open(sample).unwrap().to_rgb8();
        let mut framed = RgbImage::new(lesion.width() + 120, lesion.height() + 80);
        image::imageops::overlay(&mut framed, &lesion, 60, 40);
        let dark = image::imageops::brighten(&framed, -120);
        let bright = image::imageops::brighten(&framed, 150);
        let blurred = image::imageops::blur(&framed, 6.0);
        let mut seen = Vec::new();
        for (name, frame) in [
            ("framed", &framed),
            ("dark", &dark),
            ("bright", &bright),
            ("blurred", &blurred),
        ] {
            let (_, q, reasons) = a.judge_frame(frame);
            let full = a.analyze_frame(frame, name, Timings::default()).unwrap();
            assert_eq!(q, full.quality.frame, "{name}");
            let frame_part: Vec<Reason> = full
                .recapture_reasons
                .iter()
                .copied()
                .filter(|r| matches!(r, Reason::TooDark | Reason::Overexposed | Reason::Blurred))
                .collect();
            assert_eq!(reasons, frame_part, "{name}");
            seen.extend(reasons);
        }
        // the versions do exercise the checks
        for r in [Reason::TooDark, Reason::Overexposed, Reason::Blurred] {
            assert!(seen.contains(&r), "{r:?} never raised");
        }
    }
}
