//! The local control socket: one JSON line per connection, `{"command": "capture", ...body}`,
//! one JSON [`Reply`] line back. The server side runs inside `dermaedge run`; [`request`] is
//! the client side of `dermaedge capture` and `dermaedge status`. The socket is made 0600, so
//! only the daemon's user (and root) can ask it for anything, which is why it, unlike MQTT,
//! may name a local file to analyze.

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::watch;

use super::{CaptureRequest, Commands, Reply};

/// One request line: the command's name and, for `capture`, its body (unset keys left out).
#[derive(Debug, Serialize)]
pub struct Request {
    pub command: &'static str,
    #[serde(flatten)]
    pub capture: CaptureRequest,
}

impl Request {
    pub fn capture(capture: CaptureRequest) -> Request {
        Request {
            command: "capture",
            capture,
        }
    }

    pub fn status() -> Request {
        Request {
            command: "status",
            capture: CaptureRequest::default(),
        }
    }
}

/// How long a client has to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Listen at `path`, refusing to take over a socket another daemon answers on.
pub fn bind(path: &Path) -> Result<UnixListener, String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir)
            .map_err(|e| format!("socket: {}: cannot create the folder ({e})", dir.display()))?;
    }
    // A socket left by a killed daemon: nobody answers on it, so it can go. Anything else at
    // the path (a file, a folder, a link) is not ours to delete.
    if let Ok(meta) = fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(format!(
                "socket: {}: something that is not a socket is in the way; move it or set another `socket` path",
                path.display()
            ));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(format!(
                "socket: {}: another dermaedge is running with this socket; stop it or set another path",
                path.display()
            ));
        }
        let _ = fs::remove_file(path);
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| format!("socket: {}: cannot listen ({e})", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("socket: {}: cannot make it private ({e})", path.display()))?;
    Ok(listener)
}

/// Answer connections until `shutdown` changes.
pub async fn serve(
    listener: UnixListener,
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
            let mut reader = BufReader::new(read.take(limit));
            // A client that connects and says nothing must not hold a task forever.
            let reading = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line));
            let answer = match reading.await {
                Err(_) => Reply::error(format!(
                    "no request line within {} s",
                    REQUEST_TIMEOUT.as_secs()
                )),
                Ok(Err(e)) => Reply::error(format!("cannot read the request ({e})")),
                Ok(Ok(_)) if !line.ends_with('\n') && line.len() as u64 >= limit => {
                    Reply::error(format!("the request is over {limit} bytes"))
                }
                Ok(Ok(_)) => answer_line(&commands, &line).await,
            };
            let _ = write.write_all(format!("{answer}\n").as_bytes()).await;
        });
    }
}

/// The request line's `command` names the command; the other keys are its body.
async fn answer_line(commands: &Commands, line: &str) -> Reply {
    let mut obj = match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(o)) => o,
        Ok(_) => return Reply::error("the request must be a JSON object"),
        Err(e) => return Reply::error(format!("invalid request JSON: {e}")),
    };
    let Some(Value::String(name)) = obj.remove("command") else {
        return Reply::error("the request needs \"command\": \"capture\" or \"status\"");
    };
    let body = Value::Object(obj).to_string();
    commands.handle_from(&name, body.as_bytes(), true).await
}

/// `dermaedge capture`/`status`: send one request to a running daemon's control socket and
/// return its answer as JSON (printed as it came).
pub fn request(socket: &Path, request: &Request, wait: Duration) -> Result<Value, String> {
    use std::io::{BufRead, Write};
    let stream = std::os::unix::net::UnixStream::connect(socket).map_err(|e| {
        format!(
            "{}: cannot connect ({e}); is `dermaedge run` running, and is this its `socket`?",
            socket.display()
        )
    })?;
    stream
        .set_read_timeout(Some(wait))
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    let mut writer = &stream;
    let line = serde_json::to_string(request).map_err(|e| format!("{}: {e}", socket.display()))?;
    writeln!(writer, "{line}").map_err(|e| format!("{}: {e}", socket.display()))?;
    let mut line = String::new();
    std::io::BufReader::new(&stream)
        .read_line(&mut line)
        .map_err(|e| format!("{}: no answer ({e})", socket.display()))?;
    serde_json::from_str(&line).map_err(|e| format!("{}: bad answer ({e})", socket.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bind_replaces_a_dead_socket_but_never_deletes_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        fs::write(&path, b"notes").unwrap();
        let e = bind(&path).unwrap_err();
        assert!(e.contains("not a socket"), "{e}");
        assert_eq!(fs::read(&path).unwrap(), b"notes");

        fs::remove_file(&path).unwrap();
        drop(bind(&path).unwrap()); // a killed daemon's socket file stays behind
        assert!(fs::symlink_metadata(&path).unwrap().file_type().is_socket());
        let live = bind(&path).unwrap();
        let e = bind(&path).unwrap_err();
        assert!(e.contains("another dermaedge"), "{e}");
        drop(live);
    }
}
