//! The JPEG marker walk: SOI, then segment by segment (scan data skipped) to EOI. It is the
//! completeness check for both decoded files (`vision::decode`) and camera frames
//! (`capture::mjpeg`), because the JPEG decoder fills a scan cut short with grey rather than
//! failing, and a frame cut short (a camera unplugged mid-transfer, a file still being
//! copied) must not be analyzed; the metadata stripper (`metadata.rs`) keeps or drops the
//! same segments. It lives here, in the lower layer, so that capture can use it and vision
//! never depends on capture.
//!
//! Walking segments rather than searching for marker bytes is what makes it reliable: an EXIF
//! thumbnail's own SOI ... EOI is APP1 payload and is skipped, so it cannot stand in for a
//! missing image, and the walk stops at the EOI that ends the image the decoder reads.

pub(crate) struct JpegLayout {
    /// Offset of the first SOS marker: where missing tables go.
    pub(crate) first_scan: usize,
    /// A DHT segment precedes the first scan.
    pub(crate) has_huffman_tables: bool,
}

const MARKER_SOI: u8 = 0xD8;
const MARKER_EOI: u8 = 0xD9;
const MARKER_SOS: u8 = 0xDA;
pub(crate) const MARKER_DHT: u8 = 0xC4;
pub(crate) const TRUNCATED: &str = "JPEG ends before its EOI marker (truncated frame)";

/// One marker and what belongs to it: `data[start..end]` from its 0xFF (fill bytes included)
/// to the next marker; for SOS the scan data too.
pub(crate) struct Segment {
    pub(crate) marker: u8,
    pub(crate) start: usize,
    pub(crate) end: usize,
}

/// Walks the marker segments from SOI to EOI (the last one returned), skipping over scan
/// data. Errors say where the structure breaks.
pub(crate) fn segments(data: &[u8]) -> Result<Vec<Segment>, String> {
    if !data.starts_with(&[0xFF, MARKER_SOI]) {
        return Err("not a JPEG: no SOI marker at the start".to_string());
    }
    let mut found = Vec::new();
    let mut pos = 2;
    loop {
        let start = pos;
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
            MARKER_EOI => {
                found.push(Segment {
                    marker,
                    start,
                    end: pos,
                });
                return Ok(found);
            }
            // Markers without a length field.
            0x01 | 0xD0..=0xD7 => {
                found.push(Segment {
                    marker,
                    start,
                    end: pos,
                });
                continue;
            }
            MARKER_SOI => return Err(format!("JPEG: second SOI marker at byte {start}")),
            _ => {}
        }
        let Some(&[high, low]) = data.get(pos..pos + 2) else {
            return Err(TRUNCATED.to_string());
        };
        let length = usize::from(u16::from_be_bytes([high, low]));
        if length < 2 {
            return Err(format!(
                "JPEG: marker {marker:02X} at byte {start} has invalid length {length}"
            ));
        }
        let segment_end = pos + length;
        if segment_end > data.len() {
            return Err(TRUNCATED.to_string());
        }
        pos = if marker == MARKER_SOS {
            end_of_scan_data(data, segment_end).ok_or_else(|| TRUNCATED.to_string())?
        } else {
            segment_end
        };
        found.push(Segment {
            marker,
            start,
            end: pos,
        });
    }
}

/// Where the first scan starts and whether Huffman tables come before it.
pub(crate) fn jpeg_layout(data: &[u8]) -> Result<JpegLayout, String> {
    let segments = segments(data)?;
    let first_scan = segments
        .iter()
        .position(|s| s.marker == MARKER_SOS)
        .ok_or_else(|| "JPEG has no image data (no SOS)".to_string())?;
    Ok(JpegLayout {
        first_scan: segments[first_scan].start,
        has_huffman_tables: segments[..first_scan]
            .iter()
            .any(|s| s.marker == MARKER_DHT),
    })
}

/// Offset of the marker that ends the entropy-coded data starting at `start`. Inside scan data
/// a 0xFF byte is followed by 0x00 (stuffing), a restart marker or fill, never anything else.
fn end_of_scan_data(data: &[u8], start: usize) -> Option<usize> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img =
            image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 8) as u8, (y * 8) as u8, 90]));
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .encode_image(&img)
            .unwrap();
        out
    }

    /// `main` with an APP1 segment right after its SOI holding `thumbnail` (a whole JPEG),
    /// as cameras write EXIF thumbnails.
    fn with_thumbnail(main: &[u8], thumbnail: &[u8]) -> Vec<u8> {
        let mut app1 = b"Exif\x00\x00".to_vec();
        app1.extend_from_slice(thumbnail);
        let mut out = main[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&u16::try_from(app1.len() + 2).unwrap().to_be_bytes());
        out.extend(app1);
        out.extend_from_slice(&main[2..]);
        out
    }

    #[test]
    fn a_complete_jpeg_is_walked_to_its_eoi_and_every_cut_is_truncated() {
        let data = jpeg(40, 32);
        let layout = jpeg_layout(&data).unwrap();
        assert_eq!(
            &data[layout.first_scan..layout.first_scan + 2],
            &[0xFF, MARKER_SOS]
        );
        assert!(layout.has_huffman_tables);
        for cut in 2..data.len() {
            assert_eq!(
                jpeg_layout(&data[..cut]).err().as_deref(),
                Some(TRUNCATED),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn an_exif_thumbnail_is_payload_and_cannot_stand_in_for_the_image() {
        let main = jpeg(40, 32);
        let data = with_thumbnail(&main, &jpeg(8, 8));
        let first_scan = jpeg_layout(&data).unwrap().first_scan;
        // The image's last scan without its EOI: refused although the thumbnail has one.
        assert_eq!(
            jpeg_layout(&data[..data.len() - 2]).err().as_deref(),
            Some(TRUNCATED)
        );
        // Cut before the image's own scan: the thumbnail's SOS ... EOI is the last one in the
        // bytes, which a search for the last SOS followed by an EOI (the check decode had
        // before this walk) took for a complete image.
        assert_eq!(
            jpeg_layout(&data[..first_scan]).err().as_deref(),
            Some(TRUNCATED)
        );
    }

    #[test]
    fn a_cut_image_followed_by_a_complete_one_is_refused() {
        // A byte search finds the second image's SOS and EOI and accepted this; the decoder
        // reads the first image and would pad its cut scan with grey.
        let first = jpeg(40, 32);
        let first_scan = jpeg_layout(&first).unwrap().first_scan;
        let mut data = first[..(first_scan + first.len()) / 2].to_vec(); // mid-scan
        data.extend(jpeg(40, 32));
        let err = jpeg_layout(&data).err().unwrap();
        assert!(err.contains("second SOI"), "{err}");
    }

    #[test]
    fn a_complete_image_with_a_cut_trailer_is_accepted() {
        // The walk stops at the image's EOI: what follows (a second image without its EOI, as
        // in a multi-picture file cut short) is not read by the decoder either. A byte search
        // for the last SOS followed by an EOI refused this complete image.
        let mut data = jpeg(40, 32);
        let trailer = jpeg(16, 16);
        data.extend_from_slice(&trailer[..trailer.len() - 2]);
        assert!(jpeg_layout(&data).is_ok());
    }
}
