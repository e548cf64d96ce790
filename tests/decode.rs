//! Decoding every kind of bad or unusual input: a clear error, never a panic.

mod common;

use dermaedge::vision::{decode, DecodeError, DecodeLimits};
use image::{DynamicImage, GrayImage, ImageBuffer, Luma, Rgb, RgbImage, Rgba, RgbaImage};

fn png(img: impl Into<DynamicImage>) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.into()
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

#[test]
fn real_sample_decodes() {
    let bytes = std::fs::read(common::samples().join("ISIC_0001100.jpg")).unwrap();
    let img = decode(&bytes, DecodeLimits::default()).unwrap();
    assert_eq!(img.dimensions(), (384, 384));
}

#[test]
fn non_image_and_empty_file() {
    assert!(matches!(
        decode(b"hello, not an image", DecodeLimits::default()),
        Err(DecodeError::Format(_))
    ));
    assert!(matches!(
        decode(b"", DecodeLimits::default()),
        Err(DecodeError::Format(_))
    ));
}

#[test]
fn truncated_jpeg() {
    let bytes = std::fs::read(common::samples().join("ISIC_0001100.jpg")).unwrap();
    let err = decode(&bytes[..bytes.len() / 3], DecodeLimits::default()).unwrap_err();
    assert!(matches!(err, DecodeError::Corrupt(_)), "{err}");
}

#[test]
fn tiny_images_are_refused() {
    let one = png(RgbImage::new(1, 1));
    let err = decode(&one, DecodeLimits::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "image is 1x1, smaller than the minimum 32x32"
    );
}

#[test]
fn decompression_bomb_is_refused_before_decoding() {
    let bomb = common::png_header_only(20_000, 20_000);
    let err = decode(&bomb, DecodeLimits::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "image is 20000x20000, over the limit of 50000000 pixels (decompression bomb guard)"
    );
}

/// Pixels are not the whole cost: a 16-bit RGBA image takes 8 bytes per pixel to decode. The
/// byte limit refuses it before the decoder allocates, naming the size and the key.
#[test]
fn deep_images_are_refused_by_their_decoded_size() {
    let deep: ImageBuffer<Rgba<u16>, Vec<u16>> = ImageBuffer::new(1024, 1024);
    let bytes = png(DynamicImage::ImageRgba16(deep));
    let limits = DecodeLimits {
        max_decoded_bytes: 4 << 20,
        ..Default::default()
    };
    let err = decode(&bytes, limits).unwrap_err();
    assert!(matches!(err, DecodeError::TooManyBytes { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "image is 1024x1024 at 8 bytes per pixel: 8 MB to decode, over the limit of 4 MB (analysis.max_decoded_mb)"
    );
    // The same pixels at 8-bit RGB fit.
    let small = png(RgbImage::new(1024, 1024));
    assert!(decode(&small, limits).is_ok());
}

#[test]
fn grayscale_16_bit_and_rgba_become_rgb() {
    let gray = GrayImage::from_pixel(40, 40, Luma([90]));
    assert_eq!(
        decode(&png(gray), DecodeLimits::default())
            .unwrap()
            .get_pixel(0, 0),
        &Rgb([90, 90, 90])
    );
    let deep: ImageBuffer<Luma<u16>, Vec<u16>> = ImageBuffer::from_pixel(40, 40, Luma([0x8000]));
    assert_eq!(
        decode(&png(deep), DecodeLimits::default())
            .unwrap()
            .get_pixel(3, 3),
        &Rgb([128, 128, 128])
    );
    let rgba = RgbaImage::from_pixel(40, 40, Rgba([10, 20, 30, 0]));
    assert_eq!(
        decode(&png(rgba), DecodeLimits::default())
            .unwrap()
            .get_pixel(0, 0),
        &Rgb([10, 20, 30])
    );
}

#[test]
fn exif_orientation_is_applied() {
    let img = RgbImage::from_fn(64, 32, |x, _| {
        if x < 8 {
            Rgb([250, 250, 250])
        } else {
            Rgb([20, 20, 20])
        }
    });
    let rotated = decode(
        &common::jpeg_with_orientation(&img, 6),
        DecodeLimits::default(),
    )
    .unwrap();
    assert_eq!(rotated.dimensions(), (32, 64));
    // orientation 6 = rotate 90° clockwise: the bright left edge ends up at the top
    assert!(rotated.get_pixel(16, 2)[0] > 200 && rotated.get_pixel(16, 60)[0] < 60);
}

/// A deterministic fuzz pass for CI: thousands of mutated sample files through the decoder
/// (the cargo-fuzz target in fuzz/ explores further). Nothing may panic.
#[test]
fn mutated_files_never_panic() {
    let originals = [
        std::fs::read(common::samples().join("ISIC_0001101.jpg")).unwrap(),
        std::fs::read(common::samples().join("masks/ISIC_0000900.png")).unwrap(),
    ];
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..1500 {
        let mut bytes = originals[i % 2].clone();
        match next() % 3 {
            0 => {
                for _ in 0..(1 + next() % 8) {
                    let at = (next() as usize) % bytes.len();
                    bytes[at] = next() as u8;
                }
            }
            1 => bytes.truncate((next() as usize) % bytes.len()),
            _ => {
                let at = (next() as usize) % bytes.len();
                let n = (next() as usize % 64).min(bytes.len() - at);
                bytes.drain(at..at + n);
            }
        }
        let limits = DecodeLimits {
            max_pixels: 4_000_000,
            min_side: 32,
            ..Default::default()
        };
        let _ = decode(&bytes, limits);
    }
}
