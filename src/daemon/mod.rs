//! `dermaedge run`: the service. Wires the worker (capture + analysis + storage, on its own
//! thread), the publisher (MQTT), the local control socket, systemd notifications and the
//! shutdown sequence.
//!
//! Shutdown, on SIGTERM or SIGINT: triggers stop being accepted, the worker finishes the
//! capture in hand and records it, the publisher delivers what it can for a few seconds, says
//! `offline` and disconnects, and the process exits 0. Everything not yet delivered stays in the
//! outbox for the next start.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{oneshot, watch, Notify};

use crate::config::Config;
use crate::control::{Commands, Job, Link, WorkerStatus};
use crate::mqtt::{self as publish, Publisher};
use crate::pipeline::Analyzer;
use crate::store::Store;

mod folder;
mod worker;

use worker::*;

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
