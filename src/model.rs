//! Model loading: the sha256 check of the file a [`Manifest`] names, and an optimized tract
//! plan with the manifest's concrete input shape and named outputs.
//!
//! A model that is missing, corrupt, or does not match its manifest is a startup error naming
//! the file and what is wrong: the device never runs a model it cannot vouch for.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;
use tract_onnx::prelude::*;

use crate::manifest::{Manifest, ManifestError};
use crate::wire::sha256_hex;

/// Why a model cannot run: its manifest or the file it names (missing, corrupt, another
/// file: `Manifest`), or tract.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{path}: tract cannot load this model: {msg}")]
    Tract { path: PathBuf, msg: String },
}

fn invalid(path: &Path, msg: impl Into<String>) -> ModelError {
    crate::manifest::invalid(path, msg).into()
}

/// A loaded, verified, optimized model ready to run.
pub struct Model {
    pub manifest: Manifest,
    pub path: PathBuf,
    plan: std::sync::Arc<TypedSimplePlan>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("path", &self.path)
            .field("name", &self.manifest.name)
            .finish()
    }
}

/// Use `n` threads for tract's matrix products (1 = the caller's thread only).
pub fn set_threads(n: usize) {
    use tract_linalg::multithread::{set_default_executor, Executor};
    set_default_executor(if n > 1 {
        Executor::multithread(n)
    } else {
        Executor::SingleThread
    });
}

impl Model {
    /// Load the model a manifest describes, refusing it unless its sha256 matches.
    pub fn load(manifest_path: &Path) -> Result<Model, ModelError> {
        let manifest = Manifest::read(manifest_path)?;
        let dir = manifest_path.parent().unwrap_or(Path::new("."));
        let path = dir.join(&manifest.file);
        let bytes = fs::read(&path).map_err(|source| ManifestError::Io {
            path: path.clone(),
            source,
        })?;
        let actual = sha256_hex(&bytes);
        if actual != manifest.sha256 {
            return Err(invalid(
                &path,
                format!(
                    "sha256 is {actual} but {} expects {}: the file is corrupt or not the one \
                     the manifest describes",
                    manifest_path.display(),
                    manifest.sha256
                ),
            ));
        }
        let (h, w) = manifest.input_hw();
        let tract_err = |e: TractError| ModelError::Tract {
            path: path.clone(),
            msg: format!("{e:#}"),
        };
        // Decode the protobuf straight from the bytes we hashed and drop them before tract
        // builds its model: `model_for_read` would copy them once more, and these copies
        // (file, protobuf, tract's tensors) are what sets the daemon's peak memory.
        let proto = <tract_onnx::pb::ModelProto as prost::Message>::decode(bytes.as_slice())
            .map_err(|e| invalid(&path, format!("not an ONNX protobuf ({e})")))?;
        drop(bytes);
        let model = tract_onnx::onnx()
            .model_for_proto_model(&proto)
            .map_err(tract_err)?;
        drop(proto);
        let names = manifest.output_names();
        let model = model.with_outputs_by_name(&names).map_err(|e| {
            invalid(
                &path,
                format!("the graph lacks an output the manifest names ({names:?}): {e}"),
            )
        })?;
        let plan = model
            .with_input_fact(0, f32::fact([1, 3, h, w]).into())
            .map_err(tract_err)?
            .into_optimized()
            .map_err(tract_err)?
            .into_runnable()
            .map_err(tract_err)?;
        log::debug!(
            "{}: loaded; peak RSS so far {:.1} MB",
            path.display(),
            crate::sys::peak_rss_mb()
        );
        Ok(Model {
            manifest,
            path,
            plan,
        })
    }

    /// Run on one 1x3xHxW input; returns the first output (the logits) as a flat vector.
    pub fn run(&self, input: Tensor) -> TractResult<Vec<f32>> {
        Ok(self.run_all(input)?.swap_remove(0))
    }

    /// Run on one input; every output the manifest names, in `Manifest::output_names` order.
    pub fn run_all(&self, input: Tensor) -> TractResult<Vec<Vec<f32>>> {
        let out = self.plan.run(tvec!(input.into()))?;
        out.iter()
            .map(|t| Ok(t.to_plain_array_view::<f32>()?.iter().copied().collect()))
            .collect()
    }
}

/// Where tract spends its time on a model: one kind of operator in the optimized plan.
#[derive(Debug, Clone, Serialize)]
pub struct OpTime {
    pub op: String,
    /// Milliseconds per run, all nodes of this kind together.
    pub ms: f64,
    pub nodes: usize,
}

impl Model {
    /// Time each node of the optimized plan over `iterations` runs on `input` (after two
    /// warm-up runs), summed per kind of operator, slowest first.
    pub fn profile_ops(&self, input: &Tensor, iterations: usize) -> TractResult<Vec<OpTime>> {
        use std::collections::HashMap;
        let mut by_op: HashMap<String, (f64, usize)> = HashMap::new();
        let mut state = tract_onnx::tract_core::plan::SimpleState::new(&self.plan)?;
        let runs = iterations.max(1);
        for i in 0..runs + 2 {
            state.run_plan_with_eval(tvec!(input.clone().into()), |ctx, st, node, inputs| {
                let t = std::time::Instant::now();
                let out = tract_onnx::tract_core::plan::eval(ctx, st, node, inputs);
                if i >= 2 {
                    let e = by_op.entry(node.op().name().to_string()).or_default();
                    e.0 += t.elapsed().as_secs_f64() * 1e3;
                    e.1 += 1;
                }
                out
            })?;
        }
        let mut ops: Vec<OpTime> = by_op
            .into_iter()
            .map(|(op, (total, n))| OpTime {
                op,
                ms: total / runs as f64,
                nodes: n / runs,
            })
            .collect();
        ops.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        Ok(ops)
    }
}
