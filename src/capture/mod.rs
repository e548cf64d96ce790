//! Camera capture: everything between the dermatoscope's V4L2 device node and an RGB frame.
//!
//! This module owns the `[camera]` config section, format negotiation (MJPEG preferred, then
//! the uncompressed YUYV, UYVY and RGB24), the mmap stream, decoding of all four (including
//! the Huffman tables many UVC cameras leave out of MJPEG: `pixels.rs`, `mjpeg.rs`),
//! `dermaedge devices` listing (`devices.rs`); the backoff schedule the daemon follows while
//! the camera is unplugged is `crate::backoff`. UVC dermatoscopes
//! send MJPEG or YUYV; UYVY and RGB24 are what capture cards and the `vivid` test driver
//! offer besides. Nothing here panics on data from the device: a bad frame is an error
//! value, and a bad stream is a reason to reconnect.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

// The errno values the error hints tell apart. ENOSYS is what an ioctl gives on a file that
// is not a V4L2 device under QEMU user mode (which does not forward ioctls it does not know)
// instead of ENOTTY.
use libc::{EBUSY, EIO, ENODEV, ENOSPC, ENOSYS, ENOTTY, ENXIO};
use v4l::buffer::{Flags as BufferFlags, Metadata, Type as BufferType};
use v4l::capability::Flags as CapabilityFlags;
use v4l::format::Description as FormatDescription;
use v4l::io::mmap::Stream;
use v4l::io::traits::CaptureStream;
use v4l::video::Capture;
use v4l::{Device, Format, FourCC};

mod devices;
mod mjpeg;
mod pixels;

pub use crate::backoff::{LinkState, Reconnect};
pub use devices::list_devices;
pub use mjpeg::{jpeg_with_huffman_tables, mjpeg_to_rgb};
use pixels::*;
pub use pixels::{rgb24_to_rgb, uyvy_to_rgb, yuyv_to_rgb};

/// Largest width or height we accept from the config or the driver.
const MAX_DIMENSION: u32 = 8192;
/// Ten seconds of frames at 30 fps is more than any auto exposure needs.
const MAX_WARMUP_FRAMES: u32 = 300;
/// Few buffers keep frames fresh: a full queue holds frames from when we last looked.
const BUFFER_COUNT: u32 = 4;
/// Low light can drop UVC cameras to a few frames per second; longer than this is a stall.
const FRAME_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_CONSECUTIVE_CORRUPT: u32 = 10;
/// Signals interrupt poll(2); after this many in a row something else is wrong.
const MAX_INTERRUPTIONS: u32 = 5;

const FOURCC_MJPG: [u8; 4] = *b"MJPG";
const FOURCC_JPEG: [u8; 4] = *b"JPEG";
const FOURCC_YUYV: [u8; 4] = *b"YUYV";
const FOURCC_UYVY: [u8; 4] = *b"UYVY";
/// V4L2_PIX_FMT_RGB24: bytes R G B per pixel (`BGR3` is the other order, not read here).
const FOURCC_RGB3: [u8; 4] = *b"RGB3";

/// `[camera]` section of the daemon's TOML config. Every key optional.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CameraSettings {
    /// V4L2 capture node; a stable `/dev/v4l/by-id/...` link works too.
    pub device: PathBuf,
    pub format: FormatChoice,
    /// Requested size; the driver may pick the nearest it supports and we use what it picks.
    pub width: u32,
    pub height: u32,
    /// Frames dropped after opening while auto exposure settles. Opening always reads at
    /// least one frame, to prove the camera streams.
    pub warmup_frames: u32,
}

impl Default for CameraSettings {
    fn default() -> Self {
        CameraSettings {
            device: PathBuf::from("/dev/video0"),
            format: FormatChoice::Auto,
            width: 1280,
            height: 960,
            warmup_frames: 5,
        }
    }
}

impl CameraSettings {
    /// Checks the values a TOML parser cannot; the message names the offending key.
    pub fn validate(&self) -> Result<(), String> {
        let device = self.device.as_os_str();
        if device.is_empty() {
            return Err("camera.device: must not be empty (e.g. \"/dev/video0\")".to_string());
        }
        if device.as_encoded_bytes().contains(&0) {
            return Err(format!(
                "camera.device: must not contain a NUL byte, got {:?}",
                self.device
            ));
        }
        check_dimension("camera.width", self.width)?;
        check_dimension("camera.height", self.height)?;
        if self.warmup_frames > MAX_WARMUP_FRAMES {
            return Err(format!(
                "camera.warmup_frames: must be at most {MAX_WARMUP_FRAMES}, got {}",
                self.warmup_frames
            ));
        }
        Ok(())
    }
}

fn check_dimension(key: &str, value: u32) -> Result<(), String> {
    if (1..=MAX_DIMENSION).contains(&value) {
        Ok(())
    } else {
        Err(format!(
            "{key}: must be between 1 and {MAX_DIMENSION}, got {value}"
        ))
    }
}

/// Which pixel format to ask the camera for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FormatChoice {
    /// MJPEG when offered (less USB bandwidth, the camera's own JPEG can be stored), else
    /// YUYV, else UYVY, else RGB24.
    Auto,
    Mjpeg,
    Yuyv,
    Uyvy,
    /// V4L2 fourcc `RGB3`.
    Rgb24,
}

impl fmt::Display for FormatChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::wire::name(self))
    }
}

/// The pixel format a camera actually streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PixelFormat {
    Mjpeg,
    /// Packed 4:2:2, bytes Y0 U Y1 V.
    Yuyv,
    /// Packed 4:2:2, bytes U Y0 V Y1.
    Uyvy,
    /// Bytes R G B per pixel (V4L2 fourcc `RGB3`).
    Rgb24,
}

impl fmt::Display for PixelFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::wire::name(self))
    }
}

/// One captured frame.
#[derive(Clone)]
pub struct Frame {
    pub rgb: image::RgbImage,
    pub format: PixelFormat,
    /// The camera's own JPEG bytes when it sent MJPEG (stored as-is); None for the
    /// uncompressed formats (YUYV, UYVY, RGB24).
    /// These may lack Huffman tables; [`jpeg_with_huffman_tables`] makes them standalone.
    pub jpeg: Option<Vec<u8>>,
}

// By hand: the derived Debug would print every pixel.
impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("size", &self.rgb.dimensions())
            .field("format", &self.format)
            .field("jpeg_bytes", &self.jpeg.as_ref().map(Vec::len))
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("invalid [camera] settings: {reason}")]
    InvalidSettings { reason: String },

    #[error("cannot open camera {}: {source}; {}", .device.display(), open_hint(.source))]
    Open { device: PathBuf, source: io::Error },

    #[error("camera {}: cannot {step}: {source}{}", .device.display(), setup_hint(.source))]
    Setup {
        device: PathBuf,
        step: &'static str,
        source: io::Error,
    },

    #[error(
        "{} ({card}, driver {driver}) is not a single-planar video capture device with \
         streaming; UVC cameras also create metadata nodes: set camera.device to the capture \
         node (`dermaedge devices` lists them)",
        .device.display()
    )]
    NotCaptureDevice {
        device: PathBuf,
        card: String,
        driver: String,
    },

    #[error(
        "camera {} offers no format dermaedge can use with camera.format = \"{wanted}\"; it \
         offers: {}. dermaedge reads MJPEG, YUYV, UYVY and RGB24 (fourcc RGB3): set \
         camera.format to \"auto\" or to one the camera offers",
        .device.display(),
        list_or_nothing(.offered)
    )]
    NoSupportedFormat {
        device: PathBuf,
        wanted: FormatChoice,
        offered: Vec<String>,
    },

    #[error(
        "lost camera {} while streaming: {source}; check that the dermatoscope is plugged in \
         (`dmesg` shows USB disconnects)",
        .device.display()
    )]
    DeviceLost { device: PathBuf, source: io::Error },

    #[error(
        "camera {} sent no frame for {} s and may have stalled; replug it, and check `dmesg` \
         for USB errors",
        .device.display(),
        .waited.as_secs_f32()
    )]
    Timeout { device: PathBuf, waited: Duration },

    #[error("corrupt {kind} frame: {reason}")]
    CorruptFrame { kind: PixelFormat, reason: String },

    #[error(
        "camera {} sent {count} corrupt frames in a row (last: {last}); the USB link may be \
         unreliable: try another cable or port, or a lower camera.width/height",
        .device.display()
    )]
    CorruptStream {
        device: PathBuf,
        count: u32,
        last: String,
    },
}

impl CaptureError {
    /// True when the daemon should drop the [`Camera`] and reconnect with [`Reconnect`].
    ///
    /// A timeout counts: a UVC camera that stops sending frames is usually wedged, and
    /// reopening it is the cure. Errors from [`Camera::open`] are not "lost" (there is
    /// nothing to close); whether to retry those is the caller's call.
    pub fn is_device_lost(&self) -> bool {
        matches!(
            self,
            CaptureError::DeviceLost { .. }
                | CaptureError::Timeout { .. }
                | CaptureError::CorruptStream { .. }
        )
    }
}

fn open_hint(error: &io::Error) -> &'static str {
    match (error.kind(), error.raw_os_error()) {
        (io::ErrorKind::NotFound, _) => {
            "is the dermatoscope plugged in? `dermaedge devices` lists the cameras found"
        }
        (io::ErrorKind::PermissionDenied, _) => {
            "is the user in the video group? (`sudo usermod -aG video $USER`, then log in again)"
        }
        (_, Some(ENXIO | ENODEV)) => {
            "the device node exists but no camera answers behind it: replug the dermatoscope"
        }
        (_, Some(EBUSY)) => "another program holds the camera; close it (`fuser -v /dev/video*`)",
        _ => "is the dermatoscope plugged in? is the user in the video group?",
    }
}

fn setup_hint(error: &io::Error) -> &'static str {
    match error.raw_os_error() {
        Some(ENOTTY) | Some(ENOSYS) => {
            "; this is not a video4linux device: check camera.device (`dermaedge devices` \
             lists cameras)"
        }
        Some(EBUSY) => {
            "; another program is streaming from this camera: close it (`fuser -v /dev/video*` \
             shows which)"
        }
        Some(ENOSPC) => {
            "; not enough USB bandwidth: try camera.format = \"mjpeg\", a lower \
             camera.width/height, or another USB port"
        }
        Some(ENODEV | EIO) => "; the camera went away during setup: check the cable and replug it",
        _ => "",
    }
}

fn list_or_nothing(items: &[String]) -> String {
    if items.is_empty() {
        "nothing".to_string()
    } else {
        items.join(", ")
    }
}

/// An open camera with a running mmap stream.
///
/// The v4l stream holds its own reference-counted handle to the device and its buffers are
/// plain mmap slices, so `Stream<'static>` needs nothing borrowed: the `Device` used to
/// set it up can be dropped after `open`.
pub struct Camera {
    stream: Stream<'static>,
    path: PathBuf,
    card: String,
    format: PixelFormat,
    width: u32,
    height: u32,
    bytesperline: u32,
    /// Our last buffer went back to the driver but waiting for the next one failed; v4l's
    /// `next()` would queue that buffer a second time (EINVAL), so dequeue it first.
    dequeue_pending: bool,
}

impl fmt::Debug for Camera {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.description())
    }
}

/// Pick the pixel format (the setting, or the best the camera offers) and set it with the
/// size asked for; the driver may choose another size, which is logged.
fn negotiate_format(
    device: &Device,
    path: &Path,
    settings: &CameraSettings,
) -> Result<(PixelFormat, Format), CaptureError> {
    let offered = device
        .enum_formats()
        .map_err(setup_error(path, "list its pixel formats"))?;
    let fourccs: Vec<FourCC> = offered.iter().map(|d| d.fourcc).collect();
    let Some((format, fourcc)) = choose_format(settings.format, &fourccs) else {
        return Err(CaptureError::NoSupportedFormat {
            device: path.to_path_buf(),
            wanted: settings.format,
            offered: offered.iter().map(describe_format).collect(),
        });
    };

    let requested = Format::new(settings.width, settings.height, fourcc);
    let actual = device
        .set_format(&requested)
        .map_err(setup_error(path, "set the pixel format"))?;
    check_negotiated(&requested, &actual).map_err(setup_error(path, "set the pixel format"))?;
    if (actual.width, actual.height) != (requested.width, requested.height) {
        log::info!(
            "{}: asked for {}x{}, the driver chose {}x{}",
            path.display(),
            requested.width,
            requested.height,
            actual.width,
            actual.height
        );
    }
    Ok((format, actual))
}

/// A failed setup `step` on `device`, as a `map_err` closure.
fn setup_error(device: &Path, step: &'static str) -> impl FnOnce(io::Error) -> CaptureError {
    let device = device.to_path_buf();
    move |source| CaptureError::Setup {
        device,
        step,
        source,
    }
}

impl Camera {
    /// Opens the camera, negotiates format and size, starts streaming and drops the warm-up
    /// frames.
    pub fn open(settings: &CameraSettings) -> Result<Camera, CaptureError> {
        settings
            .validate()
            .map_err(|reason| CaptureError::InvalidSettings { reason })?;
        let path = settings.device.clone();
        let device = Device::with_path(&path).map_err(|source| CaptureError::Open {
            device: path.clone(),
            source,
        })?;

        let caps = device
            .query_caps()
            .map_err(setup_error(&path, "query its capabilities"))?;
        let needed = CapabilityFlags::VIDEO_CAPTURE | CapabilityFlags::STREAMING;
        if !caps.capabilities.contains(needed) {
            return Err(CaptureError::NotCaptureDevice {
                device: path,
                card: caps.card,
                driver: caps.driver,
            });
        }

        let (format, actual) = negotiate_format(&device, &path, settings)?;
        // Some drivers leave bytesperline 0 for packed formats; then rows are back to back.
        let bytesperline = match packed_row_bytes(format, actual.width) {
            Some(tight) => actual.stride.max(u32::try_from(tight).unwrap_or(u32::MAX)),
            None => 0,
        };

        let mut stream = Stream::with_buffers(&device, BufferType::VideoCapture, BUFFER_COUNT)
            .map_err(setup_error(&path, "allocate capture buffers"))?;
        stream.set_timeout(FRAME_TIMEOUT);

        let mut camera = Camera {
            stream,
            path,
            card: caps.card,
            format,
            width: actual.width,
            height: actual.height,
            bytesperline,
            dequeue_pending: false,
        };
        camera.warm_up(settings.warmup_frames)?;
        log::info!("opened camera {}", camera.description());
        Ok(camera)
    }

    pub fn format(&self) -> PixelFormat {
        self.format
    }

    /// The size the driver chose, which may differ from the one requested.
    pub fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// e.g. "/dev/video0 (HD USB Camera) mjpeg 1280x960".
    pub fn description(&self) -> String {
        format!(
            "{} ({}) {} {}x{}",
            self.path.display(),
            self.card,
            self.format,
            self.width,
            self.height
        )
    }

    /// The next frame from the stream, converted to RGB. A corrupt frame is skipped with a
    /// warning and the stream goes on; after 10 corrupt frames in a row this gives up with
    /// [`CaptureError::CorruptStream`].
    ///
    /// Frames come in the order the driver filled its buffers: after the caller has been away
    /// for a while the first few can be that old. Use [`Camera::fresh_frame`] when it matters.
    pub fn next_frame(&mut self) -> Result<Frame, CaptureError> {
        let (format, width, height, bytesperline) =
            (self.format, self.width, self.height, self.bytesperline);
        let mut last_problem = String::new();
        for _ in 0..MAX_CONSECUTIVE_CORRUPT {
            let decoded = self.with_next_buffer(|data, meta| {
                decode_buffer(data, meta, format, width, height, bytesperline)
            })?;
            match decoded {
                Ok(frame) => return Ok(frame),
                Err(problem) => {
                    log::warn!("camera {}: skipped a frame: {problem}", self.path.display());
                    last_problem = problem.to_string();
                }
            }
        }
        Err(CaptureError::CorruptStream {
            device: self.path.clone(),
            count: MAX_CONSECUTIVE_CORRUPT,
            last: last_problem,
        })
    }

    /// A frame whose capture started after this call, for a capture trigger: drops what
    /// already waits in the driver's buffers and the frame in flight. Costs up to two frame
    /// periods.
    pub fn fresh_frame(&mut self) -> Result<Frame, CaptureError> {
        let drained = self.drop_ready_frames()?;
        if !drained {
            // The frame in flight may have started exposing before the trigger.
            self.with_next_buffer(|_, _| ())?;
        }
        // When draining ended on an empty queue, a dequeue is pending: completing it takes the
        // frame in flight, so `next_frame` returns the one after it.
        self.next_frame()
    }

    fn warm_up(&mut self, frames: u32) -> Result<(), CaptureError> {
        // The first frame starts the stream (STREAMON); its failures are setup failures with
        // setup hints (EBUSY, ENOSPC), not a lost device.
        self.with_next_buffer(|_, _| ())
            .map_err(|error| match error {
                CaptureError::DeviceLost { device, source } => CaptureError::Setup {
                    device,
                    step: "start streaming",
                    source,
                },
                other => other,
            })?;
        for _ in 1..frames {
            self.with_next_buffer(|_, _| ())?;
        }
        Ok(())
    }

    /// Discards every frame the driver has already finished. Returns true when it stopped
    /// because none was left (leaving a dequeue pending), false if frames kept coming.
    fn drop_ready_frames(&mut self) -> Result<bool, CaptureError> {
        self.stream.set_timeout(Duration::ZERO);
        let mut outcome = Ok(false);
        // Bounded: each pass takes microseconds, so more than a queue's worth means a driver
        // that never runs dry, and the caller's frame is then fresh enough.
        for _ in 0..=BUFFER_COUNT {
            match self.with_next_buffer(|_, _| ()) {
                Ok(()) => {}
                Err(CaptureError::Timeout { .. }) => {
                    outcome = Ok(true);
                    break;
                }
                Err(error) => {
                    outcome = Err(error);
                    break;
                }
            }
        }
        self.stream.set_timeout(FRAME_TIMEOUT);
        outcome
    }

    /// Waits for the next filled buffer and lends it, with its metadata, to `use_frame`.
    /// The slice is the whole mapped buffer; the frame is its first `bytesused` bytes.
    fn with_next_buffer<T>(
        &mut self,
        use_frame: impl FnOnce(&[u8], &Metadata) -> T,
    ) -> Result<T, CaptureError> {
        let mut last_error = None;
        for _ in 0..MAX_INTERRUPTIONS {
            if self.dequeue_pending {
                match CaptureStream::dequeue(&mut self.stream) {
                    Ok(_) => self.dequeue_pending = false,
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {
                        last_error = Some(error);
                        continue;
                    }
                    Err(error) => return Err(stream_error(&self.path, error)),
                }
            }
            match CaptureStream::next(&mut self.stream) {
                Ok((data, meta)) => return Ok(use_frame(data, meta)),
                Err(error) => {
                    // next() queues our previous buffer before it waits, and only the wait
                    // fails in ways worth surviving (timeout, signal).
                    self.dequeue_pending = true;
                    if error.kind() != io::ErrorKind::Interrupted {
                        return Err(stream_error(&self.path, error));
                    }
                    last_error = Some(error);
                }
            }
        }
        let error = last_error.unwrap_or_else(|| io::Error::from(io::ErrorKind::Interrupted));
        Err(stream_error(&self.path, error))
    }
}

fn stream_error(path: &Path, error: io::Error) -> CaptureError {
    if error.kind() == io::ErrorKind::TimedOut {
        CaptureError::Timeout {
            device: path.to_path_buf(),
            waited: FRAME_TIMEOUT,
        }
    } else {
        CaptureError::DeviceLost {
            device: path.to_path_buf(),
            source: error,
        }
    }
}

/// Picks the fourcc to ask for among those the device offers.
fn choose_format(choice: FormatChoice, offered: &[FourCC]) -> Option<(PixelFormat, FourCC)> {
    let find = |codes: &[[u8; 4]]| {
        codes
            .iter()
            .find(|code| offered.iter().any(|f| f.repr == **code))
            .map(FourCC::new)
    };
    // Some cameras label their motion JPEG "JPEG" rather than "MJPG"; the bytes are the same.
    let mjpeg = || find(&[FOURCC_MJPG, FOURCC_JPEG]).map(|f| (PixelFormat::Mjpeg, f));
    let yuyv = || find(&[FOURCC_YUYV]).map(|f| (PixelFormat::Yuyv, f));
    let uyvy = || find(&[FOURCC_UYVY]).map(|f| (PixelFormat::Uyvy, f));
    let rgb24 = || find(&[FOURCC_RGB3]).map(|f| (PixelFormat::Rgb24, f));
    match choice {
        // Compressed first, then the 2-byte-per-pixel formats before the 3-byte one.
        FormatChoice::Auto => mjpeg().or_else(yuyv).or_else(uyvy).or_else(rgb24),
        FormatChoice::Mjpeg => mjpeg(),
        FormatChoice::Yuyv => yuyv(),
        FormatChoice::Uyvy => uyvy(),
        FormatChoice::Rgb24 => rgb24(),
    }
}

/// The driver answers S_FMT with what it will really do; refuse what we cannot decode.
fn check_negotiated(requested: &Format, actual: &Format) -> Result<(), io::Error> {
    if actual.fourcc != requested.fourcc {
        return Err(io::Error::other(format!(
            "asked for {}, the driver chose {}",
            fourcc_text(requested.fourcc),
            fourcc_text(actual.fourcc)
        )));
    }
    let valid = 1..=MAX_DIMENSION;
    if !valid.contains(&actual.width) || !valid.contains(&actual.height) {
        return Err(io::Error::other(format!(
            "the driver chose an unusable frame size {}x{}",
            actual.width, actual.height
        )));
    }
    Ok(())
}

fn fourcc_text(fourcc: FourCC) -> String {
    String::from_utf8_lossy(&fourcc.repr).into_owned()
}

fn describe_format(description: &FormatDescription) -> String {
    format!(
        "{} ({})",
        fourcc_text(description.fourcc),
        description.description
    )
}

/// Turns one dequeued buffer into a frame; every problem is a `CorruptFrame`.
fn decode_buffer(
    data: &[u8],
    meta: &Metadata,
    format: PixelFormat,
    width: u32,
    height: u32,
    bytesperline: u32,
) -> Result<Frame, CaptureError> {
    let corrupt = |reason: &str| CaptureError::CorruptFrame {
        kind: format,
        reason: reason.to_string(),
    };
    if meta.flags.contains(BufferFlags::ERROR) {
        return Err(corrupt(
            "the driver flagged the buffer as damaged (lost USB packets?)",
        ));
    }
    // v4l hands out the whole mapped buffer; only the first `bytesused` bytes are this frame.
    let used = usize::try_from(meta.bytesused).unwrap_or(usize::MAX);
    let data = data.get(..used).unwrap_or(data);
    if data.is_empty() {
        return Err(corrupt("the driver delivered an empty buffer"));
    }
    let rgb = match format {
        PixelFormat::Mjpeg => {
            return Ok(Frame {
                rgb: mjpeg_to_rgb(data)?,
                format,
                jpeg: Some(data.to_vec()),
            })
        }
        PixelFormat::Yuyv => yuyv_to_rgb(data, width, height, bytesperline)?,
        PixelFormat::Uyvy => uyvy_to_rgb(data, width, height, bytesperline)?,
        PixelFormat::Rgb24 => rgb24_to_rgb(data, width, height, bytesperline)?,
    };
    Ok(Frame {
        rgb,
        format,
        jpeg: None,
    })
}

#[cfg(test)]
mod tests {
    use super::devices::*;
    use super::mjpeg::*;
    use super::*;
    use image::{ImageFormat, Rgb, RgbImage};
    use std::borrow::Cow;

    // Known BT.601 limited-range YUV values of the primaries.
    const RED: (u8, u8, u8) = (81, 90, 240);
    const GREEN: (u8, u8, u8) = (145, 54, 34);
    const BLUE: (u8, u8, u8) = (41, 240, 110);

    fn yuyv_solid(width: u32, height: u32, pitch: usize, (y, u, v): (u8, u8, u8)) -> Vec<u8> {
        packed_solid(yuv422_row_bytes(width), height, pitch, [y, u, y, v])
    }

    fn uyvy_solid(width: u32, height: u32, pitch: usize, (y, u, v): (u8, u8, u8)) -> Vec<u8> {
        packed_solid(yuv422_row_bytes(width), height, pitch, [u, y, v, y])
    }

    fn rgb24_solid(width: u32, height: u32, pitch: usize, rgb: [u8; 3]) -> Vec<u8> {
        packed_solid(rgb24_row_bytes(width), height, pitch, rgb)
    }

    /// `height` rows of `group` repeated to `row_bytes`, each padded with 0xEE to `pitch`.
    fn packed_solid<const N: usize>(
        row_bytes: u64,
        height: u32,
        pitch: usize,
        group: [u8; N],
    ) -> Vec<u8> {
        let mut data = Vec::new();
        for _ in 0..height {
            let mut row: Vec<u8> = group.repeat(row_bytes as usize / N);
            row.resize(pitch, 0xEE);
            data.extend_from_slice(&row);
        }
        data
    }

    /// YUYV bytes reordered to UYVY (swap the two bytes of every pair).
    fn yuyv_as_uyvy(yuyv: &[u8]) -> Vec<u8> {
        yuyv.chunks(2)
            .flat_map(|pair| pair.iter().rev().copied())
            .collect()
    }

    fn assert_near(actual: &Rgb<u8>, expected: [u8; 3], tolerance: u8) {
        for (a, e) in actual.0.iter().zip(expected) {
            assert!(
                a.abs_diff(e) <= tolerance,
                "got {actual:?}, expected {expected:?}"
            );
        }
    }

    fn assert_corrupt(result: Result<RgbImage, CaptureError>, kind: PixelFormat) -> String {
        match result {
            Err(error @ CaptureError::CorruptFrame { kind: k, .. }) if k == kind => {
                error.to_string()
            }
            Err(other) => panic!("expected a corrupt {kind} frame, got {other}"),
            Ok(image) => panic!("expected an error, decoded {:?}", image.dimensions()),
        }
    }

    type Solid = fn(u32, u32, usize, (u8, u8, u8)) -> Vec<u8>;

    /// The two packed 4:2:2 byte orders, with a maker of solid-colour frames for each.
    const PACKED_422: [(&str, Convert, Solid); 2] = [
        ("yuyv", yuyv_to_rgb, yuyv_solid),
        ("uyvy", uyvy_to_rgb, uyvy_solid),
    ];

    #[test]
    fn packed_422_black_white_and_clamping() {
        for (name, convert, solid) in PACKED_422 {
            let black = convert(&solid(4, 2, 8, (16, 128, 128)), 4, 2, 8).unwrap();
            assert_eq!(black.dimensions(), (4, 2), "{name}");
            assert!(black.pixels().all(|p| p.0 == [0, 0, 0]), "{name}");
            let white = convert(&solid(4, 2, 8, (235, 128, 128)), 4, 2, 8).unwrap();
            assert!(white.pixels().all(|p| p.0 == [255, 255, 255]), "{name}");
            // Out-of-range codes clamp instead of wrapping.
            let over = convert(&solid(2, 1, 4, (255, 255, 255)), 2, 1, 4).unwrap();
            assert_eq!(over.get_pixel(0, 0).0[0], 255, "{name}");
            let under = convert(&solid(2, 1, 4, (0, 0, 0)), 2, 1, 4).unwrap();
            assert_eq!(under.get_pixel(0, 0).0, [0, 135, 0], "{name}");
        }
    }

    #[test]
    fn packed_422_primaries() {
        for (_, convert, solid) in PACKED_422 {
            for (yuv, rgb) in [
                (RED, [255, 0, 0]),
                (GREEN, [0, 255, 0]),
                (BLUE, [0, 0, 255]),
            ] {
                let image = convert(&solid(6, 3, 12, yuv), 6, 3, 12).unwrap();
                for pixel in image.pixels() {
                    assert_near(pixel, rgb, 2);
                }
            }
        }
    }

    #[test]
    fn yuyv_pairs_share_chroma_but_not_luma() {
        let data = [16, 128, 235, 128];
        let image = yuyv_to_rgb(&data, 2, 1, 4).unwrap();
        assert_eq!(image.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(image.get_pixel(1, 0).0, [255, 255, 255]);
    }

    #[test]
    fn yuyv_skips_row_padding() {
        // 4 pixels = 8 bytes per row, padded to 16; the 0xEE padding would tint the image.
        let data = yuyv_solid(4, 3, 16, RED);
        assert_eq!(data.len(), 48);
        let image = yuyv_to_rgb(&data, 4, 3, 16).unwrap();
        assert_eq!(image.dimensions(), (4, 3));
        for pixel in image.pixels() {
            assert_near(pixel, [255, 0, 0], 2);
        }
        // The last row's padding may be missing.
        assert!(yuyv_to_rgb(&data[..40], 4, 3, 16).is_ok());
    }

    #[test]
    fn yuyv_odd_width_uses_half_of_the_last_pair() {
        let image = yuyv_to_rgb(&yuyv_solid(3, 2, 8, BLUE), 3, 2, 8).unwrap();
        assert_eq!(image.dimensions(), (3, 2));
        assert_near(image.get_pixel(2, 1), [0, 0, 255], 2);
    }

    type Convert = fn(&[u8], u32, u32, u32) -> Result<RgbImage, CaptureError>;

    #[test]
    fn bad_uncompressed_buffers_are_errors() {
        // (format, converter, a good 4x2 buffer, its bytesperline, a too-small bytesperline)
        let cases: [(PixelFormat, Convert, Vec<u8>, u32, u32); 3] = [
            (
                PixelFormat::Yuyv,
                yuyv_to_rgb,
                yuyv_solid(4, 2, 8, RED),
                8,
                6,
            ),
            (
                PixelFormat::Uyvy,
                uyvy_to_rgb,
                uyvy_solid(4, 2, 8, RED),
                8,
                6,
            ),
            (
                PixelFormat::Rgb24,
                rgb24_to_rgb,
                rgb24_solid(4, 2, 12, [0, 255, 0]),
                12,
                11,
            ),
        ];
        for (kind, convert, data, bpl, small_bpl) in cases {
            let n = data.len() - 1;
            let short = assert_corrupt(convert(&data[..n], 4, 2, bpl), kind);
            assert!(
                short.contains(&format!("{n} bytes")) && short.contains(&kind.to_string()),
                "{short}"
            );
            let pitch = assert_corrupt(convert(&data, 4, 2, small_bpl), kind);
            assert!(
                pitch.contains(&format!("bytesperline {small_bpl}")),
                "{pitch}"
            );
            assert_corrupt(convert(&data, 0, 2, bpl), kind);
            assert_corrupt(convert(&data, 4, 0, bpl), kind);
            assert_corrupt(convert(&[], 4, 2, bpl), kind);
            assert_corrupt(convert(&[1, 2, 3], 1, 1, 0), kind);
            // Sizes that overflow 32-bit arithmetic must not panic or allocate.
            assert_corrupt(convert(&data, u32::MAX, u32::MAX, u32::MAX), kind);
            for cut in 0..data.len() {
                assert_corrupt(convert(&data[..cut], 4, 2, bpl), kind);
            }
        }
    }

    #[test]
    fn uyvy_read_as_yuyv_is_not_the_same_colour() {
        // Read with the YUYV byte order the same bytes are not red: the order matters.
        let red = uyvy_solid(2, 1, 4, RED);
        let misread = yuyv_to_rgb(&red, 2, 1, 4).unwrap();
        assert!(misread.get_pixel(0, 0).0[0] < 200, "{misread:?}");
    }

    #[test]
    fn uyvy_byte_order_is_u_y0_v_y1() {
        let data = [128, 16, 128, 235];
        let image = uyvy_to_rgb(&data, 2, 1, 4).unwrap();
        assert_eq!(image.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(image.get_pixel(1, 0).0, [255, 255, 255]);
        // U in byte 0, V in byte 2: U high makes blue, V high makes red.
        let blueish = uyvy_to_rgb(&[240, 126, 128, 126], 2, 1, 4).unwrap();
        let reddish = uyvy_to_rgb(&[128, 126, 240, 126], 2, 1, 4).unwrap();
        assert!(blueish.get_pixel(0, 0).0[2] > 200 && blueish.get_pixel(0, 0).0[0] < 130);
        assert!(reddish.get_pixel(1, 0).0[0] > 200 && reddish.get_pixel(1, 0).0[2] < 130);
    }

    #[test]
    fn uyvy_matches_yuyv_with_the_bytes_swapped() {
        for (seed, (width, height, pitch)) in [(4, 3, 8), (5, 2, 16), (1, 4, 4), (7, 7, 20)]
            .into_iter()
            .enumerate()
        {
            let yuyv = noise(seed as u64 + 100, pitch * height as usize);
            let pitch = pitch as u32;
            assert_eq!(
                uyvy_to_rgb(&yuyv_as_uyvy(&yuyv), width, height, pitch).unwrap(),
                yuyv_to_rgb(&yuyv, width, height, pitch).unwrap()
            );
        }
    }

    #[test]
    fn uyvy_skips_row_padding_and_handles_odd_widths() {
        let data = uyvy_solid(4, 3, 16, RED);
        let image = uyvy_to_rgb(&data, 4, 3, 16).unwrap();
        assert_eq!(image.dimensions(), (4, 3));
        for pixel in image.pixels() {
            assert_near(pixel, [255, 0, 0], 2);
        }
        assert!(uyvy_to_rgb(&data[..40], 4, 3, 16).is_ok());
        let odd = uyvy_to_rgb(&uyvy_solid(3, 2, 8, BLUE), 3, 2, 8).unwrap();
        assert_eq!(odd.dimensions(), (3, 2));
        assert_near(odd.get_pixel(2, 1), [0, 0, 255], 2);
    }

    #[test]
    fn rgb24_black_white_and_primaries() {
        for colour in [
            [0, 0, 0],
            [255, 255, 255],
            [255, 0, 0],
            [0, 255, 0],
            [0, 0, 255],
        ] {
            let image = rgb24_to_rgb(&rgb24_solid(5, 3, 15, colour), 5, 3, 15).unwrap();
            assert_eq!(image.dimensions(), (5, 3));
            assert!(image.pixels().all(|p| p.0 == colour), "{colour:?}");
        }
    }

    #[test]
    fn rgb24_byte_order_is_r_g_b_and_rows_are_exact() {
        // 2x2, pitch 6: every pixel distinct, so a wrong offset or order shows.
        let data = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
        let image = rgb24_to_rgb(&data, 2, 2, 6).unwrap();
        assert_eq!(image.get_pixel(0, 0).0, [1, 2, 3]);
        assert_eq!(image.get_pixel(1, 0).0, [4, 5, 6]);
        assert_eq!(image.get_pixel(0, 1).0, [7, 8, 9]);
        assert_eq!(image.get_pixel(1, 1).0, [10, 11, 12]);
        assert_eq!(image.into_raw(), data);
    }

    #[test]
    fn rgb24_skips_row_padding() {
        // 4 pixels = 12 bytes per row, padded to 16 with 0xEE.
        let data = rgb24_solid(4, 3, 16, [255, 0, 0]);
        assert_eq!(data.len(), 48);
        let image = rgb24_to_rgb(&data, 4, 3, 16).unwrap();
        assert_eq!(image.dimensions(), (4, 3));
        assert!(image.pixels().all(|p| p.0 == [255, 0, 0]));
        // The last row's padding may be missing, but not a byte of the row itself.
        assert!(rgb24_to_rgb(&data[..44], 4, 3, 16).is_ok());
        assert_corrupt(rgb24_to_rgb(&data[..43], 4, 3, 16), PixelFormat::Rgb24);
        // Odd pitch: drivers need not align RGB24 rows.
        let odd = rgb24_solid(3, 2, 10, [0, 0, 255]);
        let image = rgb24_to_rgb(&odd, 3, 2, 10).unwrap();
        assert!(image.pixels().all(|p| p.0 == [0, 0, 255]));
    }

    #[test]
    fn packed_row_bytes_per_format() {
        assert_eq!(packed_row_bytes(PixelFormat::Mjpeg, 640), None);
        assert_eq!(packed_row_bytes(PixelFormat::Yuyv, 640), Some(1280));
        assert_eq!(packed_row_bytes(PixelFormat::Uyvy, 641), Some(1284));
        assert_eq!(packed_row_bytes(PixelFormat::Rgb24, 641), Some(1923));
        assert_eq!(
            packed_row_bytes(PixelFormat::Rgb24, u32::MAX),
            Some(u64::from(u32::MAX) * 3)
        );
    }

    /// 64x32: left half red, right half blue, JPEG-encoded by the image crate.
    fn two_colour_jpeg() -> Vec<u8> {
        let image = RgbImage::from_fn(64, 32, |x, _| {
            if x < 32 {
                Rgb([255, 0, 0])
            } else {
                Rgb([0, 0, 255])
            }
        });
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
            .encode_image(&image)
            .unwrap();
        jpeg
    }

    /// The same JPEG without its DHT segments, as many UVC cameras send it.
    fn without_huffman_tables(jpeg: &[u8]) -> Vec<u8> {
        let first_scan = jpeg_layout(jpeg).unwrap().first_scan;
        let mut stripped = jpeg[..2].to_vec();
        let mut pos = 2;
        while pos < first_scan {
            let length = usize::from(u16::from_be_bytes([jpeg[pos + 2], jpeg[pos + 3]]));
            if jpeg[pos + 1] != MARKER_DHT {
                stripped.extend_from_slice(&jpeg[pos..pos + 2 + length]);
            }
            pos += 2 + length;
        }
        stripped.extend_from_slice(&jpeg[first_scan..]);
        stripped
    }

    #[test]
    fn mjpeg_decodes_size_and_colours() {
        let image = mjpeg_to_rgb(&two_colour_jpeg()).unwrap();
        assert_eq!(image.dimensions(), (64, 32));
        assert_near(image.get_pixel(8, 16), [255, 0, 0], 12);
        assert_near(image.get_pixel(56, 16), [0, 0, 255], 12);
    }

    #[test]
    fn mjpeg_without_huffman_tables_gets_the_standard_ones() {
        let jpeg = two_colour_jpeg();
        let stripped = without_huffman_tables(&jpeg);
        assert!(stripped.len() < jpeg.len());
        assert!(!jpeg_layout(&stripped).unwrap().has_huffman_tables);
        // The decoder alone cannot read it, so the insertion is what makes it work.
        assert!(image::load_from_memory_with_format(&stripped, ImageFormat::Jpeg).is_err());
        // The image crate encodes with the standard tables: pixels must match exactly.
        let repaired = mjpeg_to_rgb(&stripped).unwrap();
        assert_eq!(repaired, mjpeg_to_rgb(&jpeg).unwrap());
        // Inserted once, and the result is a standalone JPEG.
        let complete = jpeg_with_huffman_tables(&stripped).unwrap();
        assert!(matches!(complete, Cow::Owned(_)));
        assert!(jpeg_layout(&complete).unwrap().has_huffman_tables);
        assert!(image::load_from_memory_with_format(&complete, ImageFormat::Jpeg).is_ok());
        assert!(matches!(
            jpeg_with_huffman_tables(&jpeg).unwrap(),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn standard_dht_segment_has_the_right_length() {
        let segment = standard_dht_segment();
        assert_eq!(&segment[..4], &[0xFF, 0xC4, 0x01, 0xA2]);
        assert_eq!(segment.len(), 2 + 0x1A2);
        for (lengths, values) in [
            (&STD_LUMA_DC_LENGTHS, STD_DC_VALUES.len()),
            (&STD_CHROMA_DC_LENGTHS, STD_DC_VALUES.len()),
            (&STD_LUMA_AC_LENGTHS, STD_LUMA_AC_VALUES.len()),
            (&STD_CHROMA_AC_LENGTHS, STD_CHROMA_AC_VALUES.len()),
        ] {
            let count: usize = lengths.iter().map(|&n| usize::from(n)).sum();
            assert_eq!(count, values);
        }
    }

    #[test]
    fn truncated_mjpeg_is_corrupt() {
        let jpeg = two_colour_jpeg();
        let message = assert_corrupt(
            mjpeg_to_rgb(&jpeg[..jpeg.len() * 3 / 5]),
            PixelFormat::Mjpeg,
        );
        assert!(message.contains("truncated"), "{message}");
        // Only the EOI missing: the decoder would pad silently, the check must not.
        assert_corrupt(mjpeg_to_rgb(&jpeg[..jpeg.len() - 2]), PixelFormat::Mjpeg);
        // Every cut, in both forms, is an error and never a panic.
        let stripped = without_huffman_tables(&jpeg);
        for data in [&jpeg, &stripped] {
            for cut in 0..data.len() {
                assert_corrupt(mjpeg_to_rgb(&data[..cut]), PixelFormat::Mjpeg);
            }
        }
    }

    /// xorshift: deterministic noise without a rand dependency.
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut state = seed | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn random_bytes_are_corrupt_not_a_panic() {
        for seed in 0..50 {
            let mut data = noise(seed, 2000);
            assert_corrupt(mjpeg_to_rgb(&data), PixelFormat::Mjpeg);
            // Behind a valid SOI the walker has to look further.
            data[..2].copy_from_slice(&[0xFF, 0xD8]);
            assert_corrupt(mjpeg_to_rgb(&data), PixelFormat::Mjpeg);
        }
        assert_corrupt(mjpeg_to_rgb(&[]), PixelFormat::Mjpeg);
        assert_corrupt(mjpeg_to_rgb(&[0xFF, 0xD8, 0xFF, 0xD9]), PixelFormat::Mjpeg);
    }

    #[test]
    fn damaged_mjpeg_never_panics() {
        let jpeg = two_colour_jpeg();
        let flips = noise(7, 400);
        for (i, pair) in flips.chunks_exact(2).enumerate() {
            let mut damaged = jpeg.clone();
            let at = (usize::from(pair[0]) * 256 + usize::from(pair[1]) + i) % damaged.len();
            damaged[at] ^= pair[1] | 1;
            // Ok or Err both fine; the point is reaching this line.
            let _ = mjpeg_to_rgb(&damaged);
        }
    }

    #[test]
    fn decode_buffer_uses_only_bytesused_and_honours_the_error_flag() {
        let jpeg = two_colour_jpeg();
        let mut mapped = jpeg.clone();
        mapped.resize(jpeg.len() + 4096, 0xAB);
        let meta = Metadata {
            bytesused: jpeg.len() as u32,
            ..Metadata::default()
        };
        let frame = decode_buffer(&mapped, &meta, PixelFormat::Mjpeg, 64, 32, 0).unwrap();
        assert_eq!(frame.jpeg.as_deref(), Some(&jpeg[..]));
        assert_eq!(frame.rgb.dimensions(), (64, 32));

        let damaged = Metadata {
            flags: BufferFlags::ERROR,
            ..meta
        };
        assert!(decode_buffer(&mapped, &damaged, PixelFormat::Mjpeg, 64, 32, 0).is_err());
        let empty = Metadata::default();
        assert!(decode_buffer(&mapped, &empty, PixelFormat::Mjpeg, 64, 32, 0).is_err());

        let yuyv = yuyv_solid(4, 2, 8, GREEN);
        let meta = Metadata {
            bytesused: 16,
            ..Metadata::default()
        };
        let frame = decode_buffer(&yuyv, &meta, PixelFormat::Yuyv, 4, 2, 8).unwrap();
        assert!(frame.jpeg.is_none());
        assert_near(frame.rgb.get_pixel(3, 1), [0, 255, 0], 2);
        // A driver claiming more bytes than the buffer holds is clamped, not trusted.
        let lying = Metadata {
            bytesused: 1 << 30,
            ..meta
        };
        assert!(decode_buffer(&yuyv, &lying, PixelFormat::Yuyv, 4, 2, 8).is_ok());

        let uyvy = uyvy_solid(4, 2, 8, BLUE);
        let frame = decode_buffer(&uyvy, &meta, PixelFormat::Uyvy, 4, 2, 8).unwrap();
        assert_eq!(frame.format, PixelFormat::Uyvy);
        assert!(frame.jpeg.is_none());
        assert_near(frame.rgb.get_pixel(3, 1), [0, 0, 255], 2);

        let mut rgb24 = rgb24_solid(4, 2, 12, [255, 0, 0]);
        rgb24.resize(4096, 0xAB);
        let meta = Metadata {
            bytesused: 24,
            ..Metadata::default()
        };
        let frame = decode_buffer(&rgb24, &meta, PixelFormat::Rgb24, 4, 2, 12).unwrap();
        assert_eq!(frame.format, PixelFormat::Rgb24);
        assert!(frame.jpeg.is_none());
        assert!(frame.rgb.pixels().all(|p| p.0 == [255, 0, 0]));
        // bytesused one short of the frame: corrupt, even though the mapping is larger.
        let short = Metadata {
            bytesused: 23,
            ..Metadata::default()
        };
        assert!(decode_buffer(&rgb24, &short, PixelFormat::Rgb24, 4, 2, 12).is_err());
    }

    #[test]
    fn format_choice_prefers_mjpeg() {
        let mjpg = FourCC::new(b"MJPG");
        let jpeg = FourCC::new(b"JPEG");
        let yuyv = FourCC::new(b"YUYV");
        let nv12 = FourCC::new(b"NV12");
        let auto = FormatChoice::Auto;
        assert_eq!(
            choose_format(auto, &[yuyv, mjpg]),
            Some((PixelFormat::Mjpeg, mjpg))
        );
        assert_eq!(
            choose_format(auto, &[nv12, yuyv]),
            Some((PixelFormat::Yuyv, yuyv))
        );
        assert_eq!(
            choose_format(FormatChoice::Mjpeg, &[jpeg]),
            Some((PixelFormat::Mjpeg, jpeg))
        );
        assert_eq!(
            choose_format(FormatChoice::Yuyv, &[mjpg, yuyv]),
            Some((PixelFormat::Yuyv, yuyv))
        );
        assert_eq!(choose_format(FormatChoice::Mjpeg, &[yuyv]), None);
        assert_eq!(choose_format(auto, &[nv12]), None);
        assert_eq!(choose_format(auto, &[]), None);
    }

    #[test]
    fn format_choice_auto_prefers_mjpeg_yuyv_uyvy_rgb24() {
        let mjpg = FourCC::new(b"MJPG");
        let yuyv = FourCC::new(b"YUYV");
        let uyvy = FourCC::new(b"UYVY");
        let rgb3 = FourCC::new(b"RGB3");
        let bgr3 = FourCC::new(b"BGR3");
        let nv12 = FourCC::new(b"NV12");
        let auto = FormatChoice::Auto;
        // Listed worst first, so the driver's order cannot be what decides.
        let all = [nv12, bgr3, rgb3, uyvy, yuyv, mjpg];
        let expected = [
            (PixelFormat::Mjpeg, mjpg),
            (PixelFormat::Yuyv, yuyv),
            (PixelFormat::Uyvy, uyvy),
            (PixelFormat::Rgb24, rgb3),
        ];
        for (dropped, want) in expected.into_iter().enumerate() {
            let offered = &all[..all.len() - dropped];
            assert_eq!(choose_format(auto, offered), Some(want), "{dropped}");
        }
        assert_eq!(choose_format(auto, &[nv12, bgr3]), None);

        assert_eq!(
            choose_format(FormatChoice::Uyvy, &all),
            Some((PixelFormat::Uyvy, uyvy))
        );
        assert_eq!(
            choose_format(FormatChoice::Rgb24, &all),
            Some((PixelFormat::Rgb24, rgb3))
        );
        assert_eq!(choose_format(FormatChoice::Uyvy, &[yuyv, mjpg]), None);
        // BGR3 holds the same bytes in the other order: never taken for RGB24.
        assert_eq!(choose_format(FormatChoice::Rgb24, &[bgr3]), None);
    }

    #[test]
    fn format_names() {
        let names: Vec<String> = [
            PixelFormat::Mjpeg,
            PixelFormat::Yuyv,
            PixelFormat::Uyvy,
            PixelFormat::Rgb24,
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        // The log says what the status JSON says (crate::wire): the serde names.
        assert_eq!(names, ["mjpeg", "yuyv", "uyvy", "rgb24"]);
        assert_eq!(FormatChoice::Auto.to_string(), "auto");
    }

    #[test]
    fn settings_defaults_and_validation() {
        let settings = CameraSettings::default();
        assert_eq!(settings.device, PathBuf::from("/dev/video0"));
        assert_eq!(settings.format, FormatChoice::Auto);
        assert_eq!((settings.width, settings.height), (1280, 960));
        assert_eq!(settings.warmup_frames, 5);
        assert_eq!(settings.validate(), Ok(()));

        let width_zero = CameraSettings {
            width: 0,
            ..CameraSettings::default()
        };
        assert_eq!(
            width_zero.validate(),
            Err("camera.width: must be between 1 and 8192, got 0".to_string())
        );
        let too_tall = CameraSettings {
            height: 8193,
            ..CameraSettings::default()
        };
        assert!(too_tall
            .validate()
            .unwrap_err()
            .starts_with("camera.height:"));
        let slow = CameraSettings {
            warmup_frames: 301,
            ..CameraSettings::default()
        };
        assert!(slow
            .validate()
            .unwrap_err()
            .starts_with("camera.warmup_frames:"));
        let no_device = CameraSettings {
            device: PathBuf::new(),
            ..CameraSettings::default()
        };
        assert!(no_device
            .validate()
            .unwrap_err()
            .starts_with("camera.device:"));
        let nul = CameraSettings {
            device: PathBuf::from("/dev/vid\0eo0"),
            ..CameraSettings::default()
        };
        assert!(nul.validate().unwrap_err().starts_with("camera.device:"));
    }

    #[test]
    fn settings_deserialize_with_defaults_and_reject_unknown_keys() {
        use serde::de::value::{Error, MapDeserializer};
        use serde::de::IntoDeserializer;
        use serde::Deserialize;

        let partial = MapDeserializer::<_, Error>::new([("width", 640u32)].into_iter());
        let settings = CameraSettings::deserialize(partial).unwrap();
        assert_eq!(
            settings,
            CameraSettings {
                width: 640,
                ..CameraSettings::default()
            }
        );
        let typo = MapDeserializer::<_, Error>::new([("widht", 640u32)].into_iter());
        let message = CameraSettings::deserialize(typo).unwrap_err().to_string();
        assert!(message.contains("unknown field `widht`"), "{message}");

        let format = |text: &str| {
            FormatChoice::deserialize(IntoDeserializer::<Error>::into_deserializer(text))
        };
        assert_eq!(format("mjpeg").unwrap(), FormatChoice::Mjpeg);
        assert_eq!(format("auto").unwrap(), FormatChoice::Auto);
        assert_eq!(format("uyvy").unwrap(), FormatChoice::Uyvy);
        assert_eq!(format("rgb24").unwrap(), FormatChoice::Rgb24);
        assert!(format("MJPEG").is_err());
        assert!(format("rgb3").is_err());
        // Display writes what the config accepts.
        for choice in [
            FormatChoice::Auto,
            FormatChoice::Mjpeg,
            FormatChoice::Yuyv,
            FormatChoice::Uyvy,
            FormatChoice::Rgb24,
        ] {
            assert_eq!(format(&choice.to_string()).unwrap(), choice);
        }
    }

    #[test]
    fn open_nonexistent_device_names_the_path() {
        let settings = CameraSettings {
            device: PathBuf::from("/nonexistent/video9"),
            ..CameraSettings::default()
        };
        let error = Camera::open(&settings).unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, CaptureError::Open { .. }), "{message}");
        assert!(message.contains("/nonexistent/video9"), "{message}");
        assert!(message.contains("plugged in"), "{message}");
        assert!(!error.is_device_lost());
    }

    /// A fresh scratch directory (no tempfile dependency here).
    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("capture-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn open_rejects_a_file_that_is_not_a_camera() {
        let dir = scratch_dir("not-a-camera");
        let path = dir.join("video0");
        std::fs::write(&path, b"not a camera").unwrap();
        let settings = CameraSettings {
            device: path.clone(),
            ..CameraSettings::default()
        };
        let message = Camera::open(&settings).unwrap_err().to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("not a video4linux device"), "{message}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn open_refuses_invalid_settings_without_touching_devices() {
        let settings = CameraSettings {
            device: PathBuf::from("/dev/vid\0eo0"),
            ..CameraSettings::default()
        };
        let error = Camera::open(&settings).unwrap_err();
        assert!(
            matches!(error, CaptureError::InvalidSettings { .. }),
            "{error}"
        );
    }

    #[test]
    fn list_devices_sorts_numerically_and_explains_failures() {
        let dir = scratch_dir("list");
        for name in ["video10", "video2", "video0", "videofoo", "vbi0"] {
            std::fs::write(dir.join(name), b"").unwrap();
        }
        let lines = list_devices_in(&dir);
        assert_eq!(lines.len(), 3, "{lines:#?}");
        for (line, name) in lines.iter().zip(["video0", "video2", "video10"]) {
            assert!(line.contains(&format!("{name}: cannot query")), "{line}");
        }
        std::fs::remove_dir_all(&dir).unwrap();

        let empty = scratch_dir("list-empty");
        let lines = list_devices_in(&empty);
        assert_eq!(lines.len(), 1);
        assert!(lines[0].contains("plugged in"), "{}", lines[0]);
        std::fs::remove_dir_all(&empty).unwrap();

        let missing = list_devices_in(Path::new("/nonexistent/dev"));
        assert!(missing[0].starts_with("cannot read /nonexistent/dev"));
    }

    #[test]
    fn video_node_names() {
        assert_eq!(video_node_number("video0"), Some(0));
        assert_eq!(video_node_number("video42"), Some(42));
        assert_eq!(video_node_number("video"), None);
        assert_eq!(video_node_number("video-1"), None);
        assert_eq!(video_node_number("videofoo"), None);
        assert_eq!(video_node_number("vbi0"), None);
    }

    #[test]
    fn errors_name_the_device_and_say_what_to_do() {
        let device = PathBuf::from("/dev/video3");
        let lost = CaptureError::DeviceLost {
            device: device.clone(),
            source: io::Error::from_raw_os_error(ENODEV),
        };
        assert!(lost.is_device_lost());
        assert!(lost.to_string().contains("/dev/video3"));
        let timeout = stream_error(&device, io::Error::from(io::ErrorKind::TimedOut));
        assert!(matches!(timeout, CaptureError::Timeout { .. }));
        assert!(timeout.is_device_lost());
        assert!(timeout.to_string().contains("/dev/video3"));
        let denied = CaptureError::Open {
            device: device.clone(),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        };
        assert!(denied.to_string().contains("video group"));
        let bandwidth = CaptureError::Setup {
            device: device.clone(),
            step: "start streaming",
            source: io::Error::from_raw_os_error(ENOSPC),
        };
        assert!(bandwidth.to_string().contains("USB bandwidth"));
        let formats = CaptureError::NoSupportedFormat {
            device: device.clone(),
            wanted: FormatChoice::Mjpeg,
            offered: vec!["NV12 (Y/UV 4:2:0)".to_string()],
        };
        let message = formats.to_string();
        assert!(
            message.contains("NV12") && message.contains("\"mjpeg\""),
            "{message}"
        );
        assert!(
            message.contains("UYVY") && message.contains("RGB24"),
            "{message}"
        );
        assert!(!formats.is_device_lost());
        let corrupt = CaptureError::CorruptFrame {
            kind: PixelFormat::Yuyv,
            reason: "short".to_string(),
        };
        assert!(!corrupt.is_device_lost());
    }

    #[test]
    fn camera_can_move_to_a_capture_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<Camera>();
        assert_send::<Frame>();
    }
}
