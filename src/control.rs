//! The command protocol shared by the MQTT and socket front ends: what a capture request may
//! carry (no names), what asked for it, and `Commands`, which turns a named command and its JSON
//! body into a job for the worker or a `status` answer. The transports (publish.rs, the socket
//! server in daemon.rs) only move bytes; the answers are decided here.

use std::path::PathBuf;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{oneshot, watch};

use crate::store::Store;

/// The MQTT connection as the rest of the daemon sees it (for `status` answers and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Link {
    Disabled,
    Connecting,
    Connected,
}

/// Patient-side context a capture trigger may carry. No names: unknown keys are refused.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureRequest {
    /// Echoed in the reply so a dashboard can match it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lesion_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_site: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sex: Option<Sex>,
    /// Analyze this file instead of a camera frame (local socket only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sex {
    Female,
    Male,
    Other,
    Unknown,
}

impl CaptureRequest {
    /// Parse a command body (empty: no context) and check its values.
    pub fn parse(body: &[u8], local: bool) -> Result<CaptureRequest, String> {
        let body = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8".to_string())?;
        let r: CaptureRequest = if body.trim().is_empty() {
            CaptureRequest::default()
        } else {
            // The path names the key at fault (serde's enum errors do not).
            serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(body))
                .map_err(|e| match e.path().to_string().as_str() {
                    "." => format!("invalid capture request: {}", e.inner()),
                    path => format!("invalid capture request: {path}: {}", e.inner()),
                })?
        };
        for (key, v) in [
            ("request_id", &r.request_id),
            ("lesion_id", &r.lesion_id),
            ("body_site", &r.body_site),
        ] {
            if let Some(v) = v {
                if v.is_empty() || v.len() > 64 || v.chars().any(char::is_control) {
                    return Err(format!(
                        "{key}: must be 1-64 characters without control characters"
                    ));
                }
            }
        }
        if r.age.is_some_and(|a| a > 130) {
            return Err("age: must be 0-130 years".into());
        }
        if r.file.is_some() && !local {
            return Err("file: accepted only on the local control socket".into());
        }
        Ok(r)
    }

    /// The context stored and published with the result (never the file path).
    pub(crate) fn context(&self) -> Option<Value> {
        let v = json!({
            "lesion_id": self.lesion_id,
            "body_site": self.body_site,
            "age": self.age,
            "sex": self.sex,
        });
        let any = self.lesion_id.is_some()
            || self.body_site.is_some()
            || self.age.is_some()
            || self.sex.is_some();
        any.then_some(v)
    }
}

/// What asked for a capture (stored and published by its serde name, see [`crate::wire`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Mqtt,
    Socket,
    Auto,
    Folder,
}

/// One capture for the worker, and where its answer goes.
pub(crate) struct Job {
    pub trigger: Trigger,
    pub request: CaptureRequest,
    pub reply: oneshot::Sender<Value>,
}

/// What the worker reports for `status` answers.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WorkerStatus {
    pub source: String,
    pub camera: Option<String>,
    pub last_result: Option<String>,
    pub last_error: Option<String>,
}

/// Command handling shared by the MQTT and socket front ends.
#[derive(Clone)]
pub struct Commands {
    pub(crate) jobs: SyncSender<Job>,
    pub(crate) queue: usize,
    pub(crate) max_bytes: usize,
    pub(crate) status: Arc<Mutex<WorkerStatus>>,
    pub(crate) link: watch::Receiver<Link>,
    pub(crate) database: PathBuf,
    pub(crate) device_id: String,
}

impl Commands {
    /// Run command `name` with JSON `body`; the answer always has `ok` and, on failure,
    /// `error`. Remote (MQTT) callers may not name local files.
    pub async fn handle(&self, name: &str, body: &[u8]) -> Value {
        self.handle_from(name, body, false).await
    }

    pub(crate) async fn handle_from(&self, name: &str, body: &[u8], local: bool) -> Value {
        if body.len() > self.max_bytes {
            return json!({"ok": false, "error": format!(
                "the command body has {} bytes; at most {} (mqtt.max_command_bytes)",
                body.len(), self.max_bytes)});
        }
        match name {
            "capture" => self.capture(body, local).await,
            "status" => self.status(),
            other => json!({"ok": false, "error": format!(
                "unknown command {other:?}; known: capture, status")}),
        }
    }

    async fn capture(&self, body: &[u8], local: bool) -> Value {
        let request = match CaptureRequest::parse(body, local) {
            Ok(r) => r,
            Err(e) => return json!({"ok": false, "error": e}),
        };
        let request_id = request.request_id.clone();
        let (reply, answer) = oneshot::channel();
        let trigger = if local {
            Trigger::Socket
        } else {
            Trigger::Mqtt
        };
        let job = Job {
            trigger,
            request,
            reply,
        };
        let mut v = match self.jobs.try_send(job) {
            Ok(()) => answer.await.unwrap_or_else(
                |_| json!({"ok": false, "error": "the daemon is stopping; capture not taken"}),
            ),
            Err(TrySendError::Full(_)) => json!({"ok": false, "error": format!(
                "busy: {} captures are already waiting; try again shortly", self.queue)}),
            Err(TrySendError::Disconnected(_)) => {
                json!({"ok": false, "error": "the daemon is stopping; capture not taken"})
            }
        };
        if let Some(id) = request_id {
            v["request_id"] = json!(id);
        }
        v
    }

    fn status(&self) -> Value {
        let w = self.status.lock().map(|s| s.clone()).unwrap_or_default();
        let counts = Store::open_read_only(&self.database).and_then(|s| s.counts());
        let mut v = json!({
            "ok": true,
            "device_id": self.device_id,
            "version": env!("CARGO_PKG_VERSION"),
            "worker": w,
            "mqtt": *self.link.borrow(),
        });
        if let Ok((captures, results, pending)) = counts {
            v["captures"] = json!(captures);
            v["results"] = json!(results);
            v["undelivered"] = json!(pending);
        }
        v
    }
}
