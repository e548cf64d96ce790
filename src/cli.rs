//! The `dermaedge` command line: `analyze` images, list `models`, `bench` the pipeline, `run`
//! the daemon and talk to it (`capture`, `status`), export `results`, check a config, list
//! camera `devices`.
//!
//! Every failure is one line on stderr naming the file and the problem; in a batch the other
//! images still get their results and the exit status is 1 when any image failed.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::control::{socket, CaptureRequest, Sex};
use crate::daemon;
use crate::manifest::{self, Precision, CLASSES};
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

/// What `analyze` writes besides its summary lines.
#[derive(clap::Args)]
struct AnalyzeOutput {
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
        #[command(flatten)]
        output: AnalyzeOutput,
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
        #[arg(long, value_enum)]
        sex: Option<Sex>,
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

/// Setup errors (a config, the models, a database, an output file): printed, exit status 2.
type Failure = Box<dyn std::error::Error>;

pub fn main() -> i32 {
    let cli = Cli::parse();
    let level = if matches!(cli.command, Command::Run { .. }) {
        "info"
    } else {
        "warn"
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dermaedge: {e}");
            2
        }
    }
}

/// The exit status: 0 done, 1 done but something was refused or failed (an image, a
/// command, no camera); setup errors are Err.
fn dispatch(command: Command) -> Result<i32, Failure> {
    match command {
        Command::Run { config, demo, once } => {
            run(config.as_deref(), demo, once)?;
            Ok(0)
        }
        Command::CheckConfig { file } => check_config(&file),
        Command::Devices => Ok(devices()),
        Command::Capture {
            socket,
            file,
            lesion_id,
            body_site,
            age,
            sex,
        } => {
            let capture = CaptureRequest {
                file: file.map(|f| std::path::absolute(&f).unwrap_or(f)),
                lesion_id,
                body_site,
                age,
                sex,
                ..Default::default()
            };
            let request = socket::Request::capture(capture);
            answer(&socket.path, &request, Duration::from_secs(120))
        }
        Command::Status { socket } => answer(
            &socket.path,
            &socket::Request::status(),
            Duration::from_secs(10),
        ),
        Command::Results {
            db,
            since,
            json: _,
            csv,
        } => export_results(&db, since.as_deref(), csv).map(|()| 0),
        Command::Analyze {
            images,
            model,
            output,
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
            Ok(i32::from(analyze(&images, &model, config, &output)? > 0))
        }
        Command::Bench {
            model,
            threads,
            iterations,
            image,
        } => {
            let report = crate::bench::run(
                &model.models,
                model.precision,
                threads,
                iterations.max(1),
                &image,
            )?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(0)
        }
        Command::Models { models } => list_models(&models).map(|()| 0),
    }
}

fn check_config(file: &Path) -> Result<i32, Failure> {
    let c = Config::from_file(file)?;
    // What `run` reads at start: a missing password file fails here too.
    crate::mqtt::Credentials::load(&c).map_err(|e| format!("{}: {e}", file.display()))?;
    println!(
        "{}: ok (device {}, source {:?}, mqtt {})",
        file.display(),
        c.device_id,
        c.source,
        c.mqtt.host.as_deref().unwrap_or("off")
    );
    Ok(0)
}

fn devices() -> i32 {
    let lines = crate::capture::list_devices();
    if lines.is_empty() {
        eprintln!(
            "dermaedge: no V4L2 capture devices (/dev/video*); is the dermatoscope plugged in?"
        );
        return 1;
    }
    for l in lines {
        println!("{l}");
    }
    0
}

/// Analyze every image; returns how many failed. Setup errors (models, output files) are Err.
fn analyze(
    images: &[PathBuf],
    model_args: &ModelArgs,
    config: AnalysisConfig,
    output: &AnalyzeOutput,
) -> Result<usize, Failure> {
    let analyzer = Analyzer::load(&model_args.models, model_args.precision, config)?;
    if let Some(dir) = &output.masks {
        fs::create_dir_all(dir)
            .map_err(|e| format!("{}: cannot create folder ({e})", dir.display()))?;
    }
    let mut csv = output
        .csv
        .as_deref()
        .map(SubmissionCsv::create)
        .transpose()?;
    let mut failed = 0;
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
        let mut out = std::io::stdout().lock();
        if output.json {
            writeln!(out, "{}", serde_json::to_string(&a)?)?;
        } else {
            writeln!(out, "{}", crate::pipeline::summary(&a))?;
        }
        let stem = path
            .file_stem()
            .map_or_else(|| name.clone(), |s| s.to_string_lossy().into_owned());
        if let Some(dir) = &output.masks {
            write_masks(dir, &stem, &frame, &a.mask)?;
        }
        if let (Some(csv), Some(c)) = (csv.as_mut(), a.classification.as_ref()) {
            csv.row(&stem, &c.probabilities)?;
        }
    }
    Ok(failed)
}

/// NAME.overlay.png (the lesion outline on the image) and NAME.mask.png (0/255).
fn write_masks(
    dir: &Path,
    stem: &str,
    frame: &image::RgbImage,
    mask: &image::GrayImage,
) -> Result<(), String> {
    let overlay = dir.join(format!("{stem}.overlay.png"));
    vision::overlay(frame, mask)
        .save(&overlay)
        .map_err(|e| format!("{}: cannot write ({e})", overlay.display()))?;
    let mask_path = dir.join(format!("{stem}.mask.png"));
    mask.save(&mask_path)
        .map_err(|e| format!("{}: cannot write ({e})", mask_path.display()))
}

/// The probabilities in the ISIC submission format (image,MEL,...,SCC).
struct SubmissionCsv {
    path: PathBuf,
    file: fs::File,
}

impl SubmissionCsv {
    fn create(path: &Path) -> Result<SubmissionCsv, String> {
        let mut file = fs::File::create(path)
            .map_err(|e| format!("{}: cannot create ({e})", path.display()))?;
        writeln!(file, "image,{}", CLASSES.join(","))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(SubmissionCsv {
            path: path.to_path_buf(),
            file,
        })
    }

    fn row(&mut self, id: &str, p: &crate::pipeline::Probabilities) -> Result<(), String> {
        let probs: Vec<String> = p.to_array().iter().map(|v| format!("{v:.8}")).collect();
        writeln!(self.file, "{id},{}", probs.join(","))
            .map_err(|e| format!("{}: {e}", self.path.display()))
    }
}

fn run(config: Option<&Path>, demo: bool, once: bool) -> Result<(), Failure> {
    let config = match (config, demo) {
        (Some(p), _) => Config::from_file(p)?,
        (None, true) => {
            Config::parse(crate::config::DEMO).map_err(|e| format!("demo config: {e}"))?
        }
        (None, false) => {
            return Err(
                "give --config FILE (see systemd/dermaedge.toml), or --demo to try it on the bundled samples"
                    .into(),
            );
        }
    };
    daemon::run(config, daemon::RunOptions { once })?;
    Ok(())
}

/// Send `request`, print the daemon's answer; exit status 1 when it says `ok: false`.
fn answer(path: &Path, request: &socket::Request, wait: Duration) -> Result<i32, Failure> {
    let v = socket::request(path, request, wait)?;
    println!("{v}");
    Ok(i32::from(v["ok"] != serde_json::Value::Bool(true)))
}

fn export_results(db: &Path, since: Option<&str>, csv: bool) -> Result<(), Failure> {
    if !db.exists() {
        return Err(format!(
            "{}: no such database (set --db or DERMAEDGE_DB)",
            db.display()
        )
        .into());
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
    let messages = Store::open_read_only(db)?.messages_since(since.as_deref())?;
    let mut out = std::io::stdout().lock();
    if !csv {
        for m in messages {
            writeln!(out, "{m}")?;
        }
        return Ok(());
    }
    writeln!(out, "{}", crate::message::csv_header())?;
    for m in messages {
        let v: serde_json::Value = serde_json::from_str(&m)?;
        writeln!(out, "{}", crate::message::csv_row(&v))?;
    }
    Ok(())
}

fn list_models(dir: &Path) -> Result<(), Failure> {
    let manifests = manifest::manifests_in(dir)?;
    if manifests.is_empty() {
        return Err(format!("{}: no model manifests here", dir.display()).into());
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
