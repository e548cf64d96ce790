//! What an image file says besides its pixels. Phones and some cameras write EXIF (the place,
//! as GPS coordinates, the owner, the time), XMP, IPTC, comments; PNG files text chunks. The
//! device keeps and may publish the images it analyzes, so its copies carry the pixels and
//! what is needed to show them right (JFIF, the ICC colour profile, Adobe's colour
//! transform), nothing else. Lossless: segments and chunks are dropped, pixels are not
//! touched. An image whose EXIF turns it (orientation) loses that with the EXIF, so the
//! caller stores the decoded, turned frame instead ([`turned_by_metadata`]).

use std::io::Cursor;

use image::{ImageDecoder, ImageReader};

use super::jpeg::segments;

/// `bytes` without the metadata segments (JPEG) or chunks (PNG). Anything else, or a file whose
/// structure cannot be walked, is an error: the caller then stores a re-encoded frame.
pub fn strip_metadata(bytes: &[u8]) -> Result<Vec<u8>, String> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        strip_png(bytes)
    } else if bytes.starts_with(&[0xFF, 0xD8]) {
        strip_jpeg(bytes)
    } else {
        Err("neither JPEG nor PNG".into())
    }
}

/// True when the file's metadata turns or mirrors the image (EXIF orientation other than 1).
pub fn turned_by_metadata(bytes: &[u8]) -> bool {
    let orientation = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .ok()
        .and_then(|r| r.into_decoder().ok())
        .and_then(|mut d| d.orientation().ok());
    !matches!(
        orientation,
        None | Some(image::metadata::Orientation::NoTransforms)
    )
}

/// JPEG segments kept: APP0 (JFIF), APP2 (ICC profile), APP14 (Adobe colour transform) and
/// every non-APP segment (tables, frame header, scans, EOI). Dropped: APP1 (EXIF, XMP),
/// APP3-APP13 and APP15 (vendor data, IPTC), COM (comments), and anything after EOI.
fn keep_jpeg_segment(marker: u8) -> bool {
    match marker {
        0xE0 | 0xE2 | 0xEE => true,
        0xE1..=0xEF | 0xFE => false,
        _ => true,
    }
}

fn strip_jpeg(data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(data.len());
    out.extend_from_slice(&data[..2]);
    for s in segments(data)? {
        if keep_jpeg_segment(s.marker) {
            out.extend_from_slice(&data[s.start..s.end]);
        }
    }
    Ok(out)
}

/// PNG chunks dropped: text (tEXt, zTXt, iTXt), EXIF (eXIf) and the modification time (tIME).
fn strip_png(data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = data[..8].to_vec();
    let mut pos = 8;
    while pos < data.len() {
        let header = data
            .get(pos..pos + 8)
            .ok_or("PNG: ends inside a chunk header")?;
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let end = pos
            .checked_add(12)
            .and_then(|p| p.checked_add(len))
            .filter(|&e| e <= data.len())
            .ok_or("PNG: a chunk runs past the end of the file")?;
        let kind = &header[4..8];
        if !matches!(kind, b"tEXt" | b"zTXt" | b"iTXt" | b"eXIf" | b"tIME") {
            out.extend_from_slice(&data[pos..end]);
        }
        pos = end;
        if kind == b"IEND" {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::ImageEncoder;

    fn pixels() -> image::RgbImage {
        image::RgbImage::from_fn(40, 30, |x, y| {
            image::Rgb([(x * 6) as u8, (y * 8) as u8, 90])
        })
    }

    fn segment(marker: u8, payload: &[u8]) -> Vec<u8> {
        let mut s = vec![0xFF, marker];
        s.extend_from_slice(&u16::try_from(payload.len() + 2).unwrap().to_be_bytes());
        s.extend_from_slice(payload);
        s
    }

    #[test]
    fn jpeg_loses_exif_xmp_and_comments_not_pixels() {
        let mut plain = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut plain, 90)
            .encode_image(&pixels())
            .unwrap();
        let mut tagged = plain[..2].to_vec();
        tagged.extend(segment(0xE1, b"Exif\0\0GPS 52.52N 13.40E Jane Doe"));
        tagged.extend(segment(
            0xE1,
            b"http://ns.adobe.com/xap/1.0/\0<x:creator>Jane</x:creator>",
        ));
        tagged.extend(segment(0xFE, b"patient Jane Doe"));
        tagged.extend(segment(0xE2, b"ICC_PROFILE\0keep"));
        tagged.extend_from_slice(&plain[2..]);

        let clean = strip_metadata(&tagged).unwrap();
        let text = String::from_utf8_lossy(&clean);
        assert!(!text.contains("Jane") && !text.contains("GPS"), "{text}");
        assert!(text.contains("ICC_PROFILE"));
        let a = image::load_from_memory(&plain).unwrap().to_rgb8();
        let b = image::load_from_memory(&clean).unwrap().to_rgb8();
        assert_eq!(a, b);
        assert!(!turned_by_metadata(&clean));
    }

    #[test]
    fn png_loses_text_chunks_not_pixels() {
        let mut plain = Vec::new();
        image::codecs::png::PngEncoder::new(&mut plain)
            .write_image(pixels().as_raw(), 40, 30, image::ExtendedColorType::Rgb8)
            .unwrap();
        // A tEXt chunk after IHDR (8 signature + 25 IHDR bytes); the CRC is not checked here.
        let text = b"Author\0Jane Doe";
        let mut chunk = u32::try_from(text.len()).unwrap().to_be_bytes().to_vec();
        chunk.extend_from_slice(b"tEXt");
        chunk.extend_from_slice(text);
        chunk.extend_from_slice(&[0, 0, 0, 0]);
        let mut tagged = plain[..33].to_vec();
        tagged.extend(chunk);
        tagged.extend_from_slice(&plain[33..]);

        let clean = strip_metadata(&tagged).unwrap();
        assert!(!String::from_utf8_lossy(&clean).contains("Jane"));
        assert_eq!(clean, plain);
    }

    #[test]
    fn what_cannot_be_walked_is_an_error() {
        assert!(strip_metadata(b"GIF89a").is_err());
        assert!(strip_metadata(&[0xFF, 0xD8, 0x00]).is_err());
        assert!(strip_metadata(b"\x89PNG\r\n\x1a\n\0\0\0\x20IHDR").is_err());
    }
}
