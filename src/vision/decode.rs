//! Bytes to an RGB frame. Frames come from cameras, a watched folder and the command line,
//! none of them trusted: sizes are checked before any pixel is allocated (decompression
//! bombs, images too small to analyze), and a truncated JPEG is refused (the marker walk in
//! `jpeg`) because the decoder would quietly pad it with grey and the analysis would run on a
//! half-grey frame.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

use super::jpeg::jpeg_layout;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("not a supported image (JPEG or PNG): {0}")]
    Format(String),
    #[error("corrupt or truncated image: {0}")]
    Corrupt(String),
    #[error(
        "image is {width}x{height}, over the limit of {limit} pixels (decompression bomb guard)"
    )]
    TooLarge { width: u32, height: u32, limit: u64 },
    #[error("image is {width}x{height}, smaller than the minimum {min}x{min}")]
    TooSmall { width: u32, height: u32, min: u32 },
    #[error(
        "image is {width}x{height} at {bytes_per_pixel} bytes per pixel: {mb} MB to decode, over the limit of {limit_mb} MB (analysis.max_decoded_mb)"
    )]
    TooManyBytes {
        width: u32,
        height: u32,
        bytes_per_pixel: u64,
        mb: u64,
        limit_mb: u64,
    },
}

/// Decoding limits (the config's decompression-bomb guard).
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    pub max_pixels: u64,
    /// The decoder's own buffer at most (pixels x bytes per pixel: a 16-bit RGBA image takes
    /// 8 per pixel), checked before it is allocated.
    pub max_decoded_bytes: u64,
    pub min_side: u32,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_pixels: 50_000_000,
            max_decoded_bytes: 256 << 20,
            min_side: 32,
        }
    }
}

/// Decode JPEG/PNG bytes into 8-bit RGB with the EXIF orientation applied. Grayscale, 16-bit
/// and alpha images are converted; sizes are checked before any pixel is allocated.
pub fn decode(bytes: &[u8], limits: DecodeLimits) -> Result<RgbImage, DecodeError> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| DecodeError::Format(e.to_string()))?;
    match reader.format() {
        None => return Err(DecodeError::Format("unrecognised file signature".into())),
        // Before decoding: the decoder fills a scan cut short with grey instead of failing.
        Some(image::ImageFormat::Jpeg) => {
            jpeg_layout(bytes).map_err(DecodeError::Corrupt)?;
        }
        _ => {}
    }
    let mut decoder = reader.into_decoder().map_err(classify_error)?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(DecodeError::TooLarge {
            width,
            height,
            limit: limits.max_pixels,
        });
    }
    let decoded = decoder.total_bytes();
    if decoded > limits.max_decoded_bytes {
        let pixels = (u64::from(width) * u64::from(height)).max(1);
        return Err(DecodeError::TooManyBytes {
            width,
            height,
            bytes_per_pixel: decoded / pixels,
            mb: decoded >> 20,
            limit_mb: limits.max_decoded_bytes >> 20,
        });
    }
    if width < limits.min_side || height < limits.min_side {
        return Err(DecodeError::TooSmall {
            width,
            height,
            min: limits.min_side,
        });
    }
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(classify_error)?;
    img.apply_orientation(orientation);
    Ok(img.to_rgb8())
}

fn classify_error(e: image::ImageError) -> DecodeError {
    match e {
        image::ImageError::Unsupported(u) => DecodeError::Format(u.to_string()),
        other => DecodeError::Corrupt(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 4) as u8, (y * 4) as u8, 90]));
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .encode_image(&img)
            .unwrap();
        out
    }

    #[test]
    fn a_cut_jpeg_with_a_complete_one_appended_is_corrupt() {
        // The check decode had before the marker walk (the last SOS followed by an EOI) let
        // this through, and the decoder returned the first image with its cut scan in grey.
        let first = jpeg(64, 48);
        let first_scan = jpeg_layout(&first).unwrap().first_scan;
        let mut data = first[..(first_scan + first.len()) / 2].to_vec(); // mid-scan
        data.extend(jpeg(64, 48));
        let result = decode(&data, DecodeLimits::default()).map(|img| img.dimensions());
        assert!(matches!(result, Err(DecodeError::Corrupt(_))), "{result:?}");
    }

    #[test]
    fn a_complete_jpeg_with_a_cut_trailer_decodes_as_the_image_alone() {
        // The decoder stops at the image's EOI; a trailer cut short (a multi-picture file's
        // second image without its EOI) does not make the image incomplete. The check decode
        // had before the marker walk refused this.
        let image = jpeg(64, 48);
        let mut data = image.clone();
        let trailer = jpeg(32, 32);
        data.extend_from_slice(&trailer[..trailer.len() - 2]);
        let alone = decode(&image, DecodeLimits::default()).unwrap();
        assert_eq!(decode(&data, DecodeLimits::default()).unwrap(), alone);
    }
}
