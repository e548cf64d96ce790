//! `dermaedge devices`: the V4L2 nodes on this machine, their driver, card, formats and
//! frame sizes, as lines for people.

use std::path::{Path, PathBuf};

use v4l::capability::Flags as CapabilityFlags;
use v4l::framesize::FrameSizeEnum;
use v4l::video::Capture;
use v4l::Device;

use super::{choose_format, describe_format, list_or_nothing, open_hint, setup_hint, FormatChoice};

/// `dermaedge devices`: every /dev/video* node with its driver and card name and, for
/// capture devices, their formats and frame sizes, as human-readable lines. Nodes that
/// cannot be opened are listed with the reason.
pub fn list_devices() -> Vec<String> {
    list_devices_in(Path::new("/dev"))
}

pub(crate) fn list_devices_in(dir: &Path) -> Vec<String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) => return vec![format!("cannot read {}: {error}", dir.display())],
    };
    let mut nodes: Vec<(u32, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let number = video_node_number(&entry.file_name().to_string_lossy())?;
            Some((number, entry.path()))
        })
        .collect();
    if nodes.is_empty() {
        return vec![format!(
            "no video devices in {}: is the dermatoscope plugged in? (`dmesg | grep -i uvc` \
             shows whether the kernel saw it)",
            dir.display()
        )];
    }
    // Numeric order: video2 before video10.
    nodes.sort();
    nodes
        .iter()
        .flat_map(|(_, path)| describe_node(path))
        .collect()
}

/// 7 for "video7"; None for "video", "videofoo" and other names.
pub(crate) fn video_node_number(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("video")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub(crate) fn describe_node(path: &Path) -> Vec<String> {
    let shown = path.display();
    let device = match Device::with_path(path) {
        Ok(device) => device,
        Err(error) => {
            return vec![format!(
                "{shown}: cannot open: {error}; {}",
                open_hint(&error)
            )]
        }
    };
    let caps = match device.query_caps() {
        Ok(caps) => caps,
        Err(error) => {
            return vec![format!(
                "{shown}: cannot query it: {error}{}",
                setup_hint(&error)
            )]
        }
    };
    let heading = format!(
        "{shown}: {} (driver {}, {})",
        caps.card, caps.driver, caps.bus
    );
    if !caps.capabilities.contains(CapabilityFlags::VIDEO_CAPTURE) {
        return vec![format!(
            "{heading}: not a video capture node (e.g. UVC metadata), skipped"
        )];
    }
    let formats = match device.enum_formats() {
        Ok(formats) => formats,
        Err(error) => return vec![heading, format!("  cannot list formats: {error}")],
    };
    if formats.is_empty() {
        return vec![heading, "  offers no formats".to_string()];
    }
    let mut lines = vec![heading];
    for description in &formats {
        let usable = if choose_format(FormatChoice::Auto, &[description.fourcc]).is_some() {
            " [usable]"
        } else {
            ""
        };
        let sizes = match device.enum_framesizes(description.fourcc) {
            Ok(sizes) => list_or_nothing(
                &sizes
                    .iter()
                    .map(|size| describe_frame_size(&size.size))
                    .collect::<Vec<_>>(),
            ),
            Err(error) => format!("sizes unknown ({error})"),
        };
        lines.push(format!(
            "  {}{usable}: {sizes}",
            describe_format(description)
        ));
    }
    lines
}

pub(crate) fn describe_frame_size(size: &FrameSizeEnum) -> String {
    match size {
        FrameSizeEnum::Discrete(discrete) => format!("{}x{}", discrete.width, discrete.height),
        FrameSizeEnum::Stepwise(range) => format!(
            "{}x{} to {}x{} in steps of {}x{}",
            range.min_width,
            range.min_height,
            range.max_width,
            range.max_height,
            range.step_width,
            range.step_height
        ),
    }
}
