//! Pixels, from bytes to figures: decoding with limits, the manifest's preprocessing steps,
//! the lesion mask, frame quality and the ABCD-style lesion measurements.
//!
//! One file per concern, each read against its own contract: `decode` against untrusted
//! input, `jpeg` against the JPEG marker structure, `preprocess` against docs/manifest.md and
//! the trainer, `mask` against the segmenter's output, `quality` and `measure` against what
//! the pipeline reports. The submodules stay private (`jpeg` is crate-visible for capture's
//! MJPEG frames) and everything public is re-exported here, so callers keep naming
//! `vision::decode`, `vision::Rect`, ... and the split does not leak into them.

mod decode;
pub(crate) mod jpeg;
mod mask;
mod measure;
mod metadata;
mod preprocess;
mod quality;

pub use decode::{decode, DecodeError, DecodeLimits};
pub use mask::{
    border_contact, fill_holes, frame_mask, largest_component_filled, mask_from_logits, overlay,
};
pub use measure::{measure, Measurements};
pub use metadata::{strip_metadata, turned_by_metadata};
pub use preprocess::{
    crop, crop_border_box, crop_gray, crop_resize, lesion_box, luma, normalize, prepare,
    prepare_with_border, resize, shades_of_gray, Prepared, Rect,
};
pub use quality::{frame_quality, working_field, FrameQuality};

/// Test images shared by the submodules' tests.
#[cfg(test)]
mod test_images {
    use image::{GrayImage, Luma};

    /// A filled ellipse (255) centred at (cx, cy) with radii rx, ry on a black mask.
    pub(super) fn disc(w: u32, h: u32, cx: f64, cy: f64, rx: f64, ry: f64) -> GrayImage {
        GrayImage::from_fn(w, h, |x, y| {
            let d = ((f64::from(x) - cx) / rx).powi(2) + ((f64::from(y) - cy) / ry).powi(2);
            Luma([if d <= 1.0 { 255 } else { 0 }])
        })
    }
}
