//! `dermaedge run`: the service. Wires the worker (capture + analysis + storage, on its own
//! thread), the publisher (MQTT), the local control socket, systemd notifications and the
//! shutdown sequence.
//!
//! Shutdown, on SIGTERM or SIGINT: triggers stop being accepted, the worker finishes the
//! capture in hand and records it, the publisher delivers what it can for a few seconds, says
//! `offline` and disconnects, and the process exits 0. Everything not yet delivered stays in the
//! outbox for the next start.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use image::{GrayImage, RgbImage};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{oneshot, watch, Notify};

use crate::capture::{Camera, Frame, Reconnect};
use crate::config::{Config, SourceKind};
use crate::control::{CaptureRequest, Commands, Job, Link, Trigger, WorkerStatus};
use crate::pipeline::{Analysis, Analyzer, Reason, Status, Timings};
use crate::publish::{self, Publisher};
use crate::store::{now_rfc3339, CaptureRow, ResultRow, Store};

/// Options of `dermaedge run` beyond the config file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Folder source: stop when every file present has been analyzed (and, with a broker,
    /// delivered), instead of watching for more.
    pub once: bool,
}

/// Run the service until SIGTERM/SIGINT (or, with `once`, until the folder is done).
pub fn run(config: Config, options: RunOptions) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime ({e})"))?;
    runtime.block_on(serve(Arc::new(config), options))
}

async fn serve(config: Arc<Config>, options: RunOptions) -> Result<(), String> {
    let started = Instant::now();
    publish::check_tls(&config)?;
    crate::model::set_threads(config.threads);
    let db = config.database_path();
    let store = Store::open(&db, &config.images_dir()).map_err(|e| e.to_string())?;
    let analyzer = Analyzer::load(&config.models, &config.precision, config.analysis_config())
        .map_err(|e| e.to_string())?;

    let (jobs_tx, jobs_rx) = sync_channel::<Job>(config.queue);
    let outbox = Arc::new(Notify::new());
    let stop = Arc::new(AtomicBool::new(false));
    let status = Arc::new(Mutex::new(WorkerStatus::default()));
    let (ready_tx, ready_rx) = oneshot::channel::<String>();
    let worker = Worker::new(
        config.clone(),
        analyzer,
        store,
        outbox.clone(),
        stop.clone(),
        status.clone(),
        options.once,
    );
    let worker = std::thread::Builder::new()
        .name("worker".into())
        .spawn(move || worker.run(jobs_rx, ready_tx))
        .map_err(|e| format!("cannot start the worker thread ({e})"))?;
    let Ok(ready) = ready_rx.await else {
        return match worker.join() {
            Ok(Err(e)) => Err(e),
            _ => Err("the worker stopped during start-up".into()),
        };
    };

    let (link_tx, link_rx) = watch::channel(if config.mqtt.host.is_some() {
        Link::Connecting
    } else {
        Link::Disabled
    });
    let commands = Commands {
        jobs: jobs_tx,
        queue: config.queue,
        max_bytes: config.mqtt.max_command_bytes,
        status,
        link: link_rx,
        database: db.clone(),
        device_id: config.device_id.clone(),
    };
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let publisher = match &config.mqtt.host {
        Some(_) => {
            let store = Store::open(&db, &config.images_dir()).map_err(|e| e.to_string())?;
            store.relax_durability().map_err(|e| e.to_string())?;
            let flush = if options.once {
                Duration::from_secs(60)
            } else {
                Duration::from_secs(5)
            };
            let p = Publisher::new(
                config.clone(),
                store,
                outbox.clone(),
                commands.clone(),
                link_tx,
                shutdown_rx.clone(),
                flush,
            );
            Some(tokio::spawn(p.run()))
        }
        None => None,
    };
    let socket = if config.socket.as_os_str().is_empty() {
        None
    } else {
        let listener = bind_socket(&config.socket)?;
        Some(tokio::spawn(serve_socket(
            listener,
            commands.clone(),
            shutdown_rx.clone(),
        )))
    };
    drop(commands);

    log::info!("ready in {} ms: {ready}", started.elapsed().as_millis());
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&ready),
    ]);

    let worker_done = tokio::task::spawn_blocking(move || worker.join());
    tokio::pin!(worker_done);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot watch SIGTERM ({e})"))?;
    let worker_result = tokio::select! {
        r = &mut worker_done => Some(r),
        _ = sigterm.recv() => None,
        _ = tokio::signal::ctrl_c() => None,
    };
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    stop.store(true, Ordering::SeqCst);
    let worker_result = match worker_result {
        Some(r) => r,
        None => {
            log::info!("stopping: finishing the capture in hand");
            worker_done.await
        }
    };
    let _ = shutdown_tx.send(true);
    if let Some(p) = publisher {
        let _ = p.await;
    }
    if let Some(s) = socket {
        let _ = s.await;
        let _ = fs::remove_file(&config.socket);
    }
    let summary = Store::open_read_only(&db)
        .and_then(|s| s.counts())
        .map(|(c, r, p)| {
            format!(
                "{c} captures, {r} results in {} ({p} not yet delivered)",
                db.display()
            )
        })
        .unwrap_or_default();
    log::info!("stopped: {summary}");
    match worker_result {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(e),
        _ => Err("the worker thread failed".into()),
    }
}

fn bind_socket(path: &Path) -> Result<tokio::net::UnixListener, String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir)
            .map_err(|e| format!("socket: {}: cannot create the folder ({e})", dir.display()))?;
    }
    // A socket left by a killed daemon: nobody answers on it, so it can go.
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(format!(
            "socket: {}: another dermaedge is running with this socket; stop it or set another path",
            path.display()
        ));
    }
    let _ = fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(|e| format!("socket: {}: cannot listen ({e})", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("socket: {}: cannot make it private ({e})", path.display()))?;
    Ok(listener)
}

/// One JSON line per connection: `{"command": "capture", ...body}`; one JSON line back.
async fn serve_socket(
    listener: tokio::net::UnixListener,
    commands: Commands,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            s = listener.accept() => match s {
                Ok((s, _)) => s,
                Err(e) => {
                    log::warn!("socket: {e}");
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let commands = commands.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let limit = commands.max_bytes as u64 + 256;
            let answer = match BufReader::new(read.take(limit)).read_line(&mut line).await {
                Ok(_) => socket_command(&commands, &line).await,
                Err(e) => json!({"ok": false, "error": format!("cannot read the request ({e})")}),
            };
            let _ = write.write_all(format!("{answer}\n").as_bytes()).await;
        });
    }
}

async fn socket_command(commands: &Commands, line: &str) -> Value {
    let mut obj = match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(o)) => o,
        Ok(_) => return json!({"ok": false, "error": "the request must be a JSON object"}),
        Err(e) => return json!({"ok": false, "error": format!("invalid request JSON: {e}")}),
    };
    let Some(Value::String(name)) = obj.remove("command") else {
        return json!({"ok": false, "error": "the request needs \"command\": \"capture\" or \"status\""});
    };
    let body = Value::Object(obj).to_string();
    commands.handle_from(&name, body.as_bytes(), true).await
}

/// Files of a watched folder, taken once their size and time stop changing.
struct FolderWatch {
    path: PathBuf,
    every: Duration,
    next_scan: Instant,
    seen: HashSet<String>,
    sizes: HashMap<PathBuf, String>,
    /// Files whose capture could not be recorded (disk full...): retried after a pause.
    retry_at: HashMap<String, Instant>,
    warned: bool,
}

fn is_image_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    !name.starts_with('.')
        && [".jpg", ".jpeg", ".png"]
            .iter()
            .any(|ext| lower.ends_with(ext))
}

impl FolderWatch {
    /// Files ready to analyze now, by name.
    fn scan(&mut self) -> Vec<(PathBuf, String)> {
        self.next_scan = Instant::now() + self.every;
        let entries = match fs::read_dir(&self.path) {
            Ok(e) => {
                self.warned = false;
                e
            }
            Err(e) => {
                if !self.warned {
                    log::warn!(
                        "folder.path: {}: cannot read ({e}); watching for it",
                        self.path.display()
                    );
                    self.warned = true;
                }
                return Vec::new();
            }
        };
        let mut ready = Vec::new();
        let mut sizes = HashMap::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() || !is_image_name(&name) {
                continue;
            }
            let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            let nanos = mtime
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let key = format!("{name}|{}|{nanos}", meta.len());
            if self.seen.contains(&key)
                || self.retry_at.get(&key).is_some_and(|t| Instant::now() < *t)
            {
                continue;
            }
            // Still being copied? Take it when unchanged since the last scan, or old enough.
            let settled = SystemTime::now()
                .duration_since(mtime)
                .is_ok_and(|age| age > Duration::from_secs(2));
            let path = entry.path();
            if settled || self.sizes.get(&path) == Some(&key) {
                ready.push((path, key));
            } else {
                sizes.insert(path, key);
            }
        }
        self.sizes = sizes;
        ready.sort();
        ready
    }
}

/// The camera, opened on demand and reopened with backoff when it goes away.
struct CameraLink {
    camera: Option<Camera>,
    reconnect: Reconnect,
    last_error: Option<String>,
    /// Auto capture: consecutive good frames, the last thumbnail, cooldown.
    still_frames: u32,
    last_thumb: Option<GrayImage>,
    quiet_until: Instant,
}

/// Capture, analysis and storage, on one thread (inference is CPU-bound and must not block
/// the async reactor). Pings the systemd watchdog from its loop: a hung worker gets restarted.
struct Worker {
    config: Arc<Config>,
    analyzer: Analyzer,
    store: Store,
    outbox: Arc<Notify>,
    stop: Arc<AtomicBool>,
    status: Arc<Mutex<WorkerStatus>>,
    once: bool,
    folder: Option<FolderWatch>,
    camera: Option<CameraLink>,
    next_retention: Instant,
    last_ping: Instant,
}

/// The answer to a trigger and what the log says.
fn outcome_json(id: &str, a: &Analysis) -> Value {
    json!({
        "ok": true,
        "id": id,
        "status": a.status,
        "recapture_reasons": a.recapture_reasons,
        "top_class": a.classification.as_ref().map(|c| c.top_class),
        "top_probability": a.classification.as_ref().map(|c| c.top_probability),
        "melanoma_flag": a.classification.as_ref().map(|c| c.melanoma_flag),
    })
}

impl Worker {
    fn new(
        config: Arc<Config>,
        analyzer: Analyzer,
        store: Store,
        outbox: Arc<Notify>,
        stop: Arc<AtomicBool>,
        status: Arc<Mutex<WorkerStatus>>,
        once: bool,
    ) -> Worker {
        let now = Instant::now();
        Worker {
            config,
            analyzer,
            store,
            outbox,
            stop,
            status,
            once,
            folder: None,
            camera: None,
            next_retention: now,
            last_ping: now - Duration::from_secs(10),
        }
    }

    fn run(mut self, jobs: Receiver<Job>, ready: oneshot::Sender<String>) -> Result<(), String> {
        let description = self.start()?;
        crate::sys::release_free_memory();
        let _ = ready.send(description);
        let tick = Duration::from_millis(100);
        while !self.stop.load(Ordering::SeqCst) {
            self.ping_watchdog();
            let wait = if self.auto_capture_live() {
                Duration::ZERO
            } else {
                tick
            };
            match jobs.recv_timeout(wait) {
                Ok(job) => {
                    self.capture_job(job);
                    crate::sys::release_free_memory();
                }
                Err(RecvTimeoutError::Timeout) => {}
                // No trigger front end (no broker, no socket): the sources still run.
                Err(RecvTimeoutError::Disconnected) => std::thread::sleep(wait),
            }
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            let scanned_empty = self.watch_folder();
            if scanned_empty == Some(false) {
                crate::sys::release_free_memory();
            }
            if self.once && scanned_empty == Some(true) {
                break;
            }
            self.keep_camera();
            self.auto_capture();
            self.retention();
        }
        // Triggers that were queued when the stop came get an answer, not silence.
        while let Ok(job) = jobs.try_recv() {
            let _ = job
                .reply
                .send(json!({"ok": false, "error": "the daemon is stopping; capture not taken"}));
        }
        Ok(())
    }

    /// Open what the source needs; returns the description for READY.
    fn start(&mut self) -> Result<String, String> {
        let c = self.config.clone();
        let (captures, results, pending) = self.store.counts().map_err(|e| e.to_string())?;
        let mut parts = vec![format!(
            "models {} + {} ({})",
            self.analyzer.segmenter.manifest.name,
            self.analyzer.classifier.manifest.name,
            c.precision
        )];
        match c.source {
            SourceKind::Folder => {
                let seen = self.store.source_keys().map_err(|e| e.to_string())?;
                self.folder = Some(FolderWatch {
                    path: c.folder.path.clone(),
                    every: Duration::from_millis(c.folder.poll_ms),
                    next_scan: Instant::now(),
                    seen,
                    sizes: HashMap::new(),
                    retry_at: HashMap::new(),
                    warned: false,
                });
                parts.push(format!("watching {}", c.folder.path.display()));
            }
            SourceKind::Camera => {
                let mut link = CameraLink {
                    camera: None,
                    reconnect: Reconnect::new(Duration::from_secs(1), Duration::from_secs(30)),
                    last_error: None,
                    still_frames: 0,
                    last_thumb: None,
                    quiet_until: Instant::now(),
                };
                open_camera(&c, &mut link);
                parts.push(match (&link.camera, &link.last_error) {
                    (Some(cam), _) => format!("camera {}", cam.description()),
                    (None, Some(e)) => format!("camera unavailable ({e}); retrying"),
                    (None, None) => "camera unavailable; retrying".into(),
                });
                self.camera = Some(link);
            }
            SourceKind::None => parts.push("no source; captures from files only".into()),
        }
        parts.push(format!(
            "{captures} captures, {results} results, {pending} awaiting delivery in {}",
            c.database_path().display()
        ));
        self.set_status(|s| {
            s.source = format!("{:?}", c.source).to_lowercase();
        });
        Ok(parts.join("; "))
    }

    fn set_status(&self, f: impl FnOnce(&mut WorkerStatus)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }

    fn ping_watchdog(&mut self) {
        if self.last_ping.elapsed() >= Duration::from_secs(1) {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            self.last_ping = Instant::now();
        }
    }

    /// Scan the watched folder when due and analyze what is ready. Some(true): a scan found
    /// nothing left to do.
    fn watch_folder(&mut self) -> Option<bool> {
        let folder = self.folder.as_mut()?;
        if Instant::now() < folder.next_scan {
            return Some(false);
        }
        let ready = folder.scan();
        if ready.is_empty() {
            // Done only when no file is still settling either.
            return Some(folder.sizes.is_empty());
        }
        for (path, key) in ready {
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            self.ping_watchdog();
            let name = path
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            let bytes = fs::read(&path);
            let recorded = match bytes {
                Ok(bytes) => self
                    .analyze_and_record(
                        Input::Bytes(bytes),
                        &name,
                        "folder",
                        Some(&key),
                        Trigger::Folder,
                        None,
                    )
                    .map(|_| ()),
                Err(e) => self.record_failure(
                    &name,
                    "folder",
                    Some(&key),
                    Trigger::Folder,
                    format!("cannot read ({e})"),
                ),
            };
            let folder = self.folder.as_mut()?;
            match recorded {
                Ok(()) => {
                    folder.seen.insert(key);
                }
                Err(e) if self.once => {
                    // A single pass: the next run tries it again.
                    log::error!("{}: {e}; left for the next run", path.display());
                    folder.seen.insert(key);
                }
                Err(e) => {
                    log::error!("{}: {e}; retrying in 30 s", path.display());
                    folder
                        .retry_at
                        .insert(key, Instant::now() + Duration::from_secs(30));
                }
            }
        }
        Some(false)
    }

    fn capture_job(&mut self, job: Job) {
        let answer = self.capture(job.trigger, &job.request);
        let _ = job.reply.send(answer);
    }

    fn capture(&mut self, trigger: Trigger, request: &CaptureRequest) -> Value {
        let context = request.context();
        let result = if let Some(file) = &request.file {
            let name = file
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            match fs::read(file) {
                Ok(bytes) => self.analyze_and_record(
                    Input::Bytes(bytes),
                    &name,
                    "file",
                    None,
                    trigger,
                    context,
                ),
                Err(e) => Err(format!("{}: cannot read ({e})", file.display())),
            }
        } else {
            match self.grab_frame() {
                Ok(frame) => self.analyze_and_record(
                    Input::Frame(frame),
                    "camera",
                    "camera",
                    None,
                    trigger,
                    context,
                ),
                Err(e) => Err(e),
            }
        };
        match result {
            Ok(v) => v,
            Err(e) => {
                log::warn!("capture ({}): {e}", trigger.as_str());
                self.set_status(|s| s.last_error = Some(e.clone()));
                json!({"ok": false, "error": e})
            }
        }
    }

    fn grab_frame(&mut self) -> Result<Frame, String> {
        let config = self.config.clone();
        let Some(link) = self.camera.as_mut() else {
            return Err(
                "no camera: source is not \"camera\"; send a file on the local socket".into(),
            );
        };
        if link.camera.is_none() {
            open_camera(&config, link);
        }
        let Some(camera) = link.camera.as_mut() else {
            return Err(format!(
                "camera {} unavailable: {}",
                config.camera.device.display(),
                link.last_error.as_deref().unwrap_or("not connected")
            ));
        };
        match camera.fresh_frame() {
            Ok(f) => Ok(f),
            Err(e) => {
                let msg = e.to_string();
                if e.is_device_lost() {
                    lose_camera(link, &msg);
                }
                Err(msg)
            }
        }
    }

    fn keep_camera(&mut self) {
        let config = self.config.clone();
        if let Some(link) = self.camera.as_mut() {
            if link.camera.is_none() && link.reconnect.ready(Instant::now()) {
                open_camera(&config, link);
                let desc = link.camera.as_ref().map(Camera::description);
                let err = link.last_error.clone();
                self.set_status(|s| {
                    s.camera = desc;
                    s.last_error = err.or(s.last_error.take());
                });
            }
        }
    }

    fn auto_capture_live(&self) -> bool {
        self.config.auto_capture.enabled && self.camera.as_ref().is_some_and(|l| l.camera.is_some())
    }

    /// Watch the live stream; fire when `stable_frames` frames in a row are sharp, well
    /// exposed and still. The analysis decides whether a lesion is in view: a frame without
    /// one is not stored.
    fn auto_capture(&mut self) {
        if !self.auto_capture_live() {
            return;
        }
        let a = self.config.auto_capture.clone();
        let Some(link) = self.camera.as_mut() else {
            return;
        };
        let Some(camera) = link.camera.as_mut() else {
            return;
        };
        let frame = match camera.next_frame() {
            Ok(f) => f,
            Err(e) => {
                let msg = e.to_string();
                if e.is_device_lost() {
                    lose_camera(link, &msg);
                }
                return;
            }
        };
        // The analysis's own frame checks (pipeline::Analyzer::judge_frame): one gate.
        let (work, _, frame_reasons) = self.analyzer.judge_frame(&frame.rgb);
        let thumb = image::imageops::grayscale(&image::imageops::thumbnail(&work, 64, 48));
        let motion = link
            .last_thumb
            .as_ref()
            .map_or(255.0, |prev| mean_abs_diff(prev, &thumb));
        link.last_thumb = Some(thumb);
        let good = frame_reasons.is_empty() && motion <= a.max_motion;
        link.still_frames = if good { link.still_frames + 1 } else { 0 };
        if link.still_frames < a.stable_frames || Instant::now() < link.quiet_until {
            return;
        }
        link.still_frames = 0;
        link.quiet_until = Instant::now() + Duration::from_secs(a.cooldown_s);
        match self.analyze_and_record(
            Input::Frame(frame),
            "camera",
            "camera",
            None,
            Trigger::Auto,
            None,
        ) {
            Ok(_) => {}
            Err(e) => log::warn!("auto capture: {e}"),
        }
    }

    fn retention(&mut self) {
        if Instant::now() < self.next_retention {
            return;
        }
        self.next_retention = Instant::now() + Duration::from_secs(600);
        let s = &self.config.storage;
        let age =
            (s.max_image_age_days > 0).then(|| Duration::from_secs(s.max_image_age_days * 86_400));
        let bytes = (s.max_image_mb > 0).then(|| s.max_image_mb * 1_048_576);
        match self.store.apply_retention(age, bytes) {
            Ok(0) => {}
            Ok(n) => log::info!("retention: deleted the images of {n} captures (results kept)"),
            Err(e) => log::error!("retention: {e}"),
        }
    }

    fn record_failure(
        &mut self,
        name: &str,
        source: &str,
        key: Option<&str>,
        trigger: Trigger,
        error: String,
    ) -> Result<(), String> {
        log::warn!("{name}: {error}");
        let row = CaptureRow {
            id: uuid::Uuid::now_v7().to_string(),
            captured_at: now_rfc3339(),
            source: source.into(),
            source_key: key.map(Into::into),
            trigger: trigger.as_str().into(),
            error: Some(error),
            ..Default::default()
        };
        self.store
            .record(&row, None)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Analyze, save the images, record capture + result + outbox in one transaction, wake
    /// the publisher. An input that cannot be analyzed is recorded with its error (Ok with
    /// `ok: false`); Err means nothing could be recorded.
    fn analyze_and_record(
        &mut self,
        input: Input,
        name: &str,
        source: &str,
        key: Option<&str>,
        trigger: Trigger,
        context: Option<Value>,
    ) -> Result<Value, String> {
        let captured_at = now_rfc3339();
        let id = uuid::Uuid::now_v7().to_string();
        let analyzed = match &input {
            Input::Bytes(bytes) => self.analyzer.analyze_bytes(bytes, name).map(|(_, a)| a),
            Input::Frame(frame) => {
                self.analyzer
                    .analyze_frame(&frame.rgb, name, Timings::default())
            }
        };
        let analysis = match analyzed {
            Ok(a) => a,
            Err(e) => {
                let msg = e.to_string();
                // Recorded (so a folder file is not retried); the trigger hears why.
                self.record_failure(name, source, key, trigger, msg.clone())?;
                return Ok(json!({"ok": false, "error": format!("{name}: {msg}")}));
            }
        };
        // Auto capture fires on sharp, still frames; only the analysis can say whether a
        // lesion is in view, and a frame without one (or not a dermoscopic view at all: the
        // lens cap, the desk) is not worth keeping.
        let reasons = &analysis.recapture_reasons;
        if trigger == Trigger::Auto
            && (reasons.contains(&Reason::NoLesion) || reasons.contains(&Reason::NotDermoscopic))
        {
            log::debug!("auto capture: no lesion in a dermoscopic view; not stored");
            return Ok(json!({"ok": false, "error": "no lesion in view"}));
        }
        let (image_bytes, media_type) = match input {
            Input::Bytes(b) => {
                let png = b.starts_with(b"\x89PNG");
                (b, if png { "image/png" } else { "image/jpeg" })
            }
            Input::Frame(f) => match f.jpeg {
                // Cameras may leave out the Huffman tables: store a JPEG any viewer opens.
                Some(j) => match crate::capture::jpeg_with_huffman_tables(&j) {
                    Ok(fixed) => (fixed.into_owned(), "image/jpeg"),
                    Err(_) => (j, "image/jpeg"),
                },
                None => (encode_jpeg(&f.rgb)?, "image/jpeg"),
            },
        };
        let mut row = CaptureRow {
            id: id.clone(),
            captured_at: captured_at.clone(),
            source: source.into(),
            source_key: key.map(Into::into),
            trigger: trigger.as_str().into(),
            context: context.as_ref().map(Value::to_string),
            ..Default::default()
        };
        if self.config.storage.keep_images {
            let ext = if media_type == "image/png" {
                "png"
            } else {
                "jpg"
            };
            match self.store.save_file(&format!("{id}.{ext}"), &image_bytes) {
                Ok(f) => row.image = Some(f),
                Err(e) => {
                    log::error!("{name}: image not saved ({e}); recording the result without it")
                }
            }
            let mut mask = Vec::new();
            let encoded = image::codecs::png::PngEncoder::new(&mut mask);
            if image::ImageEncoder::write_image(
                encoded,
                analysis.mask.as_raw(),
                analysis.mask.width(),
                analysis.mask.height(),
                image::ExtendedColorType::L8,
            )
            .is_ok()
            {
                match self.store.save_file(&format!("{id}.mask.png"), &mask) {
                    Ok(f) => row.mask = Some(f),
                    Err(e) => {
                        log::error!("{name}: mask not saved ({e}); recording the result without it")
                    }
                }
            }
        }
        let image_sha = match &row.image {
            Some(saved) => saved.sha256.clone(),
            None => crate::model::sha256_hex(&image_bytes),
        };
        let message = crate::message::result_message(&crate::message::MessageParts {
            id: &id,
            device_id: &self.config.device_id,
            captured_at: &captured_at,
            source,
            trigger: trigger.as_str(),
            context: context.as_ref(),
            image_sha256: &image_sha,
            media_type,
            stored: row.image.is_some(),
            image: self.config.mqtt.include_image.then_some(&image_bytes[..]),
            analysis: &analysis,
        });
        let result = ResultRow {
            status: if analysis.status == Status::Ok {
                "ok"
            } else {
                "recapture"
            }
            .into(),
            top_class: analysis
                .classification
                .as_ref()
                .map(|c| c.top_class.to_string()),
            melanoma_flag: analysis.classification.as_ref().map(|c| c.melanoma_flag),
            message,
        };
        if let Err(e) = self.store.record(&row, Some(&result)) {
            // The files have no row: remove them so they do not count against the disk.
            for f in [&row.image, &row.mask].into_iter().flatten() {
                let _ = fs::remove_file(&f.path);
            }
            return Err(e.to_string());
        }
        self.outbox.notify_one();
        log::info!("{} (id {id})", crate::pipeline::summary(&analysis));
        self.set_status(|s| s.last_result = Some(id.clone()));
        Ok(outcome_json(&id, &analysis))
    }
}

enum Input {
    Bytes(Vec<u8>),
    Frame(Frame),
}

fn encode_jpeg(rgb: &RgbImage) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95)
        .encode_image(rgb)
        .map_err(|e| format!("cannot encode the camera frame ({e})"))?;
    Ok(out)
}

fn mean_abs_diff(a: &GrayImage, b: &GrayImage) -> f32 {
    if a.dimensions() != b.dimensions() {
        return 255.0;
    }
    let n = a.as_raw().len().max(1) as f32;
    let sum: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| u64::from(x.abs_diff(*y)))
        .sum();
    sum as f32 / n
}

fn open_camera(config: &Config, link: &mut CameraLink) {
    match Camera::open(&config.camera) {
        Ok(cam) => {
            log::info!("camera: {}", cam.description());
            link.reconnect.on_success();
            link.camera = Some(cam);
            link.last_error = None;
        }
        Err(e) => {
            let msg = e.to_string();
            if link.last_error.as_deref() != Some(msg.as_str()) {
                log::warn!("camera: {msg}");
            }
            link.reconnect.on_failure(Instant::now());
            link.last_error = Some(msg);
        }
    }
}

fn lose_camera(link: &mut CameraLink, why: &str) {
    log::warn!("camera lost ({why}); reconnecting");
    link.camera = None;
    link.last_thumb = None;
    link.still_frames = 0;
    link.reconnect.on_failure(Instant::now());
    link.last_error = Some(why.to_string());
}

/// `dermaedge capture`/`status`: send one request to a running daemon's control socket.
pub fn control(socket: &Path, request: &Value, wait: Duration) -> Result<Value, String> {
    use std::io::{BufRead, Write};
    let stream = std::os::unix::net::UnixStream::connect(socket).map_err(|e| {
        format!(
            "{}: cannot connect ({e}); is `dermaedge run` running, and is this its `socket`?",
            socket.display()
        )
    })?;
    stream
        .set_read_timeout(Some(wait))
        .map_err(|e| e.to_string())?;
    let mut writer = &stream;
    writeln!(writer, "{request}").map_err(|e| format!("{}: {e}", socket.display()))?;
    let mut line = String::new();
    std::io::BufReader::new(&stream)
        .read_line(&mut line)
        .map_err(|e| format!("{}: no answer ({e})", socket.display()))?;
    serde_json::from_str(&line).map_err(|e| format!("{}: bad answer ({e})", socket.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_requests_are_checked() {
        let r =
            CaptureRequest::parse(br#"{"lesion_id":"L7","age":54,"sex":"female"}"#, false).unwrap();
        assert_eq!(r.lesion_id.as_deref(), Some("L7"));
        assert_eq!(r.context().unwrap()["sex"], "female");
        assert_eq!(
            CaptureRequest::parse(b"", false).unwrap(),
            CaptureRequest::default()
        );
        assert!(CaptureRequest::default().context().is_none());
        for (body, word) in [
            (&br#"{"name":"Jane Doe"}"#[..], "unknown field `name`"),
            (br#"{"age":500}"#, "age"),
            (br#"{"sex":"x"}"#, "sex"),
            (br#"{"lesion_id":""}"#, "lesion_id"),
            (br#"{"file":"/etc/shadow"}"#, "local"),
            (br#"{"#, "invalid"),
            (b"\xff\xfe", "UTF-8"),
        ] {
            let e = CaptureRequest::parse(body, false).unwrap_err();
            assert!(e.contains(word), "{e}");
        }
        assert!(CaptureRequest::parse(br#"{"file":"/tmp/x.jpg"}"#, true).is_ok());
    }

    #[test]
    fn folder_scan_takes_settled_image_files_once() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.jpg"), b"x").unwrap();
        fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        fs::write(dir.path().join(".hidden.jpg"), b"x").unwrap();
        let mut w = FolderWatch {
            path: dir.path().into(),
            every: Duration::ZERO,
            next_scan: Instant::now(),
            seen: HashSet::new(),
            sizes: HashMap::new(),
            retry_at: HashMap::new(),
            warned: false,
        };
        // New file: not yet (it may still be growing); unchanged at the next scan: ready.
        assert!(w.scan().is_empty());
        let ready = w.scan();
        assert_eq!(ready.len(), 1);
        w.seen.insert(ready[0].1.clone());
        assert!(w.scan().is_empty());
        // Rewritten with other content: a new file.
        fs::write(dir.path().join("a.jpg"), b"xyz").unwrap();
        w.scan();
        assert_eq!(w.scan().len(), 1);
    }

    #[test]
    fn motion_is_mean_absolute_difference() {
        let a = GrayImage::from_pixel(4, 4, image::Luma([10]));
        let b = GrayImage::from_pixel(4, 4, image::Luma([14]));
        assert_eq!(mean_abs_diff(&a, &b), 4.0);
        assert_eq!(mean_abs_diff(&a, &GrayImage::new(2, 2)), 255.0);
    }
}
