//! The `dermaedge` command line: `analyze` images, list `models`, `bench` the pipeline, `run`
//! the daemon and talk to it (`capture`, `status`), export `results`, check a config, list
//! camera `devices`.
//!
//! Every failure is one line on stderr naming the file and the problem; in a batch the other
//! images still get their results and the exit status is 1 when any image failed.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::daemon;
use crate::model::{self, Precision, CLASSES};
use crate::pipeline::{AnalysisConfig, Analyzer};
use crate::store::Store;
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

#[derive(clap::Args)]
struct ModelArgs {
    /// Folder with the models and their manifests.
    #[arg(long, env = "DERMAEDGE_MODELS", default_value = "models")]
    models: PathBuf,
    /// Which exported variant to run.
    #[arg(long, value_enum, default_value = "float32")]
    precision: Precision,
}

/// The running daemon's control socket.
#[derive(clap::Args)]
struct SocketArg {
    #[arg(
        long = "socket",
        env = "DERMAEDGE_SOCKET",
        default_value = "/run/dermaedge/control.sock"
    )]
    path: PathBuf,
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
        /// Write per image into this folder: NAME.overlay.png (the lesion outline on the
        /// image) and NAME.mask.png (the lesion mask, 0/255, the image's size).
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
    /// Run the daemon: capture, analyze, store in SQLite, deliver over MQTT.
    Run {
        /// The TOML config (every key optional; see systemd/dermaedge.toml).
        #[arg(long, conflicts_with = "demo")]
        config: Option<PathBuf>,
        /// Use the embedded demo config: the bundled samples as a watched folder, a local
        /// database in demo-state/, no camera, no broker. Run from the repository root.
        #[arg(long)]
        demo: bool,
        /// Stop once every file in the watched folder is analyzed (and delivered).
        #[arg(long)]
        once: bool,
    },
    /// Check a config file: prints the problem (naming the key) or "ok".
    CheckConfig { file: PathBuf },
    /// List V4L2 capture devices with their formats and frame sizes.
    Devices,
    /// Ask a running daemon to capture and analyze (over its control socket).
    Capture {
        #[command(flatten)]
        socket: SocketArg,
        /// Analyze this image file instead of a camera frame.
        #[arg(long)]
        file: Option<PathBuf>,
        #[arg(long)]
        lesion_id: Option<String>,
        #[arg(long)]
        body_site: Option<String>,
        #[arg(long)]
        age: Option<u32>,
        /// female, male, other or unknown.
        #[arg(long)]
        sex: Option<String>,
    },
    /// Ask a running daemon how it is (over its control socket).
    Status {
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Export stored results (the same JSON as the MQTT messages, or CSV).
    Results {
        #[arg(
            long,
            env = "DERMAEDGE_DB",
            default_value = "/var/lib/dermaedge/dermaedge.db"
        )]
        db: PathBuf,
        /// Only results captured at or after this time (RFC 3339, e.g. 2026-11-28 or 2026-11-28T10:00:00Z).
        #[arg(long)]
        since: Option<String>,
        /// One JSON message per line (the default).
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        /// CSV: id, time, source, status, recapture reasons, top class, the 8 probabilities, context.
        #[arg(long)]
        csv: bool,
    },
    /// List the installed models with their manifests.
    Models {
        #[arg(long, env = "DERMAEDGE_MODELS", default_value = "models")]
        models: PathBuf,
    },
}

pub fn main() -> i32 {
    let cli = Cli::parse();
    let level = if matches!(cli.command, Command::Run { .. }) {
        "info"
    } else {
        "warn"
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    match cli.command {
        Command::Run { config, demo, once } => report(run(config.as_deref(), demo, once)),
        Command::CheckConfig { file } => match Config::from_file(&file) {
            Ok(c) => {
                println!(
                    "{}: ok (device {}, source {:?}, mqtt {})",
                    file.display(),
                    c.device_id,
                    c.source,
                    c.mqtt.host.as_deref().unwrap_or("off")
                );
                0
            }
            Err(e) => report(Err(e)),
        },
        Command::Devices => {
            let lines = crate::capture::list_devices();
            if lines.is_empty() {
                eprintln!("dermaedge: no V4L2 capture devices (/dev/video*); is the dermatoscope plugged in?");
                return 1;
            }
            for l in lines {
                println!("{l}");
            }
            0
        }
        Command::Capture {
            socket,
            file,
            lesion_id,
            body_site,
            age,
            sex,
        } => {
            let file = file.map(|f| std::path::absolute(&f).unwrap_or(f));
            let request = serde_json::json!({
                "command": "capture", "file": file, "lesion_id": lesion_id,
                "body_site": body_site, "age": age, "sex": sex,
            });
            let request = strip_nulls(request);
            answer(daemon::control(
                &socket.path,
                &request,
                std::time::Duration::from_secs(120),
            ))
        }
        Command::Status { socket } => answer(daemon::control(
            &socket.path,
            &serde_json::json!({"command": "status"}),
            std::time::Duration::from_secs(10),
        )),
        Command::Results {
            db,
            since,
            json: _,
            csv,
        } => report(export_results(&db, since.as_deref(), csv)),
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
            model.precision,
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
    let analyzer = Analyzer::load(&model_args.models, model_args.precision, config)
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
            writeln!(out, "{}", crate::pipeline::summary(&a)).map_err(|e| e.to_string())?;
        }
        if let Some(dir) = masks {
            let stem = path
                .file_stem()
                .map_or("image".into(), |s| s.to_string_lossy().into_owned());
            let overlay = dir.join(format!("{stem}.overlay.png"));
            vision::overlay(&frame, &a.mask)
                .save(&overlay)
                .map_err(|e| format!("{}: cannot write ({e})", overlay.display()))?;
            let mask = dir.join(format!("{stem}.mask.png"));
            a.mask
                .save(&mask)
                .map_err(|e| format!("{}: cannot write ({e})", mask.display()))?;
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

fn report(r: Result<(), String>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("dermaedge: {e}");
            2
        }
    }
}

fn run(config: Option<&Path>, demo: bool, once: bool) -> Result<(), String> {
    let config = match (config, demo) {
        (Some(p), _) => Config::from_file(p)?,
        (None, true) => Config::parse(crate::config::DEMO).map_err(|e| format!("demo config: {e}"))?,
        (None, false) => {
            return Err(
                "give --config FILE (see systemd/dermaedge.toml), or --demo to try it on the bundled samples"
                    .into(),
            )
        }
    };
    daemon::run(config, daemon::RunOptions { once })
}

fn strip_nulls(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(o) => o.into_iter().filter(|(_, v)| !v.is_null()).collect(),
        other => other,
    }
}

/// Print a daemon's answer; exit status 1 when it says `ok: false`.
fn answer(r: Result<serde_json::Value, String>) -> i32 {
    match r {
        Ok(v) => {
            println!("{v}");
            i32::from(v["ok"] != serde_json::Value::Bool(true))
        }
        Err(e) => report(Err(e)),
    }
}

fn export_results(db: &Path, since: Option<&str>, csv: bool) -> Result<(), String> {
    if !db.exists() {
        return Err(format!(
            "{}: no such database (set --db or DERMAEDGE_DB)",
            db.display()
        ));
    }
    let since = match since {
        Some(s) => {
            let t = humantime::parse_rfc3339_weak(s)
                .or_else(|_| humantime::parse_rfc3339_weak(&format!("{s} 00:00:00")))
                .map_err(|e| format!("--since {s:?}: not a date or RFC 3339 time ({e})"))?;
            Some(humantime::format_rfc3339_millis(t).to_string())
        }
        None => None,
    };
    let store = Store::open_read_only(db).map_err(|e| e.to_string())?;
    let messages = store
        .messages_since(since.as_deref())
        .map_err(|e| e.to_string())?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let w = |e: std::io::Error| e.to_string();
    if !csv {
        for m in messages {
            writeln!(out, "{m}").map_err(w)?;
        }
        return Ok(());
    }
    writeln!(out, "{}", crate::message::csv_header()).map_err(w)?;
    for m in messages {
        let v: serde_json::Value = serde_json::from_str(&m).map_err(|e| e.to_string())?;
        writeln!(out, "{}", crate::message::csv_row(&v)).map_err(w)?;
    }
    Ok(())
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
