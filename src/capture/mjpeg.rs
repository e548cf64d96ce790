//! MJPEG frames: the completeness check (SOI ... EOI, the scan not cut short) and the
//! standard Huffman tables that many UVC cameras leave out, inserted where they are missing.

use std::borrow::Cow;

use image::{ImageFormat, RgbImage};

use super::{CaptureError, PixelFormat};

/// Decodes one MJPEG frame. Many UVC cameras omit the Huffman tables (the "MJPEG" convention
/// assumes the standard ones), so they are inserted when missing. The structure is checked
/// first because the decoder silently pads a truncated scan with grey.
pub fn mjpeg_to_rgb(data: &[u8]) -> Result<RgbImage, CaptureError> {
    let complete = jpeg_with_huffman_tables(data)?;
    image::load_from_memory_with_format(&complete, ImageFormat::Jpeg)
        .map(|decoded| decoded.to_rgb8())
        .map_err(|error| CaptureError::CorruptFrame {
            kind: PixelFormat::Mjpeg,
            reason: format!("JPEG decoder: {error}"),
        })
}

/// The JPEG with the standard Huffman tables inserted before its first scan when it has none
/// there, after checking it is complete (SOI ... EOI). Borrowed when nothing was missing.
pub fn jpeg_with_huffman_tables(data: &[u8]) -> Result<Cow<'_, [u8]>, CaptureError> {
    let layout = jpeg_layout(data).map_err(|reason| CaptureError::CorruptFrame {
        kind: PixelFormat::Mjpeg,
        reason,
    })?;
    if layout.has_huffman_tables {
        return Ok(Cow::Borrowed(data));
    }
    let (head, tail) = data.split_at(layout.first_scan);
    let tables = standard_dht_segment();
    let mut complete = Vec::with_capacity(data.len() + tables.len());
    complete.extend_from_slice(head);
    complete.extend_from_slice(&tables);
    complete.extend_from_slice(tail);
    Ok(Cow::Owned(complete))
}

pub(crate) struct JpegLayout {
    /// Offset of the first SOS marker: where missing tables go.
    pub(crate) first_scan: usize,
    /// A DHT segment precedes the first scan.
    pub(crate) has_huffman_tables: bool,
}

pub(crate) const MARKER_SOI: u8 = 0xD8;
pub(crate) const MARKER_EOI: u8 = 0xD9;
pub(crate) const MARKER_SOS: u8 = 0xDA;
pub(crate) const MARKER_DHT: u8 = 0xC4;
pub(crate) const TRUNCATED: &str = "JPEG ends before its EOI marker (truncated frame)";

/// Walks the marker segments from SOI to EOI, skipping over scan data.
pub(crate) fn jpeg_layout(data: &[u8]) -> Result<JpegLayout, String> {
    if !data.starts_with(&[0xFF, MARKER_SOI]) {
        return Err("not a JPEG: no SOI marker at the start".to_string());
    }
    let mut pos = 2;
    let mut first_scan = None;
    let mut has_huffman_tables = false;
    loop {
        let marker_start = pos;
        match data.get(pos) {
            Some(0xFF) => {}
            Some(_) => return Err(format!("JPEG: expected a marker at byte {pos}")),
            None => return Err(TRUNCATED.to_string()),
        }
        // Any number of 0xFF fill bytes may precede a marker code.
        while data.get(pos) == Some(&0xFF) {
            pos += 1;
        }
        let Some(&marker) = data.get(pos) else {
            return Err(TRUNCATED.to_string());
        };
        pos += 1;
        match marker {
            MARKER_EOI => break,
            // Markers without a length field.
            0x01 | 0xD0..=0xD7 => continue,
            MARKER_SOI => return Err(format!("JPEG: second SOI marker at byte {marker_start}")),
            _ => {}
        }
        let Some(&[high, low]) = data.get(pos..pos + 2) else {
            return Err(TRUNCATED.to_string());
        };
        let length = usize::from(u16::from_be_bytes([high, low]));
        if length < 2 {
            return Err(format!(
                "JPEG: marker {marker:02X} at byte {marker_start} has invalid length {length}"
            ));
        }
        let segment_end = pos + length;
        if segment_end > data.len() {
            return Err(TRUNCATED.to_string());
        }
        if marker == MARKER_DHT && first_scan.is_none() {
            has_huffman_tables = true;
        }
        pos = if marker == MARKER_SOS {
            first_scan.get_or_insert(marker_start);
            end_of_scan_data(data, segment_end).ok_or_else(|| TRUNCATED.to_string())?
        } else {
            segment_end
        };
    }
    let first_scan = first_scan.ok_or_else(|| "JPEG has no image data (no SOS)".to_string())?;
    Ok(JpegLayout {
        first_scan,
        has_huffman_tables,
    })
}

/// Offset of the marker that ends the entropy-coded data starting at `start`. Inside scan data
/// a 0xFF byte is followed by 0x00 (stuffing), a restart marker or fill, never anything else.
pub(crate) fn end_of_scan_data(data: &[u8], start: usize) -> Option<usize> {
    let mut pos = start;
    loop {
        pos += data.get(pos..)?.iter().position(|&b| b == 0xFF)?;
        match data.get(pos + 1)? {
            0x00 | 0xD0..=0xD7 => pos += 2,
            0xFF => pos += 1,
            _ => return Some(pos),
        }
    }
}

// The standard Huffman tables of ITU T.81 Annex K.3 (K.3 to K.6), which "MJPEG" assumes.
pub(crate) const STD_LUMA_DC_LENGTHS: [u8; 16] = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0];
pub(crate) const STD_CHROMA_DC_LENGTHS: [u8; 16] = [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0];
pub(crate) const STD_DC_VALUES: [u8; 12] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
pub(crate) const STD_LUMA_AC_LENGTHS: [u8; 16] =
    [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7D];
pub(crate) const STD_LUMA_AC_VALUES: [u8; 162] = [
    0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61, 0x07,
    0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xA1, 0x08, 0x23, 0x42, 0xB1, 0xC1, 0x15, 0x52, 0xD1, 0xF0,
    0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0A, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x25, 0x26, 0x27, 0x28,
    0x29, 0x2A, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49,
    0x4A, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69,
    0x6A, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89,
    0x8A, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7,
    0xA8, 0xA9, 0xAA, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6, 0xB7, 0xB8, 0xB9, 0xBA, 0xC2, 0xC3, 0xC4, 0xC5,
    0xC6, 0xC7, 0xC8, 0xC9, 0xCA, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0xDA, 0xE1, 0xE2,
    0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8, 0xE9, 0xEA, 0xF1, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8,
    0xF9, 0xFA,
];
pub(crate) const STD_CHROMA_AC_LENGTHS: [u8; 16] =
    [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77];
pub(crate) const STD_CHROMA_AC_VALUES: [u8; 162] = [
    0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61, 0x71,
    0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xA1, 0xB1, 0xC1, 0x09, 0x23, 0x33, 0x52, 0xF0,
    0x15, 0x62, 0x72, 0xD1, 0x0A, 0x16, 0x24, 0x34, 0xE1, 0x25, 0xF1, 0x17, 0x18, 0x19, 0x1A, 0x26,
    0x27, 0x28, 0x29, 0x2A, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48,
    0x49, 0x4A, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68,
    0x69, 0x6A, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87,
    0x88, 0x89, 0x8A, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0xA2, 0xA3, 0xA4, 0xA5,
    0xA6, 0xA7, 0xA8, 0xA9, 0xAA, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6, 0xB7, 0xB8, 0xB9, 0xBA, 0xC2, 0xC3,
    0xC4, 0xC5, 0xC6, 0xC7, 0xC8, 0xC9, 0xCA, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0xDA,
    0xE2, 0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8, 0xE9, 0xEA, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8,
    0xF9, 0xFA,
];

/// One DHT segment holding all four standard tables (class << 4 | table id, then lengths and
/// values), as ffmpeg and libjpeg insert for MJPEG.
pub(crate) fn standard_dht_segment() -> Vec<u8> {
    let tables: [(u8, &[u8; 16], &[u8]); 4] = [
        (0x00, &STD_LUMA_DC_LENGTHS, &STD_DC_VALUES),
        (0x10, &STD_LUMA_AC_LENGTHS, &STD_LUMA_AC_VALUES),
        (0x01, &STD_CHROMA_DC_LENGTHS, &STD_DC_VALUES),
        (0x11, &STD_CHROMA_AC_LENGTHS, &STD_CHROMA_AC_VALUES),
    ];
    let mut body = Vec::new();
    for (class_and_id, lengths, values) in tables {
        body.push(class_and_id);
        body.extend_from_slice(lengths);
        body.extend_from_slice(values);
    }
    // 420 bytes: the length field cannot overflow.
    let length = u16::try_from(body.len() + 2).unwrap_or(u16::MAX);
    let mut segment = vec![0xFF, MARKER_DHT];
    segment.extend_from_slice(&length.to_be_bytes());
    segment.extend_from_slice(&body);
    segment
}
