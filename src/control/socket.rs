//! The local control socket: one JSON line per connection, `{"command": "capture", ...body}`,
//! one JSON [`Reply`] line back. The server side runs inside `dermaedge run`; [`request`] is
//! the client side of `dermaedge capture` and `dermaedge status`. The socket is made 0600, so
//! only the daemon's user (and root) can ask it for anything, which is why it, unlike MQTT,
//! may name a local file to analyze.

use std::fs;
use std::os::unix::fs::PermissionsExt;
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

/// Listen at `path`, refusing to take over a socket another daemon answers on.
pub fn bind(path: &Path) -> Result<UnixListener, String> {
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
            let answer = match BufReader::new(read.take(limit)).read_line(&mut line).await {
                Ok(_) => answer_line(&commands, &line).await,
                Err(e) => Reply::error(format!("cannot read the request ({e})")),
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
