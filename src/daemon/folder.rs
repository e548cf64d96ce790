//! The watched folder: which files are images, which are new, and when one is finished
//! being written (its size and time stopped changing); and how an input file is read.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// Read an input image (a watched-folder file, `capture --file`): a regular file of at most
/// `max_bytes`, opened without following a link and without blocking, so that what sits at
/// the path when it is opened (it may have been swapped since the scan) cannot be a FIFO that
/// blocks the worker, a device that never ends (`/dev/zero`) or a link to somewhere else.
pub(crate) fn read_regular_file(path: &Path, max_bytes: u64) -> Result<Vec<u8>, String> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => "a symbolic link; only regular files are analyzed".to_string(),
            _ => format!("cannot read ({e})"),
        })?;
    let meta = file.metadata().map_err(|e| format!("cannot read ({e})"))?;
    if !meta.is_file() {
        return Err(
            "not a regular file (a FIFO, a device or a folder); only regular files are analyzed"
                .into(),
        );
    }
    let too_big = |len: u64| {
        format!(
            "{:.1} MB, over analysis.max_file_mb ({} MB)",
            len as f64 / 1e6,
            max_bytes / 1_000_000
        )
    };
    if meta.len() > max_bytes {
        return Err(too_big(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read ({e})"))?;
    // Still being written when it was opened: no more than the limit is ever held.
    if bytes.len() as u64 > max_bytes {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(bytes)
}

pub(crate) struct FolderWatch {
    pub(crate) path: PathBuf,
    pub(crate) every: Duration,
    pub(crate) next_scan: Instant,
    pub(crate) seen: HashSet<String>,
    pub(crate) sizes: HashMap<PathBuf, String>,
    /// Files whose capture could not be recorded (disk full...): retried after a pause.
    pub(crate) retry_at: HashMap<String, Instant>,
    pub(crate) warned: bool,
}

pub(crate) fn is_image_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    !name.starts_with('.')
        && [".jpg", ".jpeg", ".png"]
            .iter()
            .any(|ext| lower.ends_with(ext))
}

impl FolderWatch {
    /// Files ready to analyze now, by name.
    pub(crate) fn scan(&mut self) -> Vec<(PathBuf, String)> {
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
