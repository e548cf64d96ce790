//! Pixel conversion of uncompressed frames: packed YUYV and UYVY 4:2:2 (BT.601, limited
//! range) and RGB24, with row padding, checked against the negotiated geometry so a short or
//! odd buffer is a `CorruptFrame`, never a panic.

use image::RgbImage;

use super::{CaptureError, PixelFormat};

/// Bytes in one packed 4:2:2 (YUYV or UYVY) row: every two pixels share four bytes; an odd
/// width still needs the whole last pair.
pub(crate) fn yuv422_row_bytes(width: u32) -> u64 {
    u64::from(width).div_ceil(2) * 4
}

/// Bytes in one RGB24 row, without padding.
pub(crate) fn rgb24_row_bytes(width: u32) -> u64 {
    u64::from(width) * 3
}

/// Bytes in one unpadded row of an uncompressed format; None for MJPEG, which has no rows.
pub(crate) fn packed_row_bytes(format: PixelFormat, width: u32) -> Option<u64> {
    match format {
        PixelFormat::Mjpeg => None,
        PixelFormat::Yuyv | PixelFormat::Uyvy => Some(yuv422_row_bytes(width)),
        PixelFormat::Rgb24 => Some(rgb24_row_bytes(width)),
    }
}

/// Where each byte of a 4:2:2 pixel pair sits in its 4-byte group.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Yuv422Order {
    pub(crate) y0: usize,
    pub(crate) u: usize,
    pub(crate) y1: usize,
    pub(crate) v: usize,
}

pub(crate) const YUYV_ORDER: Yuv422Order = Yuv422Order {
    y0: 0,
    u: 1,
    y1: 2,
    v: 3,
};
pub(crate) const UYVY_ORDER: Yuv422Order = Yuv422Order {
    u: 0,
    y0: 1,
    v: 2,
    y1: 3,
};

/// Converts packed YUYV 4:2:2 (BT.601, limited range, as UVC cameras send it) to RGB.
/// `bytesperline` is the row pitch, at least the row itself; rows may be padded.
pub fn yuyv_to_rgb(
    data: &[u8],
    width: u32,
    height: u32,
    bytesperline: u32,
) -> Result<RgbImage, CaptureError> {
    yuv422_to_rgb(
        PixelFormat::Yuyv,
        YUYV_ORDER,
        data,
        width,
        height,
        bytesperline,
    )
}

/// Converts packed UYVY 4:2:2 (bytes U Y0 V Y1; BT.601, limited range) to RGB.
/// `bytesperline` is the row pitch, at least the row itself; rows may be padded.
pub fn uyvy_to_rgb(
    data: &[u8],
    width: u32,
    height: u32,
    bytesperline: u32,
) -> Result<RgbImage, CaptureError> {
    yuv422_to_rgb(
        PixelFormat::Uyvy,
        UYVY_ORDER,
        data,
        width,
        height,
        bytesperline,
    )
}

/// Copies packed RGB24 (V4L2 `RGB3`: bytes R G B per pixel) into an image, dropping any row
/// padding. `bytesperline` is the row pitch, at least `3 * width`.
pub fn rgb24_to_rgb(
    data: &[u8],
    width: u32,
    height: u32,
    bytesperline: u32,
) -> Result<RgbImage, CaptureError> {
    let geometry = PackedGeometry {
        kind: PixelFormat::Rgb24,
        width,
        height,
        bytesperline,
        row_bytes: rgb24_row_bytes(width),
    };
    convert_packed(geometry, data, |pixels, rgb| rgb.extend_from_slice(pixels))
}

/// The 4:2:2 conversion shared by YUYV and UYVY; only the byte order differs.
pub(crate) fn yuv422_to_rgb(
    kind: PixelFormat,
    order: Yuv422Order,
    data: &[u8],
    width: u32,
    height: u32,
    bytesperline: u32,
) -> Result<RgbImage, CaptureError> {
    let width_px = width as usize;
    let geometry = PackedGeometry {
        kind,
        width,
        height,
        bytesperline,
        row_bytes: yuv422_row_bytes(width),
    };
    convert_packed(geometry, data, |pixels, rgb| {
        for (pair, group) in pixels.chunks_exact(4).enumerate() {
            let &[b0, b1, b2, b3] = group else { continue };
            let bytes = [b0, b1, b2, b3];
            let (u, v) = (bytes[order.u], bytes[order.v]);
            rgb.extend_from_slice(&bt601_to_rgb(bytes[order.y0], u, v));
            if pair * 2 + 1 < width_px {
                rgb.extend_from_slice(&bt601_to_rgb(bytes[order.y1], u, v));
            }
        }
    })
}

/// Size and layout of one uncompressed frame, as negotiated with the driver.
pub(crate) struct PackedGeometry {
    pub(crate) kind: PixelFormat,
    pub(crate) width: u32,
    pub(crate) height: u32,
    pub(crate) bytesperline: u32,
    /// Bytes of pixel data in one row, padding excluded.
    pub(crate) row_bytes: u64,
}

/// Checks an uncompressed frame against its geometry, then converts it row by row:
/// `convert_row` gets exactly one row's pixel bytes (padding stripped) and appends `width`
/// RGB pixels. Every mismatch is a `CorruptFrame`, never a panic.
pub(crate) fn convert_packed(
    geometry: PackedGeometry,
    data: &[u8],
    mut convert_row: impl FnMut(&[u8], &mut Vec<u8>),
) -> Result<RgbImage, CaptureError> {
    let PackedGeometry {
        kind,
        width,
        height,
        bytesperline,
        row_bytes,
    } = geometry;
    let corrupt = |reason: String| CaptureError::CorruptFrame { kind, reason };
    if width == 0 || height == 0 {
        return Err(corrupt(format!("frame size {width}x{height} is empty")));
    }
    let pitch = u64::from(bytesperline);
    if pitch < row_bytes {
        return Err(corrupt(format!(
            "bytesperline {bytesperline} is shorter than a {width}-pixel row ({row_bytes} bytes)"
        )));
    }
    // The last row needs no padding after it.
    let needed = pitch
        .saturating_mul(u64::from(height) - 1)
        .saturating_add(row_bytes);
    if (data.len() as u64) < needed {
        return Err(corrupt(format!(
            "buffer holds {} bytes, a {width}x{height} frame needs {needed}",
            data.len()
        )));
    }
    // Both fit in usize: they are at most data.len().
    let (Ok(pitch), Ok(row_bytes)) = (usize::try_from(pitch), usize::try_from(row_bytes)) else {
        return Err(corrupt("frame too large for this machine".to_string()));
    };
    let Some(rgb_len) = (width as usize)
        .checked_mul(height as usize)
        .and_then(|n| n.checked_mul(3))
    else {
        return Err(corrupt("frame too large for this machine".to_string()));
    };
    let mut rgb = Vec::with_capacity(rgb_len);
    for row in data.chunks(pitch).take(height as usize) {
        let Some(pixels) = row.get(..row_bytes) else {
            return Err(corrupt("row shorter than expected".to_string()));
        };
        convert_row(pixels, &mut rgb);
    }
    RgbImage::from_raw(width, height, rgb)
        .ok_or_else(|| corrupt("converted pixel count does not match the frame size".to_string()))
}

/// BT.601 limited range (Y 16..235, U/V 16..240) in 8-bit fixed point.
pub(crate) fn bt601_to_rgb(y: u8, u: u8, v: u8) -> [u8; 3] {
    let c = 298 * (i32::from(y) - 16);
    let d = i32::from(u) - 128;
    let e = i32::from(v) - 128;
    [
        clamp_to_u8((c + 409 * e + 128) >> 8),
        clamp_to_u8((c - 100 * d - 208 * e + 128) >> 8),
        clamp_to_u8((c + 516 * d + 128) >> 8),
    ]
}

pub(crate) fn clamp_to_u8(value: i32) -> u8 {
    value.clamp(0, 255) as u8
}
