//! Bytes to an RGB frame. Frames come from cameras, a watched folder and the command line,
//! none of them trusted: sizes are checked before any pixel is allocated (decompression
//! bombs, thumbnails too small to analyze), and a truncated JPEG is refused because the
//! decoder would quietly pad it with grey and the analysis would run on a half-grey frame.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

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
}

/// Decoding limits (the config's decompression-bomb guard).
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    pub max_pixels: u64,
    pub min_side: u32,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_pixels: 50_000_000,
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
        Some(image::ImageFormat::Jpeg) if !jpeg_is_complete(bytes) => {
            return Err(DecodeError::Corrupt(
                "JPEG data ends before its end-of-image marker".into(),
            ))
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

/// The JPEG decoder fills a truncated scan with grey rather than failing; a frame cut short
/// (a camera unplugged mid-transfer) must not be analyzed. Inside entropy-coded data 0xFF is
/// always followed by 0x00 or a restart marker, so the end-of-image marker (FF D9) after the
/// last start-of-scan (FF DA) is the real end of the image (an EXIF thumbnail's ends earlier).
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last_sos = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    match last_sos {
        Some(i) => bytes[i..].windows(2).any(|w| w == [0xFF, 0xD9]),
        None => false,
    }
}

fn classify_error(e: image::ImageError) -> DecodeError {
    match e {
        image::ImageError::Unsupported(u) => DecodeError::Format(u.to_string()),
        other => DecodeError::Corrupt(other.to_string()),
    }
}
