//! The `dermaedge` command line: `analyze` images, list `models`, `bench` the pipeline.
//!
//! Every failure is one line on stderr naming the file and the problem; in a batch the other
//! images still get their results and the exit status is 1 when any image failed.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand, ValueEnum};

use crate::model::{self, CLASSES};
use crate::pipeline::{AnalysisConfig, Analyzer, Status};
use crate::vision;

#[derive(Parser)]
#[command(
    name = "dermaedge",
    version,
    about = "Skin-lesion analysis support (not a diagnosis)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Precision {
    Float32,
    Int8,
}

impl Precision {
    fn as_str(self) -> &'static str {
        match self {
            Precision::Float32 => "float32",
            Precision::Int8 => "int8",
        }
    }
}

#[derive(clap::Args)]
struct ModelArgs {
    /// Folder with the models and their manifests.
    #[arg(long, env = "DERMAEDGE_MODELS", default_value = "models")]
    models: PathBuf,
    /// Which exported variant to run.
    #[arg(long, value_enum, default_value = "float32")]
    precision: Precision,
}

#[derive(Subcommand)]
enum Command {
    /// Analyze dermoscopic images: quality, lesion mask, measurements, class probabilities.
    Analyze {
        #[arg(required = true)]
        images: Vec<PathBuf>,
        #[command(flatten)]
        model: ModelArgs,
        /// Print one JSON result per line instead of a summary.
        #[arg(long)]
        json: bool,
        /// Write an overlay PNG of the lesion outline per image into this folder.
        #[arg(long)]
        masks: Option<PathBuf>,
        /// Write the probabilities in the ISIC submission format (image,MEL,...,SCC).
        #[arg(long)]
        csv: Option<PathBuf>,
        /// Refuse images with more pixels than this (decompression-bomb guard).
        #[arg(long, default_value_t = 50_000_000)]
        max_pixels: u64,
        /// Size of one image pixel on the skin in micrometres, for areas in mm².
        #[arg(long)]
        pixel_pitch_um: Option<f64>,
        /// Skip the horizontal-flip test-time augmentation.
        #[arg(long)]
        no_tta: bool,
    },
    /// Time the pipeline on a 1280x960 frame: per stage, bare inference, load, peak RSS.
    Bench {
        #[command(flatten)]
        model: ModelArgs,
        /// Threads for tract's matrix products.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        #[arg(long, default_value_t = 20)]
        iterations: usize,
        /// The image scaled up to the 1280x960 test frame.
        #[arg(long, default_value = "tests/samples/ISIC_0001100.jpg")]
        image: PathBuf,
    },
    /// List the installed models with their manifests.
    Models {
        #[arg(long, env = "DERMAEDGE_MODELS", default_value = "models")]
        models: PathBuf,
    },
}

pub fn main() -> i32 {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    match cli.command {
        Command::Analyze {
            images,
            model,
            json,
            masks,
            csv,
            max_pixels,
            pixel_pitch_um,
            no_tta,
        } => {
            let config = AnalysisConfig {
                limits: vision::DecodeLimits {
                    max_pixels,
                    ..Default::default()
                },
                pixel_pitch_mm: pixel_pitch_um.map(|um| um / 1000.0),
                tta: !no_tta,
                ..Default::default()
            };
            match analyze(
                &images,
                &model,
                config,
                json,
                masks.as_deref(),
                csv.as_deref(),
            ) {
                Ok(failed) => i32::from(failed > 0),
                Err(e) => {
                    eprintln!("dermaedge: {e}");
                    2
                }
            }
        }
        Command::Bench {
            model,
            threads,
            iterations,
            image,
        } => match crate::bench::run(
            &model.models,
            model.precision.as_str(),
            threads,
            iterations.max(1),
            &image,
        ) {
            Ok(report) => {
                println!("{}", serde_json::to_string(&report).unwrap_or_default());
                0
            }
            Err(e) => {
                eprintln!("dermaedge: {e}");
                2
            }
        },
        Command::Models { models } => match list_models(&models) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("dermaedge: {e}");
                2
            }
        },
    }
}

/// Analyze every image; returns how many failed. Setup errors (models, output files) are Err.
fn analyze(
    images: &[PathBuf],
    model_args: &ModelArgs,
    config: AnalysisConfig,
    json: bool,
    masks: Option<&Path>,
    csv: Option<&Path>,
) -> Result<usize, String> {
    let analyzer = Analyzer::load(&model_args.models, model_args.precision.as_str(), config)
        .map_err(|e| e.to_string())?;
    if let Some(dir) = masks {
        fs::create_dir_all(dir)
            .map_err(|e| format!("{}: cannot create folder ({e})", dir.display()))?;
    }
    let mut csv_out = match csv {
        Some(p) => {
            let mut f =
                fs::File::create(p).map_err(|e| format!("{}: cannot create ({e})", p.display()))?;
            writeln!(f, "image,{}", CLASSES.join(","))
                .map_err(|e| format!("{}: {e}", p.display()))?;
            Some((p, f))
        }
        None => None,
    };
    let mut failed = 0;
    let stdout = std::io::stdout();
    for path in images {
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let result = fs::read(path)
            .map_err(|e| format!("cannot read ({e})"))
            .and_then(|bytes| {
                analyzer
                    .analyze_bytes(&bytes, &name)
                    .map_err(|e| e.to_string())
            });
        let (frame, a) = match result {
            Ok(r) => r,
            Err(e) => {
                eprintln!("dermaedge: {}: {e}", path.display());
                failed += 1;
                continue;
            }
        };
        let mut out = stdout.lock();
        if json {
            let line = serde_json::to_string(&a).map_err(|e| e.to_string())?;
            writeln!(out, "{line}").map_err(|e| e.to_string())?;
        } else {
            writeln!(out, "{}", summary(&a)).map_err(|e| e.to_string())?;
        }
        if let Some(dir) = masks {
            let stem = path
                .file_stem()
                .map_or("image".into(), |s| s.to_string_lossy().into_owned());
            let target = dir.join(format!("{stem}.overlay.png"));
            vision::overlay(&frame, &a.mask)
                .save(&target)
                .map_err(|e| format!("{}: cannot write ({e})", target.display()))?;
        }
        if let (Some((p, f)), Some(c)) = (csv_out.as_mut(), a.classification.as_ref()) {
            let id = path
                .file_stem()
                .map_or(name.clone(), |s| s.to_string_lossy().into_owned());
            let probs: Vec<String> = c
                .probabilities
                .to_array()
                .iter()
                .map(|v| format!("{v:.8}"))
                .collect();
            writeln!(f, "{id},{}", probs.join(",")).map_err(|e| format!("{}: {e}", p.display()))?;
        }
    }
    Ok(failed)
}

fn summary(a: &crate::pipeline::Analysis) -> String {
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

fn list_models(dir: &Path) -> Result<(), String> {
    let manifests = model::manifests_in(dir).map_err(|e| e.to_string())?;
    if manifests.is_empty() {
        return Err(format!("{}: no model manifests here", dir.display()));
    }
    for (path, m) in manifests {
        match m {
            Ok(m) => println!(
                "{}: {} {} ({}, {}, {}, input {:?}, opset {})\n    sha256 {}\n    licence: {}",
                path.display(),
                m.name,
                m.version,
                m.task,
                m.architecture,
                m.precision,
                m.input.shape,
                m.opset,
                m.sha256,
                m.license
            ),
            Err(e) => println!("{}: INVALID: {e}", path.display()),
        }
    }
    Ok(())
}
