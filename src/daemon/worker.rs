//! The worker thread: takes jobs (remote and local captures, folder files, auto capture),
//! keeps the camera link, analyzes, and records each capture, its result and its outbox row
//! in the store; applies retention.

use std::collections::HashMap;
use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use image::{GrayImage, RgbImage};
use serde_json::Value;
use tokio::sync::{oneshot, Notify};

use crate::capture::{Camera, Frame, Reconnect};
use crate::config::{Config, SourceKind};
use crate::control::{CaptureRequest, Job, Reply, Trigger, WorkerStatus};
use crate::pipeline::{Analysis, Analyzer, Reason, Status, Timings};
use crate::store::{now_rfc3339, CaptureRow, ResultRow, Store};
use crate::vision;
use crate::wire;

use super::folder::*;
use super::DaemonError;

/// The camera, opened on demand and reopened with backoff when it goes away.
pub(crate) struct CameraLink {
    pub(crate) camera: Option<Camera>,
    pub(crate) reconnect: Reconnect,
    pub(crate) last_error: Option<String>,
    /// Auto capture: consecutive good frames, the last thumbnail, cooldown.
    pub(crate) still_frames: u32,
    pub(crate) last_thumb: Option<GrayImage>,
    pub(crate) quiet_until: Instant,
}

/// Capture, analysis and storage, on one thread (inference is CPU-bound and must not block
/// the async reactor). Pings the systemd watchdog from its loop: a hung worker gets restarted.
pub(crate) struct Worker {
    pub(crate) config: Arc<Config>,
    pub(crate) analyzer: Analyzer,
    pub(crate) store: Store,
    pub(crate) outbox: Arc<Notify>,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) status: Arc<Mutex<WorkerStatus>>,
    pub(crate) once: bool,
    pub(crate) folder: Option<FolderWatch>,
    pub(crate) camera: Option<CameraLink>,
    pub(crate) next_retention: Instant,
    pub(crate) last_ping: Instant,
}

impl Worker {
    pub(crate) fn new(
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

    pub(crate) fn run(
        mut self,
        jobs: Receiver<Job>,
        ready: oneshot::Sender<String>,
    ) -> Result<(), DaemonError> {
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
            let _ = job.reply.send(Reply::stopping());
        }
        Ok(())
    }

    /// Open what the source needs; returns the description for READY.
    pub(crate) fn start(&mut self) -> Result<String, DaemonError> {
        let c = self.config.clone();
        let (captures, results, pending) = self.store.counts()?;
        match self.store.sweep_leftovers() {
            Ok(0) => {}
            Ok(n) => log::info!("removed {n} leftover image files of an earlier crash"),
            Err(e) => log::warn!("cannot sweep the image folder: {e}"),
        }
        let mut parts = vec![format!(
            "models {} + {} ({})",
            self.analyzer.segmenter.manifest.name,
            self.analyzer.classifier.manifest.name,
            c.precision
        )];
        match c.source {
            SourceKind::Folder => {
                let seen = self.store.source_keys()?;
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

    pub(crate) fn set_status(&self, f: impl FnOnce(&mut WorkerStatus)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }

    pub(crate) fn ping_watchdog(&mut self) {
        if self.last_ping.elapsed() >= Duration::from_secs(1) {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            self.last_ping = Instant::now();
        }
    }

    /// Scan the watched folder when due and analyze what is ready. Some(true): a scan found
    /// nothing left to do.
    pub(crate) fn watch_folder(&mut self) -> Option<bool> {
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
            let bytes = read_regular_file(&path, self.max_file_bytes());
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
                Err(e) => self.record_failure(&name, "folder", Some(&key), Trigger::Folder, e),
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

    pub(crate) fn capture_job(&mut self, job: Job) {
        let answer = self.capture(job.trigger, &job.request);
        let _ = job.reply.send(answer);
    }

    pub(crate) fn capture(&mut self, trigger: Trigger, request: &CaptureRequest) -> Reply {
        let context = request.context();
        let result = if let Some(file) = &request.file {
            let name = file
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            match read_regular_file(file, self.max_file_bytes()) {
                Ok(bytes) => self.analyze_and_record(
                    Input::Bytes(bytes),
                    &name,
                    "file",
                    None,
                    trigger,
                    context,
                ),
                Err(e) => Err(format!("{}: {e}", file.display()).into()),
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
                Err(e) => Err(e.into()),
            }
        };
        match result {
            Ok(v) => v,
            Err(e) => {
                let e = e.to_string();
                log::warn!("capture ({}): {e}", wire::name(&trigger));
                self.set_status(|s| s.last_error = Some(e.clone()));
                Reply::error(e)
            }
        }
    }

    fn max_file_bytes(&self) -> u64 {
        self.config.analysis.max_file_mb.saturating_mul(1_000_000)
    }

    pub(crate) fn grab_frame(&mut self) -> Result<Frame, String> {
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

    pub(crate) fn keep_camera(&mut self) {
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

    pub(crate) fn auto_capture_live(&self) -> bool {
        self.config.auto_capture.enabled && self.camera.as_ref().is_some_and(|l| l.camera.is_some())
    }

    /// Watch the live stream; fire when `stable_frames` frames in a row are sharp, well
    /// exposed and still. The analysis decides whether a lesion is in view: a frame without
    /// one is not stored.
    pub(crate) fn auto_capture(&mut self) {
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

    pub(crate) fn retention(&mut self) {
        if Instant::now() < self.next_retention {
            return;
        }
        self.next_retention = Instant::now() + Duration::from_secs(600);
        let s = &self.config.storage;
        let age =
            (s.max_image_age_days > 0).then(|| Duration::from_secs(s.max_image_age_days * 86_400));
        let bytes = (s.max_image_mb > 0).then(|| s.max_image_mb * 1_048_576);
        let floor = Duration::from_secs(s.min_image_age_hours.saturating_mul(3600));
        match self.store.apply_retention(age, bytes, floor) {
            Ok(0) => {}
            Ok(n) => log::info!("retention: deleted the images of {n} captures (results kept)"),
            Err(e) => log::error!("retention: {e}"),
        }
    }

    pub(crate) fn record_failure(
        &mut self,
        name: &str,
        source: &str,
        key: Option<&str>,
        trigger: Trigger,
        error: String,
    ) -> Result<(), DaemonError> {
        log::warn!("{name}: {error}");
        let row = CaptureRow {
            id: uuid::Uuid::now_v7().to_string(),
            captured_at: now_rfc3339(),
            source: source.into(),
            source_key: key.map(Into::into),
            trigger: wire::name(&trigger),
            clock_synced: crate::sys::clock_synchronized(),
            error: Some(error),
            ..Default::default()
        };
        self.store.record(&row, None)?;
        Ok(())
    }

    /// Analyze, save the images, record capture + result + outbox in one transaction, wake
    /// the publisher. An input that cannot be analyzed is recorded with its error (Ok with
    /// `ok: false`); Err means nothing could be recorded.
    pub(crate) fn analyze_and_record(
        &mut self,
        input: Input,
        name: &str,
        source: &str,
        key: Option<&str>,
        trigger: Trigger,
        context: Option<Value>,
    ) -> Result<Reply, DaemonError> {
        let captured_at = now_rfc3339();
        let id = uuid::Uuid::now_v7().to_string();
        // What the message calls the image: file names are often patient names.
        let label = match &input {
            Input::Bytes(_) if !self.config.mqtt.include_file_name => id.as_str(),
            _ => name,
        };
        let (decoded, analyzed) = match &input {
            Input::Bytes(bytes) => match self.analyzer.analyze_bytes(bytes, label) {
                Ok((frame, a)) => (Some(frame), Ok(a)),
                Err(e) => (None, Err(e)),
            },
            Input::Frame(frame) => (
                None,
                self.analyzer
                    .analyze_frame(&frame.rgb, label, Timings::default()),
            ),
        };
        let analysis = match analyzed {
            Ok(a) => a,
            Err(e) => {
                let msg = e.to_string();
                // Recorded (so a folder file is not retried); the trigger hears why.
                self.record_failure(name, source, key, trigger, msg.clone())?;
                return Ok(Reply::error(format!("{name}: {msg}")));
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
            return Ok(Reply::error("no lesion in view"));
        }
        let image = stored_image(input, decoded.as_ref())?;
        let mut row = CaptureRow {
            id: id.clone(),
            captured_at,
            source: source.into(),
            source_key: key.map(Into::into),
            trigger: wire::name(&trigger),
            clock_synced: crate::sys::clock_synchronized(),
            context: context.as_ref().map(Value::to_string),
            ..Default::default()
        };
        // A frame refused by the gate is kept for staff who took it on the device, not for a
        // remote trigger: a flood of bad frames must not fill the disk.
        let refused_remote = trigger == Trigger::Mqtt && analysis.status == Status::Recapture;
        if self.config.storage.keep_images && !refused_remote {
            self.save_files(&mut row, &image, &analysis.mask, name);
        }
        let result = self.result_row(&row, &image, context.as_ref(), &analysis);
        if let Err(e) = self.store.record(&row, Some(&result)) {
            // The files have no row: remove them so they do not count against the disk.
            for f in [&row.image, &row.mask].into_iter().flatten() {
                let _ = fs::remove_file(&f.path);
            }
            return Err(e.into());
        }
        self.outbox.notify_one();
        log::info!("{} (id {id})", crate::pipeline::summary(&analysis));
        self.set_status(|s| s.last_result = Some(id.clone()));
        Ok(Reply::captured(&id, &analysis))
    }

    /// Save the image and its lesion mask beside the database. A file that cannot be saved
    /// is logged and left out of the row; the result is still recorded.
    fn save_files(&self, row: &mut CaptureRow, image: &StoredImage, mask: &GrayImage, name: &str) {
        let ext = if image.media_type == "image/png" {
            "png"
        } else {
            "jpg"
        };
        match self
            .store
            .save_file(&format!("{}.{ext}", row.id), &image.bytes)
        {
            Ok(f) => row.image = Some(f),
            Err(e) => log::error!("{name}: image not saved ({e}); recording the result without it"),
        }
        match encode_mask_png(mask) {
            Ok(png) => match self.store.save_file(&format!("{}.mask.png", row.id), &png) {
                Ok(f) => row.mask = Some(f),
                Err(e) => {
                    log::error!("{name}: mask not saved ({e}); recording the result without it")
                }
            },
            Err(e) => {
                log::error!("{name}: mask not encoded ({e}); recording the result without it")
            }
        }
    }

    /// The result row: its columns and the message stored for delivery.
    fn result_row(
        &self,
        row: &CaptureRow,
        image: &StoredImage,
        context: Option<&Value>,
        analysis: &Analysis,
    ) -> ResultRow {
        let image_sha = match &row.image {
            Some(saved) => saved.sha256.clone(),
            None => wire::sha256_hex(&image.bytes),
        };
        let message = crate::message::result_message(&crate::message::MessageParts {
            id: &row.id,
            device_id: &self.config.device_id,
            captured_at: &row.captured_at,
            source: &row.source,
            trigger: &row.trigger,
            context,
            image_sha256: &image_sha,
            media_type: image.media_type,
            stored: row.image.is_some(),
            image: self.config.mqtt.include_image.then_some(&image.bytes[..]),
            analysis,
        });
        ResultRow {
            status: wire::name(&analysis.status),
            top_class: analysis
                .classification
                .as_ref()
                .map(|c| c.top_class.to_string()),
            melanoma_flag: analysis.classification.as_ref().map(|c| c.melanoma_flag),
            message,
        }
    }
}

/// The bytes stored (and published, when configured) for a capture.
struct StoredImage {
    bytes: Vec<u8>,
    media_type: &'static str,
}

/// A file is stored without its metadata (EXIF, XMP, text: see `vision::strip_metadata`),
/// pixels untouched; one that its EXIF turns, or whose structure cannot be walked, as the
/// decoded frame re-encoded. A camera frame is the camera's JPEG (made standalone: cameras
/// may leave out the Huffman tables) or, for uncompressed formats, encoded here.
fn stored_image(input: Input, decoded: Option<&RgbImage>) -> Result<StoredImage, String> {
    let (bytes, media_type) = match input {
        Input::Bytes(b) => {
            let png = b.starts_with(b"\x89PNG");
            let stripped = (!vision::turned_by_metadata(&b))
                .then(|| vision::strip_metadata(&b).ok())
                .flatten();
            match (stripped, decoded) {
                (Some(clean), _) => (clean, if png { "image/png" } else { "image/jpeg" }),
                (None, Some(frame)) => (encode_jpeg(frame)?, "image/jpeg"),
                (None, None) => return Err("no copy without metadata to store".into()),
            }
        }
        Input::Frame(f) => match f.jpeg {
            Some(j) => {
                let whole = match crate::capture::jpeg_with_huffman_tables(&j) {
                    Ok(fixed) => fixed.into_owned(),
                    Err(_) => j,
                };
                let clean = vision::strip_metadata(&whole).unwrap_or(whole);
                (clean, "image/jpeg")
            }
            None => (encode_jpeg(&f.rgb)?, "image/jpeg"),
        },
    };
    Ok(StoredImage { bytes, media_type })
}

fn encode_mask_png(mask: &GrayImage) -> Result<Vec<u8>, image::ImageError> {
    let mut png = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new(&mut png),
        mask.as_raw(),
        mask.width(),
        mask.height(),
        image::ExtendedColorType::L8,
    )?;
    Ok(png)
}

pub(crate) enum Input {
    Bytes(Vec<u8>),
    Frame(Frame),
}

pub(crate) fn encode_jpeg(rgb: &RgbImage) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95)
        .encode_image(rgb)
        .map_err(|e| format!("cannot encode the camera frame ({e})"))?;
    Ok(out)
}

pub(crate) fn mean_abs_diff(a: &GrayImage, b: &GrayImage) -> f32 {
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

pub(crate) fn open_camera(config: &Config, link: &mut CameraLink) {
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

pub(crate) fn lose_camera(link: &mut CameraLink, why: &str) {
    log::warn!("camera lost ({why}); reconnecting");
    link.camera = None;
    link.last_thumb = None;
    link.still_frames = 0;
    link.reconnect.on_failure(Instant::now());
    link.last_error = Some(why.to_string());
}
