//! Frame quality (exposure and focus) and the working resolution that quality, the mask
//! clean-up and the measurements run at. Dark, blown-out or blurred frames are worth
//! refusing before any model runs on them; a bounded working size keeps that check cheap on
//! a large frame without moving its figures much.

use image::{GrayImage, Luma, RgbImage};
use serde::Serialize;

use super::{crop, crop_resize, luma, Rect};

/// Exposure and focus of a frame.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct FrameQuality {
    /// Mean luma (0-255) inside the usable field.
    pub mean_luma: f32,
    /// Fraction of field pixels at luma >= 250.
    pub overexposed_fraction: f32,
    /// Variance of the Laplacian of the field, scaled to 512 px on the long side.
    pub sharpness: f32,
}

/// The usable field scaled to at most `max_side` pixels on its long side: quality, mask
/// clean-up and measurements run at this working resolution (their figures barely move with
/// the scale, their cost does). Returns the image and the scale (<= 1).
pub fn working_field(img: &RgbImage, field: Rect, max_side: u32) -> (RgbImage, f64) {
    let long = field.width().max(field.height());
    if long <= max_side {
        return (crop(img, field), 1.0);
    }
    let s = f64::from(max_side) / f64::from(long);
    let w = ((f64::from(field.width()) * s).round() as u32).max(1);
    let h = ((f64::from(field.height()) * s).round() as u32).max(1);
    (crop_resize(img, field, w, h), s)
}

/// Exposure and focus of the (working-resolution) field.
pub fn frame_quality(roi: &RgbImage) -> FrameQuality {
    let n = f64::from(roi.width()) * f64::from(roi.height());
    let (mut sum, mut over) = (0f64, 0f64);
    let gray = GrayImage::from_fn(roi.width(), roi.height(), |x, y| {
        let l = luma(roi.get_pixel(x, y));
        sum += f64::from(l);
        if l >= 250 {
            over += 1.0;
        }
        Luma([l as u8])
    });
    let lap = imageproc::filter::laplacian_filter(&gray);
    let vals: Vec<f64> = lap.pixels().map(|p| f64::from(p[0])).collect();
    let mean = vals.iter().sum::<f64>() / vals.len() as f64;
    let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64;
    FrameQuality {
        mean_luma: (sum / n) as f32,
        overexposed_fraction: (over / n) as f32,
        sharpness: var as f32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    #[test]
    fn frame_quality_sees_dark_bright_and_blurred_frames() {
        let dark = frame_quality(&RgbImage::from_pixel(64, 64, Rgb([10, 10, 10])));
        assert!(dark.mean_luma < 11.0 && dark.sharpness < 1e-6);
        let white = frame_quality(&RgbImage::from_pixel(64, 64, Rgb([255, 255, 255])));
        assert!(white.overexposed_fraction > 0.99);
        let checker = RgbImage::from_fn(64, 64, |x, y| {
            if (x / 2 + y / 2) % 2 == 0 {
                Rgb([200; 3])
            } else {
                Rgb([60; 3])
            }
        });
        assert!(frame_quality(&checker).sharpness > 1000.0);
    }
}
