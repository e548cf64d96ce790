//! `dermaedge run`: the service. Wires the worker (capture + analysis + storage, on its own
//! thread), the publisher (MQTT), the local control socket, systemd notifications and the
//! shutdown sequence.
//!
//! Shutdown, on SIGTERM or SIGINT: triggers stop being accepted, the worker finishes the
//! capture in hand and records it, the publisher delivers what it can for a few seconds, says
//! `offline` and disconnects, and the process exits 0. Everything not yet delivered stays in the
//! outbox for the next start.

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch, Notify};

use crate::config::Config;
use crate::control::{socket, Commands, Job, Link, WorkerStatus};
use crate::model::ModelError;
use crate::mqtt::{self, Publisher};
use crate::pipeline::Analyzer;
use crate::store::{Store, StoreError};

mod folder;
mod worker;

use worker::*;

/// Why the service cannot start or had to stop. The lower layers' errors pass through with
/// their own message (they name the file or key at fault); the rest say what the service was
/// doing when it failed.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{0}")]
    Service(String),
}

impl From<String> for DaemonError {
    fn from(message: String) -> DaemonError {
        DaemonError::Service(message)
    }
}

/// Options of `dermaedge run` beyond the config file.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Folder source: stop when every file present has been analyzed (and, with a broker,
    /// delivered), instead of watching for more.
    pub once: bool,
}

/// Run the service until SIGTERM/SIGINT (or, with `once`, until the folder is done).
pub fn run(config: Config, options: RunOptions) -> Result<(), DaemonError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime ({e})"))?;
    runtime.block_on(serve(Arc::new(config), options))
}

/// Start-up in order (MQTT secrets and TLS settings, database, models, worker, MQTT and socket front ends),
/// READY, then the shutdown sequence of the module comment.
async fn serve(config: Arc<Config>, options: RunOptions) -> Result<(), DaemonError> {
    let started = Instant::now();
    // Secrets and certificates are read once, here: a bad one stops the start by its key.
    let credentials = mqtt::Credentials::load(&config)?;
    mqtt::warn_if_insecure(&config);
    crate::model::set_threads(config.threads);
    let outbox = Arc::new(Notify::new());
    let (link_tx, link_rx) = watch::channel(if config.mqtt.host.is_some() {
        Link::Connecting
    } else {
        Link::Disabled
    });
    let (worker, ready, commands) = start_worker(&config, options, outbox.clone(), link_rx).await?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let wiring = mqtt::Wiring {
        outbox,
        commands: commands.clone(),
        link: link_tx,
        shutdown: shutdown_rx.clone(),
    };
    let publisher = start_publisher(&config, credentials, options, wiring)?;
    let socket = start_socket(&config, commands, shutdown_rx)?;

    log::info!("ready in {} ms: {ready}", started.elapsed().as_millis());
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&ready),
    ]);

    let worker_result = stop_worker(worker).await?;
    let _ = shutdown_tx.send(true);
    if let Some(p) = publisher {
        let _ = p.await;
    }
    if let Some(s) = socket {
        let _ = s.await;
        let _ = fs::remove_file(&config.socket);
    }
    log::info!("stopped: {}", store_summary(&config.database_path()));
    match worker_result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(DaemonError::Service("the worker thread failed".into())),
    }
}

/// The worker thread and the flag that asks it to stop.
struct RunningWorker {
    thread: std::thread::JoinHandle<Result<(), DaemonError>>,
    stop: Arc<AtomicBool>,
}

/// Open the database and the models, start the worker thread and wait until it is ready
/// (its description of what it runs comes back for READY); the commands feed it.
async fn start_worker(
    config: &Arc<Config>,
    options: RunOptions,
    outbox: Arc<Notify>,
    link: watch::Receiver<Link>,
) -> Result<(RunningWorker, String, Commands), DaemonError> {
    let db = config.database_path();
    let store = Store::open(&db, &config.images_dir())?;
    let analyzer = Analyzer::load(&config.models, config.precision, config.analysis_config())?;
    let (jobs_tx, jobs_rx) = sync_channel::<Job>(config.queue);
    let stop = Arc::new(AtomicBool::new(false));
    let status = Arc::new(Mutex::new(WorkerStatus::default()));
    let (ready_tx, ready_rx) = oneshot::channel::<String>();
    let worker = Worker::new(
        config.clone(),
        analyzer,
        store,
        outbox,
        stop.clone(),
        status.clone(),
        options.once,
    );
    let thread = std::thread::Builder::new()
        .name("worker".into())
        .spawn(move || worker.run(jobs_rx, ready_tx))
        .map_err(|e| format!("cannot start the worker thread ({e})"))?;
    let Ok(ready) = ready_rx.await else {
        return match thread.join() {
            Ok(Err(e)) => Err(e),
            _ => Err(DaemonError::Service(
                "the worker stopped during start-up".into(),
            )),
        };
    };
    let commands = Commands {
        jobs: jobs_tx,
        queue: config.queue,
        max_bytes: config.mqtt.max_command_bytes,
        remote_captures: Arc::new(Mutex::new(crate::control::CaptureRate::new(
            config.mqtt.max_captures_per_minute,
        ))),
        status,
        link,
        database: db,
        device_id: config.device_id.clone(),
    };
    Ok((RunningWorker { thread, stop }, ready, commands))
}

/// The MQTT publisher on its own store connection, when a broker is configured. With `once`
/// it gets a minute to deliver what the folder run produced.
fn start_publisher(
    config: &Arc<Config>,
    credentials: mqtt::Credentials,
    options: RunOptions,
    wiring: mqtt::Wiring,
) -> Result<Option<tokio::task::JoinHandle<()>>, DaemonError> {
    if config.mqtt.host.is_none() {
        return Ok(None);
    }
    let store = Store::open(&config.database_path(), &config.images_dir())?;
    store.relax_durability()?;
    let flush = Duration::from_secs(if options.once { 60 } else { 5 });
    let p = Publisher::new(config.clone(), credentials, store, wiring, flush);
    Ok(Some(tokio::spawn(p.run())))
}

/// The control socket, unless `socket` is empty. Takes the last `Commands`: once the socket
/// and the publisher are gone, the worker's job queue closes.
fn start_socket(
    config: &Config,
    commands: Commands,
    shutdown: watch::Receiver<bool>,
) -> Result<Option<tokio::task::JoinHandle<()>>, DaemonError> {
    if config.socket.as_os_str().is_empty() {
        return Ok(None);
    }
    let listener = socket::bind(&config.socket)?;
    Ok(Some(tokio::spawn(socket::serve(
        listener, commands, shutdown,
    ))))
}

/// Wait for the worker to end (`once`) or for SIGTERM/SIGINT; then ask it to stop and wait
/// for the capture in hand to be recorded.
async fn stop_worker(
    worker: RunningWorker,
) -> Result<std::thread::Result<Result<(), DaemonError>>, DaemonError> {
    let RunningWorker { thread, stop } = worker;
    let done = tokio::task::spawn_blocking(move || thread.join());
    tokio::pin!(done);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot watch SIGTERM ({e})"))?;
    let ended = tokio::select! {
        r = &mut done => Some(r),
        _ = sigterm.recv() => None,
        _ = tokio::signal::ctrl_c() => None,
    };
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    stop.store(true, Ordering::SeqCst);
    let joined = match ended {
        Some(r) => r,
        None => {
            log::info!("stopping: finishing the capture in hand");
            done.await
        }
    };
    // A failed join (the blocking task itself lost) reads as a failed worker thread.
    Ok(joined.unwrap_or_else(|e| Err(Box::new(e))))
}

/// What the database holds, for the last log line.
fn store_summary(db: &Path) -> String {
    Store::open_read_only(db)
        .and_then(|s| s.counts())
        .map(|(c, r, p)| {
            format!(
                "{c} captures, {r} results in {} ({p} not yet delivered)",
                db.display()
            )
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::folder::*;
    use super::*;
    use crate::control::CaptureRequest;
    use image::GrayImage;
    use std::collections::{HashMap, HashSet};

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
    fn input_files_are_regular_bounded_and_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("a.jpg");
        fs::write(&ok, vec![7u8; 1000]).unwrap();
        assert_eq!(read_regular_file(&ok, 1000).unwrap().len(), 1000);
        let e = read_regular_file(&ok, 999).unwrap_err();
        assert!(e.contains("analysis.max_file_mb"), "{e}");

        // A link to a device that never ends, a FIFO nobody writes: refused at once.
        let link = dir.path().join("zero.jpg");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let e = read_regular_file(&link, 1 << 20).unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");
        let fifo = dir.path().join("fifo.jpg");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            let e = read_regular_file(&fifo, 1 << 20).unwrap_err();
            assert!(e.contains("not a regular file"), "{e}");
        }
        let e = read_regular_file(dir.path(), 1 << 20).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        let e = read_regular_file(&dir.path().join("gone.jpg"), 1 << 20).unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
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
