//! The manifest's preprocessing steps (docs/manifest.md: `crop_border`, `lesion_crop`,
//! `resize`, `shades_of_gray`, `normalize`) and [`Rect`], the pixel box they hand on.
//!
//! They follow docs/manifest.md to the letter (integer luma, round half up, Pillow's bilinear
//! filter) so that the device feeds its models what the trainer measured them on; the tests
//! repeat the trainer's own cases for that reason.

use std::borrow::Cow;

use fast_image_resize as fr;
use image::imageops;
use image::{GrayImage, Rgb, RgbImage};
use serde::Serialize;
use tract_onnx::prelude::{tract_ndarray, Tensor};

use crate::manifest::Step;

/// A half-open pixel box `[top, bottom) x [left, right)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Rect {
    pub top: u32,
    pub bottom: u32,
    pub left: u32,
    pub right: u32,
}

impl Rect {
    pub fn whole(w: u32, h: u32) -> Rect {
        Rect {
            top: 0,
            bottom: h,
            left: 0,
            right: w,
        }
    }
    pub fn width(&self) -> u32 {
        self.right - self.left
    }
    pub fn height(&self) -> u32 {
        self.bottom - self.top
    }
    /// This box, given relative to `outer`, in the coordinates `outer` is given in.
    pub fn within(self, outer: Rect) -> Rect {
        Rect {
            top: outer.top + self.top,
            bottom: outer.top + self.bottom,
            left: outer.left + self.left,
            right: outer.left + self.right,
        }
    }
}

pub fn luma(p: &Rgb<u8>) -> u32 {
    (77 * u32::from(p[0]) + 150 * u32::from(p[1]) + 29 * u32::from(p[2])) >> 8
}

/// The image without its dark dermatoscope border (docs/manifest.md, `crop_border`).
pub fn crop_border_box(img: &RgbImage, luma_threshold: u8, min_bright: f64, min_keep: f64) -> Rect {
    let (w, h) = img.dimensions();
    let mut rows = vec![0u32; h as usize];
    let mut cols = vec![0u32; w as usize];
    for (row, count) in img.as_raw().chunks_exact(3 * w as usize).zip(&mut rows) {
        for (px, col) in row.chunks_exact(3).zip(&mut cols) {
            let bright = luma(&Rgb([px[0], px[1], px[2]])) > u32::from(luma_threshold);
            *count += u32::from(bright);
            *col += u32::from(bright);
        }
    }
    let bright_rows: Vec<u32> = (0..h)
        .filter(|&y| f64::from(rows[y as usize]) > min_bright * f64::from(w))
        .collect();
    let bright_cols: Vec<u32> = (0..w)
        .filter(|&x| f64::from(cols[x as usize]) > min_bright * f64::from(h))
        .collect();
    let (Some(&top), Some(&last_row), Some(&left), Some(&last_col)) = (
        bright_rows.first(),
        bright_rows.last(),
        bright_cols.first(),
        bright_cols.last(),
    ) else {
        return Rect::whole(w, h);
    };
    let r = Rect {
        top,
        bottom: last_row + 1,
        left,
        right: last_col + 1,
    };
    if f64::from(r.height()) < min_keep * f64::from(h)
        || f64::from(r.width()) < min_keep * f64::from(w)
    {
        return Rect::whole(w, h);
    }
    r
}

/// The square lesion crop around a mask (docs/manifest.md, `lesion_crop`).
pub fn lesion_box(mask: &GrayImage, margin: f64) -> Option<Rect> {
    let (w, h) = mask.dimensions();
    let (mut y0, mut y1, mut x0, mut x1) = (u32::MAX, 0, u32::MAX, 0);
    for (x, y, p) in mask.enumerate_pixels() {
        if p[0] > 0 {
            y0 = y0.min(y);
            y1 = y1.max(y + 1);
            x0 = x0.min(x);
            x1 = x1.max(x + 1);
        }
    }
    if y0 == u32::MAX {
        return None;
    }
    let side = (f64::from((y1 - y0).max(x1 - x0)) * (1.0 + 2.0 * margin) + 0.5).floor() as i64;
    let side = side.clamp(1, i64::from(w.min(h)));
    let top = ((i64::from(y0 + y1) - side).div_euclid(2)).clamp(0, i64::from(h) - side);
    let left = ((i64::from(x0 + x1) - side).div_euclid(2)).clamp(0, i64::from(w) - side);
    Some(Rect {
        top: top as u32,
        bottom: (top + side) as u32,
        left: left as u32,
        right: (left + side) as u32,
    })
}

pub fn crop(img: &RgbImage, r: Rect) -> RgbImage {
    imageops::crop_imm(img, r.left, r.top, r.width(), r.height()).to_image()
}

pub fn crop_gray(img: &GrayImage, r: Rect) -> GrayImage {
    imageops::crop_imm(img, r.left, r.top, r.width(), r.height()).to_image()
}

/// Shades-of-Gray colour constancy (docs/manifest.md, `shades_of_gray`).
pub fn shades_of_gray(img: &RgbImage, p: f64) -> RgbImage {
    let n = f64::from(img.width()) * f64::from(img.height());
    let mut sums = [0f64; 3];
    for px in img.pixels() {
        for c in 0..3 {
            sums[c] += (f64::from(px[c]) / 255.0).powf(p);
        }
    }
    let e: Vec<f64> = sums
        .iter()
        .map(|s| (s / n).powf(1.0 / p).max(1e-6))
        .collect();
    let norm = e.iter().map(|v| v * v).sum::<f64>().sqrt();
    let gain: Vec<f64> = e.iter().map(|v| norm / (3f64.sqrt() * v)).collect();
    let mut out = img.clone();
    for px in out.pixels_mut() {
        for c in 0..3 {
            px[c] = (f64::from(px[c]) * gain[c] + 0.5).floor().min(255.0) as u8;
        }
    }
    out
}

pub fn resize(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    crop_resize(img, Rect::whole(img.width(), img.height()), width, height)
}

/// Cut `r` out of `img` and resize it to `width` x `height` in one pass, with the triangle
/// filter whose support widens with the reduction: Pillow's `BILINEAR`, which the trainer
/// uses. fast_image_resize implements that same convolution with SIMD (SSE4.1/AVX2/Neon);
/// on a 1280x960 frame it is an order of magnitude faster than `imageops::resize`, and
/// reading the crop in place saves copying it first.
pub fn crop_resize(img: &RgbImage, r: Rect, width: u32, height: u32) -> RgbImage {
    if (r.width(), r.height()) == (width, height) {
        return crop(img, r);
    }
    // A cropped view, not `ResizeOptions::crop`: that one lets the filter read pixels beyond
    // the box (the dark border), where Pillow resizes the cut-out alone. The typed API keeps
    // the code generated to RGB8 (the untyped one instantiates every pixel format: +3 MB).
    let whole = fr::images::TypedImageRef::<fr::pixels::U8x3>::from_buffer(
        img.width(),
        img.height(),
        img.as_raw(),
    )
    .expect("an RgbImage's buffer holds width x height RGB pixels");
    let src = fr::images::TypedCroppedImage::new(whole, r.left, r.top, r.width(), r.height())
        .expect("the box lies inside the image");
    let mut out = vec![0u8; width as usize * height as usize * 3];
    let mut dst = fr::images::TypedImage::<fr::pixels::U8x3>::from_buffer(width, height, &mut out)
        .expect("a width x height RGB buffer");
    let options =
        fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear));
    fr::Resizer::new()
        .resize_typed(&src, &mut dst, &options)
        .expect("same pixel type on both sides");
    RgbImage::from_raw(width, height, out).expect("width x height RGB pixels")
}

/// `(I * scale - mean) / std` as a 1x3xHxW tensor; `flip` mirrors left-right (for TTA).
pub fn normalize(img: &RgbImage, mean: [f32; 3], std: [f32; 3], scale: f32, flip: bool) -> Tensor {
    let (w, h) = img.dimensions();
    let arr =
        tract_ndarray::Array4::from_shape_fn((1, 3, h as usize, w as usize), |(_, c, y, x)| {
            let x = if flip { w as usize - 1 - x } else { x };
            let v = img.get_pixel(x as u32, y as u32)[c];
            (f32::from(v) * scale - mean[c]) / std[c]
        });
    arr.into()
}

/// The result of running a manifest's steps on a frame.
pub struct Prepared {
    /// The uint8 image just before `normalize` (the model's exact input, as an image).
    pub image: RgbImage,
    /// The `crop_border` box in frame coordinates (the whole frame without that step).
    pub border_box: Rect,
    /// The `lesion_crop` box in frame coordinates, when one was applied.
    pub lesion_box: Option<Rect>,
    pub normalize: ([f32; 3], [f32; 3], f32),
}

impl Prepared {
    pub fn tensor(&self, flip: bool) -> Tensor {
        let (mean, std, scale) = self.normalize;
        normalize(&self.image, mean, std, scale, flip)
    }
}

/// Run the manifest's steps on `img`. `mask` (frame-sized) is needed by `lesion_crop`.
pub fn prepare(img: &RgbImage, steps: &[Step], mask: Option<&GrayImage>) -> Prepared {
    prepare_with_border(img, steps, mask, None)
}

/// [`prepare`], reusing a `crop_border` box already computed on this frame (`known`: that
/// step and its box) when the steps start with the same step: the segmenter and the
/// classifier usually share it, and it scans every pixel of the frame.
pub fn prepare_with_border(
    img: &RgbImage,
    steps: &[Step],
    mask: Option<&GrayImage>,
    known: Option<(&Step, Rect)>,
) -> Prepared {
    // Crops only narrow `view`, a box over `pixels`; the pixels are copied once, by the resize
    // (or a colour step). While `pixels` is still the frame, `view` is in frame coordinates
    // and the frame-sized `mask` lines up with it.
    let mut pixels = Cow::Borrowed(img);
    let mut view = Rect::whole(img.width(), img.height());
    let mut border_box = view;
    let mut lesion = None;
    let mut norm = ([0.0; 3], [1.0; 3], 1.0 / 255.0);
    let materialize = |pixels: &mut Cow<RgbImage>, view: &mut Rect| {
        if *view != Rect::whole(pixels.width(), pixels.height()) {
            *pixels = Cow::Owned(crop(pixels, *view));
            *view = Rect::whole(pixels.width(), pixels.height());
        }
    };
    let on_frame = |pixels: &Cow<RgbImage>| matches!(pixels, Cow::Borrowed(_));
    for step in steps {
        match step {
            Step::CropBorder {
                luma_threshold,
                min_bright_fraction,
                min_keep,
            } => {
                let r = match known {
                    Some((k, r)) if k == step && on_frame(&pixels) && view == border_box => r,
                    _ => {
                        materialize(&mut pixels, &mut view);
                        crop_border_box(&pixels, *luma_threshold, *min_bright_fraction, *min_keep)
                    }
                };
                view = r.within(view);
                if on_frame(&pixels) {
                    border_box = view;
                }
            }
            Step::LesionCrop { margin } => {
                let Some(m) = mask.filter(|_| on_frame(&pixels)) else {
                    continue;
                };
                if let Some(r) = lesion_box(&crop_gray(m, view), *margin) {
                    view = r.within(view);
                    lesion = Some(view);
                }
            }
            Step::Resize { width, height, .. } => {
                pixels = Cow::Owned(crop_resize(&pixels, view, *width, *height));
                view = Rect::whole(*width, *height);
            }
            Step::ShadesOfGray { p } => {
                materialize(&mut pixels, &mut view);
                pixels = Cow::Owned(shades_of_gray(&pixels, *p));
            }
            Step::Normalize { mean, std, scale } => norm = (*mean, *std, *scale),
        }
    }
    materialize(&mut pixels, &mut view);
    Prepared {
        image: pixels.into_owned(),
        border_box,
        lesion_box: lesion,
        normalize: norm,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vision::test_images::disc;
    use image::Luma;

    fn bordered(w: u32, h: u32, (top, bottom, left, right): (u32, u32, u32, u32)) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            if y >= top && y < h - bottom && x >= left && x < w - right {
                Rgb([180, 180, 180])
            } else {
                Rgb([0, 0, 0])
            }
        })
    }

    #[test]
    fn prepare_crops_in_frame_coordinates_and_resizes_the_cut_out_once() {
        let mut frame = bordered(120, 90, (5, 7, 9, 3));
        for (x, y, p) in frame.enumerate_pixels_mut() {
            if p[0] > 0 {
                *p = Rgb([(x * 2) as u8, (y * 2) as u8, 100]); // a gradient: crops show
            }
        }
        let mask = disc(120, 90, 70.0, 40.0, 12.0, 9.0);
        let steps = [
            Step::CropBorder {
                luma_threshold: 20,
                min_bright_fraction: 0.5,
                min_keep: 0.5,
            },
            Step::LesionCrop { margin: 0.25 },
            Step::Resize {
                width: 16,
                height: 16,
                filter: "triangle".into(),
            },
            Step::Normalize {
                mean: [0.0; 3],
                std: [1.0; 3],
                scale: 1.0,
            },
        ];
        let p = prepare(&frame, &steps, Some(&mask));
        let field = Rect {
            top: 5,
            bottom: 83,
            left: 9,
            right: 117,
        };
        assert_eq!(p.border_box, field);
        let lesion = lesion_box(&crop_gray(&mask, field), 0.25)
            .unwrap()
            .within(field);
        assert_eq!(p.lesion_box, Some(lesion));
        assert_eq!(p.image, resize(&crop(&frame, lesion), 16, 16));
        // The classifier reuses the segmenter's border box: same result without the scan.
        let known = prepare_with_border(&frame, &steps, Some(&mask), Some((&steps[0], field)));
        assert_eq!((known.border_box, known.lesion_box), (field, Some(lesion)));
        assert_eq!(known.image, p.image);
        // Without a mask the lesion crop is skipped.
        let no_mask = prepare(&frame, &steps, None);
        assert_eq!(no_mask.lesion_box, None);
        assert_eq!(no_mask.image, resize(&crop(&frame, field), 16, 16));
    }

    #[test]
    fn crop_border_matches_the_trainer() {
        // the same case as trainer/tests/test_preprocess.py
        let r = crop_border_box(&bordered(80, 60, (5, 7, 9, 3)), 20, 0.5, 0.5);
        assert_eq!((r.top, r.bottom, r.left, r.right), (5, 53, 9, 77));
    }

    #[test]
    fn crop_border_keeps_dark_and_borderless_frames_whole() {
        let dark = RgbImage::new(30, 20);
        assert_eq!(crop_border_box(&dark, 20, 0.5, 0.5), Rect::whole(30, 20));
        let mut spot = RgbImage::new(40, 40);
        for y in 10..15 {
            for x in 10..15 {
                spot.put_pixel(x, y, Rgb([255, 255, 255]));
            }
        }
        assert_eq!(crop_border_box(&spot, 20, 0.5, 0.5), Rect::whole(40, 40));
    }

    #[test]
    fn lesion_box_matches_the_trainer() {
        let mut m = GrayImage::new(120, 100);
        for y in 40..60 {
            for x in 50..70 {
                m.put_pixel(x, y, Luma([255]));
            }
        }
        let r = lesion_box(&m, 0.25).unwrap();
        assert_eq!((r.top, r.bottom, r.left, r.right), (35, 65, 45, 75));
        let mut corner = GrayImage::new(120, 100);
        for y in 0..10 {
            for x in 0..10 {
                corner.put_pixel(x, y, Luma([255]));
            }
        }
        let r = lesion_box(&corner, 0.5).unwrap();
        assert_eq!((r.top, r.left, r.width(), r.height()), (0, 0, 20, 20));
        assert_eq!(lesion_box(&GrayImage::new(5, 5), 0.25), None);
    }

    #[test]
    fn shades_of_gray_balances_a_colour_cast_and_keeps_grey() {
        let grey = RgbImage::from_pixel(8, 8, Rgb([100, 100, 100]));
        assert_eq!(shades_of_gray(&grey, 6.0), grey);
        let cast = RgbImage::from_fn(32, 32, |x, y| {
            let g = 60.0 + f64::from((x * 7 + y * 13) % 140);
            Rgb([g as u8, (g * 0.8) as u8, (g * 0.6) as u8])
        });
        let out = shades_of_gray(&cast, 6.0);
        let mean =
            |img: &RgbImage, c: usize| img.pixels().map(|p| f64::from(p[c])).sum::<f64>() / 1024.0;
        let spread = |img: &RgbImage| {
            let m: Vec<f64> = (0..3).map(|c| mean(img, c)).collect();
            m.iter().cloned().fold(f64::MIN, f64::max) - m.iter().cloned().fold(f64::MAX, f64::min)
        };
        assert!(spread(&cast) > 40.0);
        assert!(spread(&out) < 3.0, "{}", spread(&out));
    }

    #[test]
    fn normalize_is_nchw_and_flips() {
        let mut img = RgbImage::new(3, 2);
        img.put_pixel(0, 0, Rgb([255, 0, 0]));
        let t = normalize(&img, [0.5; 3], [0.5, 0.25, 0.5], 1.0 / 255.0, false);
        let a = t.to_plain_array_view::<f32>().unwrap();
        assert_eq!(a.shape(), &[1, 3, 2, 3]);
        assert!((a[[0, 0, 0, 0]] - 1.0).abs() < 1e-6);
        assert!((a[[0, 1, 0, 0]] + 2.0).abs() < 1e-6);
        let f = normalize(&img, [0.5; 3], [0.5; 3], 1.0 / 255.0, true);
        assert!((f.to_plain_array_view::<f32>().unwrap()[[0, 0, 0, 2]] - 1.0).abs() < 1e-6);
    }
}
