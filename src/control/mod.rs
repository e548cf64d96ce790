//! The command protocol shared by the MQTT and socket front ends: what a capture request may
//! carry (no names), what asked for it, the [`Reply`] every command gets, and `Commands`, which
//! turns a named command and its JSON body into a job for the worker or a `status` answer. The
//! transports (the MQTT publisher, the socket in `socket.rs`) only move bytes; the answers are
//! decided here.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{oneshot, watch};

use crate::pipeline::{Analysis, Reason, Status};
use crate::store::Store;

pub mod socket;

const STOPPING: &str = "the daemon is stopping; capture not taken";

/// The answer to every command, over MQTT and the socket: `ok`, `error` when not, the
/// request's `request_id` echoed, and what the command reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(flatten)]
    pub captured: Option<Captured>,
    #[serde(flatten)]
    pub status: Option<StatusReport>,
}

/// What a capture recorded: its id and the headline of its result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Captured {
    pub id: String,
    pub status: Status,
    pub recapture_reasons: Vec<Reason>,
    pub top_class: Option<&'static str>,
    pub top_probability: Option<f32>,
    pub melanoma_flag: Option<bool>,
}

/// The `status` command's answer. Counts are left out when the database cannot be read.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusReport {
    pub device_id: String,
    pub version: &'static str,
    pub worker: WorkerStatus,
    pub mqtt: Link,
    /// Whether the kernel says the clock is synchronised (null: it cannot tell). Until it is,
    /// capture times are only as good as the clock, and age retention leaves those images.
    pub clock_synchronized: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub captures: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub results: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undelivered: Option<i64>,
}

impl Reply {
    pub fn error(message: impl Into<String>) -> Reply {
        Reply {
            error: Some(message.into()),
            ..Default::default()
        }
    }

    /// Triggers that arrive, or wait in the queue, when the daemon stops.
    pub fn stopping() -> Reply {
        Reply::error(STOPPING)
    }

    pub fn captured(id: &str, a: &Analysis) -> Reply {
        let c = a.classification.as_ref();
        Reply {
            ok: true,
            captured: Some(Captured {
                id: id.into(),
                status: a.status,
                recapture_reasons: a.recapture_reasons.clone(),
                top_class: c.map(|c| c.top_class),
                top_probability: c.map(|c| c.top_probability),
                melanoma_flag: c.map(|c| c.melanoma_flag),
            }),
            ..Default::default()
        }
    }
}

/// The JSON text sent back.
impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = serde_json::to_string(self).map_err(|_| std::fmt::Error)?;
        f.write_str(&text)
    }
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
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
    pub reply: oneshot::Sender<Reply>,
}

/// What the worker reports for `status` answers.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct WorkerStatus {
    pub source: String,
    pub camera: Option<String>,
    pub last_result: Option<String>,
    pub last_error: Option<String>,
}

/// At most `per_minute` events in any 60 s (a sliding window). Pure: the caller passes the
/// time.
#[derive(Debug, Clone)]
pub struct CaptureRate {
    per_minute: usize,
    accepted: VecDeque<Instant>,
}

impl CaptureRate {
    pub fn new(per_minute: usize) -> CaptureRate {
        CaptureRate {
            per_minute,
            accepted: VecDeque::new(),
        }
    }

    /// Take one now, or say how long until one is free.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        const WINDOW: Duration = Duration::from_secs(60);
        while self
            .accepted
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            self.accepted.pop_front();
        }
        if self.accepted.len() < self.per_minute {
            self.accepted.push_back(now);
            return Ok(());
        }
        let oldest = self.accepted.front().copied().unwrap_or(now);
        Err(WINDOW.saturating_sub(now.duration_since(oldest)))
    }
}

/// Command handling shared by the MQTT and socket front ends.
#[derive(Clone)]
pub struct Commands {
    pub(crate) jobs: SyncSender<Job>,
    /// Remote (MQTT) captures accepted in the last minute: a flood must not fill the disk.
    pub(crate) remote_captures: Arc<Mutex<CaptureRate>>,
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
    pub async fn handle(&self, name: &str, body: &[u8]) -> Reply {
        self.handle_from(name, body, false).await
    }

    pub(crate) async fn handle_from(&self, name: &str, body: &[u8], local: bool) -> Reply {
        if body.len() > self.max_bytes {
            return Reply::error(format!(
                "the command body has {} bytes; at most {} (mqtt.max_command_bytes)",
                body.len(),
                self.max_bytes
            ));
        }
        match name {
            "capture" => self.capture(body, local).await,
            "status" => self.status().await,
            other => Reply::error(format!("unknown command {other:?}; known: capture, status")),
        }
    }

    async fn capture(&self, body: &[u8], local: bool) -> Reply {
        let request = match CaptureRequest::parse(body, local) {
            Ok(r) => r,
            Err(e) => return Reply::error(e),
        };
        if !local {
            let allowed = self
                .remote_captures
                .lock()
                .map_or(Ok(()), |mut rate| rate.take(Instant::now()));
            if let Err(wait) = allowed {
                return Reply {
                    request_id: request.request_id,
                    ..Reply::error(format!(
                        "too many remote captures (mqtt.max_captures_per_minute); try again in {} s",
                        wait.as_secs().max(1)
                    ))
                };
            }
        }
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
        let reply = match self.jobs.try_send(job) {
            Ok(()) => answer.await.unwrap_or_else(|_| Reply::stopping()),
            Err(TrySendError::Full(_)) => Reply::error(format!(
                "busy: {} captures are already waiting; try again shortly",
                self.queue
            )),
            Err(TrySendError::Disconnected(_)) => Reply::stopping(),
        };
        Reply {
            request_id,
            ..reply
        }
    }

    async fn status(&self) -> Reply {
        let worker = self.status.lock().map(|s| s.clone()).unwrap_or_default();
        // SQLite counts can wait on a busy database: not on the thread that runs MQTT.
        let database = self.database.clone();
        let counts = tokio::task::spawn_blocking(move || {
            Store::open_read_only(&database).and_then(|s| s.counts())
        })
        .await;
        let (captures, results, undelivered) = match counts {
            Ok(Ok((c, r, u))) => (Some(c), Some(r), Some(u)),
            _ => (None, None, None),
        };
        Reply {
            ok: true,
            status: Some(StatusReport {
                device_id: self.device_id.clone(),
                version: env!("CARGO_PKG_VERSION"),
                worker,
                mqtt: *self.link.borrow(),
                clock_synchronized: crate::sys::clock_synchronized(),
                captures,
                results,
                undelivered,
            }),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_captures_are_limited_per_minute() {
        let t0 = Instant::now();
        let mut rate = CaptureRate::new(3);
        for i in 0..3 {
            assert!(rate.take(t0 + Duration::from_secs(i)).is_ok());
        }
        // The fourth within the minute waits until the first is a minute old.
        let wait = rate.take(t0 + Duration::from_secs(10)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(50));
        assert!(rate.take(t0 + Duration::from_secs(60)).is_ok());
        assert!(rate.take(t0 + Duration::from_secs(60)).is_err());
        assert!(CaptureRate::new(0).take(t0).is_err());
    }
}
