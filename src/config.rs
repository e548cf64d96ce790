//! The daemon's configuration: one TOML file, every key optional, checked at start.
//!
//! Unknown keys and wrong types are refused by the parser (the message names the key and the
//! line); value checks name the key and say what is allowed. Secrets are not in the file: it
//! names files to read them from (systemd `LoadCredential=` puts them under
//! `/run/credentials/<unit>/`), and [`Secret`] never prints its contents.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::capture::CameraSettings;
use crate::manifest::Precision;
use crate::pipeline::AnalysisConfig;
use crate::vision::DecodeLimits;

/// Where frames come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A V4L2 dermatoscope (`[camera]`); captures on a trigger or, with `[auto_capture]`, by itself.
    Camera,
    /// New image files in a folder (`[folder]`): for clinics without a camera, and for tests.
    Folder,
    /// Nothing captured by the daemon itself (results only from `capture` triggers with a file).
    None,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Names this device in MQTT topics and Home Assistant: letters, digits, `-`, `_`.
    pub device_id: String,
    /// The SQLite database and the saved frames and masks (made 0700).
    pub state_dir: PathBuf,
    /// Folder with the models and their manifests.
    pub models: PathBuf,
    /// Which exported model variant to run: "float32" or "int8".
    pub precision: Precision,
    /// Threads for tract's matrix products.
    pub threads: usize,
    /// The local control socket (`dermaedge capture`); empty: no socket.
    pub socket: PathBuf,
    /// Capture triggers waiting at most; more get a "busy" answer.
    pub queue: usize,
    pub source: SourceKind,
    pub camera: CameraSettings,
    pub auto_capture: AutoCapture,
    pub folder: FolderSource,
    pub analysis: AnalysisSettings,
    pub storage: Storage,
    pub mqtt: Mqtt,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoCapture {
    pub enabled: bool,
    /// Consecutive sharp, well-exposed, still frames needed before the capture fires.
    pub stable_frames: u32,
    /// Mean absolute grey-level change between frames (0-255) still counted as "still".
    pub max_motion: f32,
    /// Seconds after an automatic capture before the next may fire.
    pub cooldown_s: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FolderSource {
    pub path: PathBuf,
    /// How often the folder is scanned; a file is taken once its size and time stop changing.
    pub poll_ms: u64,
}

/// The `[analysis]` section: what the operator may tune (the pipeline runs with the
/// [`AnalysisConfig`] made from it, see [`Config::analysis_config`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalysisSettings {
    pub tta: bool,
    pub max_pixels: u64,
    /// Files (watched folder, `capture --file`) larger than this are refused unread.
    pub max_file_mb: u64,
    /// The decoder's buffer at most (width x height x bytes per pixel), checked before it is
    /// allocated: a 50 MP 16-bit RGBA PNG would take 400 MB.
    pub max_decoded_mb: u64,
    /// Size of one image pixel on the skin, for areas in mm².
    pub pixel_pitch_um: Option<f64>,
    pub min_sharpness: f32,
    pub min_mean_luma: f32,
    pub max_mean_luma: f32,
    pub max_border_contact: f32,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    /// Save each frame and its mask beside the result (0600 files under the state directory).
    pub keep_images: bool,
    /// Delete saved images older than this many days (results stay); 0: never by age.
    pub max_image_age_days: u64,
    /// Delete the oldest saved images beyond this total size (results stay); 0: no limit.
    pub max_image_mb: u64,
    /// Images younger than this many hours are never deleted by `max_image_mb` (a flood of
    /// captures cannot wipe the images of the patients just seen); 0: no floor.
    pub min_image_age_hours: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mqtt {
    /// Broker host name or address; absent: results are stored only.
    pub host: Option<String>,
    pub port: u16,
    /// Topics are `<prefix>/<device_id>/...`.
    pub prefix: String,
    /// Default: `dermaedge-<device_id>`.
    pub client_id: Option<String>,
    pub username: Option<String>,
    /// File holding the password (one line).
    pub password_file: Option<PathBuf>,
    pub tls: bool,
    /// PEM CA certificates for the broker; required with `tls`.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for brokers that authenticate clients by certificate.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    pub keep_alive_s: u64,
    /// Accept a broker link without TLS. Off: a plain-TCP broker is refused, since anyone on
    /// the network could then read results with patient context and send commands.
    pub allow_insecure: bool,
    /// Put the frame (base64 JPEG/PNG) into each result message. Off: images stay on the device.
    pub include_image: bool,
    /// Name the analyzed file in result messages (`result.image`). Off: file names, which are
    /// often patient names, stay on the device and messages carry the capture id instead.
    pub include_file_name: bool,
    /// Publish Home Assistant discovery topics (retained) so dashboards find the device.
    pub home_assistant: bool,
    pub discovery_prefix: String,
    /// Result messages published and not yet acknowledged, at most.
    pub window: usize,
    /// Command payloads larger than this are refused.
    pub max_command_bytes: usize,
    /// Captures triggered over MQTT, at most, in any minute; more are refused with a reply.
    pub max_captures_per_minute: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            device_id: default_device_id(),
            state_dir: "/var/lib/dermaedge".into(),
            models: "/usr/share/dermaedge/models".into(),
            precision: Precision::Float32,
            threads: 1,
            socket: "/run/dermaedge/control.sock".into(),
            queue: 4,
            source: SourceKind::Camera,
            camera: CameraSettings::default(),
            auto_capture: AutoCapture::default(),
            folder: FolderSource::default(),
            analysis: AnalysisSettings::default(),
            storage: Storage::default(),
            mqtt: Mqtt::default(),
        }
    }
}

impl Default for AutoCapture {
    fn default() -> Self {
        AutoCapture {
            enabled: false,
            stable_frames: 8,
            max_motion: 3.0,
            cooldown_s: 10,
        }
    }
}

impl Default for FolderSource {
    fn default() -> Self {
        FolderSource {
            path: "/var/lib/dermaedge/inbox".into(),
            poll_ms: 1000,
        }
    }
}

impl Default for AnalysisSettings {
    fn default() -> Self {
        let d = AnalysisConfig::default();
        AnalysisSettings {
            tta: d.tta,
            max_pixels: d.limits.max_pixels,
            max_file_mb: 64,
            max_decoded_mb: d.limits.max_decoded_bytes >> 20,
            pixel_pitch_um: None,
            min_sharpness: d.min_sharpness,
            min_mean_luma: d.min_mean_luma,
            max_mean_luma: d.max_mean_luma,
            max_border_contact: d.max_border_contact,
        }
    }
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            keep_images: true,
            max_image_age_days: 365,
            max_image_mb: 2048,
            min_image_age_hours: 24,
        }
    }
}

impl Default for Mqtt {
    fn default() -> Self {
        Mqtt {
            host: None,
            port: 1883,
            prefix: "dermaedge".into(),
            client_id: None,
            username: None,
            password_file: None,
            tls: false,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            keep_alive_s: 30,
            allow_insecure: false,
            include_image: false,
            include_file_name: false,
            home_assistant: false,
            discovery_prefix: "homeassistant".into(),
            window: 32,
            max_command_bytes: 4096,
            max_captures_per_minute: 12,
        }
    }
}

/// A password or key read from a file: never shown by `Debug` or `Display`.
#[derive(Clone, PartialEq)]
pub struct Secret(pub Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The demo configuration compiled into the binary: the bundled samples as a watched folder,
/// a local database, no camera and no broker.
pub const DEMO: &str = include_str!("../scripts/demo.toml");

/// Why a config cannot be used. Every message names the file and the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the config ({source})")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// toml's message: a syntax error, an unknown key or a wrong type, with the line.
    #[error("{0}")]
    Syntax(String),
    /// A value the types cannot refuse, as `key: problem`.
    #[error("{0}")]
    Value(String),
    #[error("{path}: {source}")]
    InFile {
        path: PathBuf,
        source: Box<ConfigError>,
    },
}

impl Config {
    /// Read and check a config file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text).map_err(|e| ConfigError::InFile {
            path: path.to_path_buf(),
            source: Box::new(e),
        })
    }

    /// Parse and check config text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            // toml's message spans lines (source excerpt); keep it readable on one screen.
            ConfigError::Syntax(e.to_string().trim_end().to_string())
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Value checks the types cannot express. The message names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_service()
            .and_then(|()| self.camera.validate())
            .and_then(|()| self.check_triggers())
            .and_then(|()| self.check_analysis())
            .and_then(|()| self.check_mqtt())
            .map_err(ConfigError::Value)
    }

    /// Identity, model variant, threads, queue, state directory.
    fn check_service(&self) -> Result<(), String> {
        let id_ok = !self.device_id.is_empty()
            && self.device_id.len() <= 64
            && self
                .device_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !id_ok {
            return Err(format!(
                "device_id: {:?} must be 1-64 letters, digits, '-' or '_' (it becomes an MQTT topic level)",
                self.device_id
            ));
        }
        check_range("threads", self.threads as f64, 1.0, 64.0)?;
        check_range("queue", self.queue as f64, 1.0, 1024.0)?;
        check_range(
            "storage.min_image_age_hours",
            self.storage.min_image_age_hours as f64,
            0.0,
            8760.0,
        )?;
        if self.state_dir.as_os_str().is_empty() {
            return Err("state_dir: must not be empty".into());
        }
        Ok(())
    }

    /// Auto capture and the watched folder.
    fn check_triggers(&self) -> Result<(), String> {
        let a = &self.auto_capture;
        check_range(
            "auto_capture.stable_frames",
            a.stable_frames as f64,
            1.0,
            1000.0,
        )?;
        check_range("auto_capture.max_motion", a.max_motion as f64, 0.0, 255.0)?;
        if self.source == SourceKind::Folder {
            check_range(
                "folder.poll_ms",
                self.folder.poll_ms as f64,
                10.0,
                3_600_000.0,
            )?;
            if self.folder.path.as_os_str().is_empty() {
                return Err("folder.path: must name the folder to watch".into());
            }
        }
        Ok(())
    }

    /// The quality gate's limits and the decode limits.
    fn check_analysis(&self) -> Result<(), String> {
        let an = &self.analysis;
        check_range("analysis.max_pixels", an.max_pixels as f64, 1024.0, 1e9)?;
        check_range("analysis.max_file_mb", an.max_file_mb as f64, 1.0, 1024.0)?;
        check_range(
            "analysis.max_decoded_mb",
            an.max_decoded_mb as f64,
            16.0,
            4096.0,
        )?;
        if let Some(p) = an.pixel_pitch_um {
            check_range("analysis.pixel_pitch_um", p, 0.01, 1000.0)?;
        }
        check_range("analysis.min_sharpness", an.min_sharpness as f64, 0.0, 1e6)?;
        check_range(
            "analysis.min_mean_luma",
            an.min_mean_luma as f64,
            0.0,
            255.0,
        )?;
        check_range(
            "analysis.max_mean_luma",
            an.max_mean_luma as f64,
            an.min_mean_luma as f64,
            255.0,
        )?;
        check_range(
            "analysis.max_border_contact",
            an.max_border_contact as f64,
            0.0,
            1.0,
        )?;
        Ok(())
    }

    /// The broker, topics, TLS and credentials; secret and certificate files are read here so
    /// a bad one stops the start (and `check-config`) with its key's name.
    fn check_mqtt(&self) -> Result<(), String> {
        let m = &self.mqtt;
        if let Some(host) = &m.host {
            if host.trim().is_empty() {
                return Err("mqtt.host: empty; leave the key out to run without a broker".into());
            }
        }
        if m.port == 0 {
            return Err("mqtt.port: must be 1-65535".into());
        }
        for (key, level) in [
            ("mqtt.prefix", &m.prefix),
            ("mqtt.discovery_prefix", &m.discovery_prefix),
        ] {
            if level.is_empty() || level.contains(['+', '#', '\0']) {
                return Err(format!(
                    "{key}: {level:?} must be a non-empty topic without wildcards (+, #)"
                ));
            }
        }
        check_range("mqtt.keep_alive_s", m.keep_alive_s as f64, 5.0, 3600.0)?;
        check_range("mqtt.window", m.window as f64, 1.0, 1000.0)?;
        check_range(
            "mqtt.max_captures_per_minute",
            m.max_captures_per_minute as f64,
            1.0,
            600.0,
        )?;
        check_range(
            "mqtt.max_command_bytes",
            m.max_command_bytes as f64,
            64.0,
            1_048_576.0,
        )?;
        if m.tls && m.ca_file.is_none() {
            return Err(
                "mqtt.ca_file: required with tls = true (PEM file of the broker's CA)".into(),
            );
        }
        if m.client_cert_file.is_some() != m.client_key_file.is_some() {
            return Err(
                "mqtt.client_cert_file and mqtt.client_key_file: give both or neither".into(),
            );
        }
        if (m.client_cert_file.is_some() || m.ca_file.is_some()) && !m.tls {
            return Err("mqtt.tls: certificate files are given but tls = false".into());
        }
        if m.password_file.is_some() && m.username.is_none() {
            return Err("mqtt.username: required with mqtt.password_file".into());
        }
        if m.host.is_some() && !m.tls && !m.allow_insecure {
            return Err(
                "mqtt.tls: the broker link would be plain TCP (anyone on the network could read results and send commands); set tls = true with ca_file (docs/mqtt.md), or allow_insecure = true to accept that"
                    .into(),
            );
        }
        // The secret and certificate files are read at start (mqtt::Credentials::load, which
        // check-config runs too), not here: parsing a config reads no secrets.
        Ok(())
    }

    /// The analysis options the pipeline runs with.
    pub fn analysis_config(&self) -> AnalysisConfig {
        let a = &self.analysis;
        AnalysisConfig {
            limits: DecodeLimits {
                max_pixels: a.max_pixels,
                max_decoded_bytes: a.max_decoded_mb << 20,
                ..Default::default()
            },
            min_mean_luma: a.min_mean_luma,
            max_mean_luma: a.max_mean_luma,
            min_sharpness: a.min_sharpness,
            max_border_contact: a.max_border_contact,
            pixel_pitch_mm: a.pixel_pitch_um.map(|um| um / 1000.0),
            tta: a.tta,
            ..Default::default()
        }
    }

    pub fn database_path(&self) -> PathBuf {
        self.state_dir.join("dermaedge.db")
    }

    pub fn images_dir(&self) -> PathBuf {
        self.state_dir.join("images")
    }
}

/// The default `device_id`: "dermaedge-" and 12 hex digits of a hash of /etc/machine-id, so
/// that two unconfigured devices on one broker neither kick each other off nor share
/// commands (machine-id(5) asks for a hash, never the id itself); "dermaedge" where the
/// file is missing. `check-config` and `status` print the id in effect.
pub fn default_device_id() -> String {
    device_id_from(fs::read_to_string("/etc/machine-id").ok().as_deref())
}

fn device_id_from(machine_id: Option<&str>) -> String {
    match machine_id.map(str::trim).filter(|m| !m.is_empty()) {
        Some(m) => {
            let hash = crate::wire::sha256_hex(format!("dermaedge:{m}").as_bytes());
            format!("dermaedge-{}", &hash[..12])
        }
        None => "dermaedge".into(),
    }
}

fn check_range(key: &str, v: f64, lo: f64, hi: f64) -> Result<(), String> {
    if v.is_finite() && v >= lo && v <= hi {
        Ok(())
    } else {
        Err(format!("{key}: {v} is out of range ({lo} to {hi})"))
    }
}

/// Read a secret or certificate file named by config key `key`.
pub fn read_secret(key: &str, path: &Path) -> Result<Secret, String> {
    let bytes =
        fs::read(path).map_err(|e| format!("{key}: {}: cannot read ({e})", path.display()))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(format!("{key}: {}: the file is empty", path.display()));
    }
    Ok(Secret(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn demo_config_is_valid() {
        let c = Config::parse(DEMO).unwrap();
        assert_eq!(c.source, SourceKind::Folder);
        assert!(c.mqtt.host.is_none());
    }

    #[test]
    fn the_default_device_id_is_per_machine() {
        let a = device_id_from(Some("0123456789abcdef0123456789abcdef\n"));
        let b = device_id_from(Some("fedcba9876543210fedcba9876543210"));
        assert!(a.starts_with("dermaedge-") && a.len() == 22, "{a}");
        assert_ne!(a, b);
        assert!(
            !a.contains("0123456789ab"),
            "the machine id itself never shows"
        );
        assert_eq!(device_id_from(None), "dermaedge");
        assert_eq!(device_id_from(Some(" \n")), "dermaedge");
        // What the default config uses passes its own check.
        assert!(Config::parse("").is_ok());
    }

    #[test]
    fn shipped_config_is_the_defaults() {
        let text = include_str!("../systemd/dermaedge.toml");
        assert_eq!(Config::parse(text).unwrap(), Config::default());
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::parse("[mqtt]\nhots = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("hots"), "{e}");
    }

    #[test]
    fn an_unknown_precision_names_the_key_and_the_variants() {
        let e = Config::parse("precision = \"fp16\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("precision") && e.contains("`float32` or `int8`"),
            "{e}"
        );
    }

    #[test]
    fn wrong_type_is_named() {
        let e = Config::parse("[mqtt]\nport = \"high\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("port"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, key) in [
            ("device_id = \"a/b\"", "device_id"),
            ("threads = 0", "threads"),
            ("[mqtt]\nport = 0", "mqtt.port"),
            ("[mqtt]\nhost = \"broker\"", "mqtt.tls"),
            ("[mqtt]\nprefix = \"a/#\"", "mqtt.prefix"),
            ("[mqtt]\ntls = true", "mqtt.ca_file"),
            (
                "[analysis]\nmax_border_contact = 2.0",
                "analysis.max_border_contact",
            ),
            (
                "source = \"folder\"\n[folder]\npoll_ms = 0",
                "folder.poll_ms",
            ),
        ] {
            let e = Config::parse(text).unwrap_err().to_string();
            assert!(e.starts_with(key), "{text}: {e}");
        }
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret(b"hunter2".to_vec());
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
