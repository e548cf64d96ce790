//! The model manifest: the trainer's contract with the device (`models/manifest.schema.json`,
//! docs/manifest.md). What a model expects (input shape, the preprocessing steps in order),
//! what its outputs mean (classes, calibration, the decision thresholds, the out-of-
//! distribution limit) and which file it is (sha256). The device checks again here the rules
//! it relies on, so a manifest it cannot honour is refused at start-up, by name, before any
//! model is loaded. Readable without tract: loading the graph is `model.rs`'s job.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The ISIC 2019 classes, in the order of every output and CSV.
pub const CLASSES: [&str; 8] = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"];

/// Why a manifest cannot be used: unreadable, breaking a rule, or not there at all.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
    #[error("{path}: cannot read ({source})")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{dir}: no {what} model found (want a manifest <name>-<precision>.json with task {what})"
    )]
    Missing { dir: PathBuf, what: String },
}

pub(crate) fn invalid(path: &Path, msg: impl Into<String>) -> ManifestError {
    ManifestError::Invalid {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// One preprocessing step, exactly as the manifest lists it (see docs/manifest.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    CropBorder {
        luma_threshold: u8,
        min_bright_fraction: f64,
        min_keep: f64,
    },
    LesionCrop {
        margin: f64,
    },
    Resize {
        width: u32,
        height: u32,
        filter: String,
    },
    ShadesOfGray {
        p: f64,
    },
    Normalize {
        mean: [f32; 3],
        std: [f32; 3],
        scale: f32,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Input {
    pub name: String,
    pub shape: Vec<usize>,
    pub layout: String,
    pub color: String,
    pub dtype: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Output {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: String,
    pub activation: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Calibration {
    pub temperature: f32,
    #[serde(default)]
    pub fitted_on: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Tta {
    pub horizontal_flip: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Decision {
    pub melanoma_threshold: Option<f32>,
    pub melanoma_target_specificity: Option<f32>,
    pub mask_threshold: Option<f32>,
}

/// Out-of-distribution refusal (classifiers): the graph's second output is the distance of
/// the input to the training data (see docs/manifest.md); above `threshold` the frame is not
/// a dermoscopic image like those the model learnt from, and gets no classification.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ood {
    pub output: String,
    pub method: String,
    pub threshold: f32,
    /// How the statistics were made (features, components, margins): for people, kept as is.
    #[serde(flatten)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// Which exported variant of a model: the manifest's `precision`, the config's and the CLI's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Float32,
    Int8,
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::wire::name(self))
    }
}

/// The manifest beside each .onnx. Fields the device does not act on (training, metrics) are
/// kept as JSON for `dermaedge models`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub schema_version: u32,
    pub name: String,
    pub version: String,
    pub task: String,
    pub architecture: String,
    pub precision: Precision,
    pub file: String,
    pub sha256: String,
    pub opset: u32,
    pub input: Input,
    pub preprocessing: Vec<Step>,
    pub output: Output,
    #[serde(default)]
    pub classes: Vec<String>,
    #[serde(default)]
    pub calibration: Option<Calibration>,
    #[serde(default)]
    pub tta: Option<Tta>,
    #[serde(default)]
    pub decision: Decision,
    #[serde(default)]
    pub ood: Option<Ood>,
    pub license: String,
    pub training: serde_json::Value,
    pub metrics: serde_json::Value,
    #[serde(default)]
    pub reference: Option<String>,
    pub created: String,
}

impl Manifest {
    pub fn read(path: &Path) -> Result<Manifest, ManifestError> {
        let text = fs::read_to_string(path).map_err(|source| ManifestError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let m: Manifest = serde_json::from_str(&text)
            .map_err(|e| invalid(path, format!("not a valid manifest: {e}")))?;
        m.check(path)?;
        Ok(m)
    }

    /// The rules of the schema the device relies on, checked again here.
    fn check(&self, path: &Path) -> Result<(), ManifestError> {
        if self.schema_version != 1 {
            return Err(invalid(
                path,
                format!(
                    "schema_version {} is not supported (this device reads 1)",
                    self.schema_version
                ),
            ));
        }
        if self.opset < 13 {
            return Err(invalid(path, format!("opset {} is below 13", self.opset)));
        }
        let shape = &self.input.shape;
        if shape.len() != 4 || shape[0] != 1 || shape[1] != 3 {
            return Err(invalid(
                path,
                format!("input shape {shape:?} is not [1, 3, H, W]"),
            ));
        }
        if self.input.layout != "NCHW" || self.input.color != "RGB" {
            return Err(invalid(path, "input must be NCHW RGB"));
        }
        match self.preprocessing.last() {
            Some(Step::Normalize { std, .. }) if std.iter().all(|s| *s > 0.0) => {}
            _ => {
                return Err(invalid(
                    path,
                    "preprocessing must end with normalize (std > 0)",
                ))
            }
        }
        let resize = self.preprocessing.iter().find_map(|s| match s {
            Step::Resize { width, height, .. } => Some((*width as usize, *height as usize)),
            _ => None,
        });
        if resize != Some((shape[3], shape[2])) {
            return Err(invalid(
                path,
                format!(
                    "preprocessing must resize to the input's {}x{}",
                    shape[3], shape[2]
                ),
            ));
        }
        match self.task.as_str() {
            "classification" => {
                if self.classes != CLASSES {
                    return Err(invalid(
                        path,
                        format!("classes must be {CLASSES:?}, found {:?}", self.classes),
                    ));
                }
                if self.output.shape != [1, CLASSES.len()] || self.output.activation != "softmax" {
                    return Err(invalid(
                        path,
                        "classifier output must be [1, 8] softmax logits",
                    ));
                }
                let t = self.calibration.as_ref().map(|c| c.temperature);
                if !matches!(t, Some(t) if t > 0.0 && t.is_finite()) {
                    return Err(invalid(path, "calibration.temperature must be > 0"));
                }
                self.check_ood(path)?;
            }
            "segmentation" => {
                if self.output.shape != [1, 1, shape[2], shape[3]]
                    || self.output.activation != "sigmoid"
                {
                    return Err(invalid(
                        path,
                        "segmenter output must be [1, 1, H, W] sigmoid logits",
                    ));
                }
            }
            other => return Err(invalid(path, format!("unknown task {other:?}"))),
        }
        Ok(())
    }

    /// A classifier must say how to recognise what it was not trained on: the device never
    /// classifies a frame it cannot place (issue 11).
    fn check_ood(&self, path: &Path) -> Result<(), ManifestError> {
        let Some(ood) = &self.ood else {
            return Err(invalid(
                path,
                "no `ood` block: this classifier has no out-of-distribution statistics, and \
                 the device will not classify without them; re-export it with dermaedge-train \
                 0.2 or later",
            ));
        };
        if ood.method != "mahalanobis" {
            return Err(invalid(
                path,
                format!(
                    "ood.method {:?} is not supported (this device reads \"mahalanobis\")",
                    ood.method
                ),
            ));
        }
        if !(ood.threshold > 0.0 && ood.threshold.is_finite()) {
            return Err(invalid(path, "ood.threshold must be a number > 0"));
        }
        if ood.output == self.output.name {
            return Err(invalid(
                path,
                "ood.output must name a second graph output, not the logits",
            ));
        }
        Ok(())
    }

    /// The graph outputs the device reads, in order: the logits, then the OOD distance.
    pub fn output_names(&self) -> Vec<&str> {
        let mut names = vec![self.output.name.as_str()];
        if let Some(ood) = &self.ood {
            names.push(ood.output.as_str());
        }
        names
    }

    pub fn input_hw(&self) -> (usize, usize) {
        (self.input.shape[2], self.input.shape[3])
    }
}

/// A manifest file and what reading it gave.
pub type ManifestEntry = (PathBuf, Result<Manifest, ManifestError>);

/// Every manifest in `dir` (not the reference files), sorted by file name.
pub fn manifests_in(dir: &Path) -> Result<Vec<ManifestEntry>, ManifestError> {
    let entries = fs::read_dir(dir).map_err(|source| ManifestError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.ends_with(".json")
                && !name.ends_with(".reference.json")
                && !name.ends_with(".schema.json")
        })
        .collect();
    paths.sort();
    Ok(paths
        .into_iter()
        .map(|p| {
            let m = Manifest::read(&p);
            (p, m)
        })
        .collect())
}

/// The manifest for `task` at `precision` in `dir` (e.g. segmentation, float32).
pub fn find(dir: &Path, task: &str, precision: Precision) -> Result<PathBuf, ManifestError> {
    let mut broken = None;
    for (path, m) in manifests_in(dir)? {
        match m {
            Ok(m) if m.task == task && m.precision == precision => return Ok(path),
            Ok(_) => {}
            Err(e) => broken = broken.or(Some(e)),
        }
    }
    // A broken manifest may be the one that was meant: say so rather than "missing".
    if let Some(e) = broken {
        return Err(e);
    }
    Err(ManifestError::Missing {
        dir: dir.to_path_buf(),
        what: format!("{task} ({precision})"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn shipped(name: &str) -> Value {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models")
            .join(name);
        serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
    }

    /// The manifest rules the device checks itself (beyond the schema the trainer validates):
    /// each broken copy of a shipped manifest is refused with a message naming the problem.
    #[test]
    fn manifest_rules_refuse_what_the_device_cannot_run() {
        let dir = tempfile::tempdir().unwrap();
        let read = |v: &Value| {
            let p = dir.path().join("m.json");
            fs::write(&p, v.to_string()).unwrap();
            Manifest::read(&p).map(|_| ()).map_err(|e| e.to_string())
        };
        let cls = shipped("classifier-f32.json");
        let seg = shipped("segmenter-f32.json");
        assert_eq!(read(&cls), Ok(()));
        assert_eq!(read(&seg), Ok(()));
        type Edit = fn(&mut Value);
        let cases: [(&Value, Edit, &str); 11] = [
            (
                &cls,
                |m| m["schema_version"] = json!(2),
                "schema_version 2 is not supported",
            ),
            (&cls, |m| m["opset"] = json!(11), "opset 11 is below 13"),
            (
                &cls,
                |m| m["input"]["shape"] = json!([2, 3, 224, 224]),
                "is not [1, 3, H, W]",
            ),
            (
                &cls,
                |m| m["input"]["layout"] = json!("NHWC"),
                "input must be NCHW RGB",
            ),
            (
                &cls,
                |m| m["preprocessing"].as_array_mut().unwrap().reverse(),
                "must end with normalize",
            ),
            (
                &cls,
                |m| m["preprocessing"][1]["width"] = json!(200),
                "must resize to the input's 224x224",
            ),
            (&cls, |m| m["classes"][0] = json!("NV"), "classes must be"),
            (
                &cls,
                |m| m["calibration"]["temperature"] = json!(0),
                "temperature must be > 0",
            ),
            (
                &cls,
                |m| m["ood"]["threshold"] = json!(-1),
                "ood.threshold must be a number > 0",
            ),
            (
                &cls,
                |m| m["ood"]["output"] = json!("logits"),
                "second graph output",
            ),
            (
                &seg,
                |m| m["output"]["activation"] = json!("softmax"),
                "sigmoid logits",
            ),
        ];
        for (base, edit, want) in cases {
            let mut m = base.clone();
            edit(&mut m);
            let err = read(&m).unwrap_err();
            assert!(err.contains(want), "{want:?} not in {err:?}");
        }
        let mut unknown = cls.clone();
        unknown["colour"] = json!("red");
        assert!(read(&unknown).unwrap_err().contains("unknown field"));
    }
}
