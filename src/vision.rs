//! Pixels: decoding with limits, the manifest's preprocessing steps, frame quality, lesion
//! mask clean-up and the ABCD-style lesion measurements.
//!
//! The preprocessing steps follow docs/manifest.md to the letter (integer luma, round half up)
//! so that the device feeds its models what the trainer measured them on.

use std::borrow::Cow;
use std::io::Cursor;

use fast_image_resize as fr;
use image::imageops;
use image::{DynamicImage, GrayImage, ImageDecoder, ImageReader, Luma, Rgb, RgbImage};
use imageproc::region_labelling::{connected_components, Connectivity};
use serde::Serialize;
use tract_onnx::prelude::{tract_ndarray, Tensor};

use crate::model::Step;

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

/// Segmenter logits (h x w) -> a 0/255 mask of the field at `size`: sigmoid, bilinear
/// resize, threshold (docs/manifest.md; the device does it at its working resolution).
pub fn mask_from_logits(
    logits: &[f32],
    (h, w): (usize, usize),
    size: (u32, u32),
    threshold: f32,
) -> GrayImage {
    let probs: Vec<fr::pixels::F32> = logits
        .iter()
        .take(h * w)
        .map(|&l| fr::pixels::F32::new(1.0 / (1.0 + (-l).exp())))
        .collect();
    let src = match fr::images::TypedImageRef::new(w as u32, h as u32, &probs) {
        Ok(src) if size.0 > 0 && size.1 > 0 => src,
        _ => return GrayImage::new(size.0, size.1), // nothing to resize, or nowhere to
    };
    let mut up = fr::images::TypedImage::<fr::pixels::F32>::new(size.0, size.1);
    let options =
        fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear));
    fr::Resizer::new()
        .resize_typed(&src, &mut up, &options)
        .expect("F32 to F32, no crop");
    let bits = up
        .pixels()
        .iter()
        .map(|p| if p.0 > threshold { 255 } else { 0 })
        .collect();
    GrayImage::from_raw(size.0, size.1, bits).expect("size.0 x size.1 pixels")
}

/// A field mask (any scale) as a frame-sized mask: nearest-neighbour to the field's size,
/// placed at the field box; background outside it.
pub fn frame_mask(field_mask: &GrayImage, frame: (u32, u32), field: Rect) -> GrayImage {
    let (sw, sh) = field_mask.dimensions();
    let src = |d: u32, n: u32, sn: u32| ((u64::from(d) * u64::from(sn)) / u64::from(n)) as u32;
    let xs: Vec<u32> = (0..field.width())
        .map(|x| src(x, field.width(), sw))
        .collect();
    let mut mask = GrayImage::new(frame.0, frame.1);
    for y in 0..field.height() {
        let sy = src(y, field.height(), sh);
        for (x, &sx) in xs.iter().enumerate() {
            if field_mask.get_pixel(sx, sy)[0] > 0 {
                mask.put_pixel(field.left + x as u32, field.top + y, Luma([255]));
            }
        }
    }
    mask
}

/// Keep the largest 8-connected lesion region and fill its holes.
pub fn largest_component_filled(mask: &GrayImage) -> GrayImage {
    let labels = connected_components(mask, Connectivity::Eight, Luma([0u8]));
    let max_label = labels.pixels().map(|p| p[0]).max().unwrap_or(0) as usize;
    let mut sizes = vec![0u64; max_label + 1];
    for p in labels.pixels() {
        sizes[p[0] as usize] += 1;
    }
    let (w, h) = mask.dimensions();
    // The largest labelled region; the lowest label among equals (labels start at 1).
    let Some(best) = (1..=max_label)
        .filter(|&l| sizes[l] > 0)
        .max_by_key(|&l| (sizes[l], std::cmp::Reverse(l)))
    else {
        return GrayImage::new(w, h);
    };
    let lesion: Vec<u8> = labels
        .as_raw()
        .iter()
        .map(|&l| if l as usize == best { 255 } else { 0 })
        .collect();
    fill_holes(&GrayImage::from_raw(w, h, lesion).expect("w x h labels"))
}

/// Background pixels not 4-connected to the image border become lesion.
pub fn fill_holes(mask: &GrayImage) -> GrayImage {
    let (w, h) = (mask.width() as usize, mask.height() as usize);
    if w == 0 || h == 0 {
        return mask.clone();
    }
    let m = mask.as_raw();
    // Flood the background from the border; whatever it does not reach is lesion.
    let mut out = vec![255u8; w * h];
    let mut stack: Vec<usize> = Vec::new();
    let visit = |i: usize, out: &mut Vec<u8>, stack: &mut Vec<usize>| {
        if out[i] != 0 && m[i] == 0 {
            out[i] = 0;
            stack.push(i);
        }
    };
    for x in 0..w {
        visit(x, &mut out, &mut stack);
        visit((h - 1) * w + x, &mut out, &mut stack);
    }
    for y in 0..h {
        visit(y * w, &mut out, &mut stack);
        visit(y * w + w - 1, &mut out, &mut stack);
    }
    while let Some(i) = stack.pop() {
        let (x, y) = (i % w, i / w);
        if x > 0 {
            visit(i - 1, &mut out, &mut stack);
        }
        if x + 1 < w {
            visit(i + 1, &mut out, &mut stack);
        }
        if y > 0 {
            visit(i - w, &mut out, &mut stack);
        }
        if y + 1 < h {
            visit(i + w, &mut out, &mut stack);
        }
    }
    GrayImage::from_raw(w as u32, h as u32, out).expect("w x h pixels")
}

/// How much of the lesion's outline lies on the edge of the usable field (the `crop_border`
/// box): 0 for a lesion wholly inside, 1 for one that fills the field. Outline pixels are
/// lesion pixels with a 4-neighbour outside the lesion or outside the field.
pub fn border_contact(mask: &GrayImage, field: Rect) -> f64 {
    let on = |x: i64, y: i64| {
        x >= i64::from(field.left)
            && y >= i64::from(field.top)
            && x < i64::from(field.right)
            && y < i64::from(field.bottom)
            && mask.get_pixel(x as u32, y as u32)[0] > 0
    };
    let (mut outline, mut edge) = (0u64, 0u64);
    for y in field.top..field.bottom {
        for x in field.left..field.right {
            let (xi, yi) = (i64::from(x), i64::from(y));
            if !on(xi, yi) {
                continue;
            }
            if !(on(xi - 1, yi) && on(xi + 1, yi) && on(xi, yi - 1) && on(xi, yi + 1)) {
                outline += 1;
                if x == field.left
                    || y == field.top
                    || x + 1 == field.right
                    || y + 1 == field.bottom
                {
                    edge += 1;
                }
            }
        }
    }
    if outline == 0 {
        0.0
    } else {
        edge as f64 / outline as f64
    }
}

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

/// The ABCD-style measurements dermatologists read, from the lesion mask.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Measurements {
    pub area_px: u64,
    /// Area in mm² when the dermatoscope's pixel pitch is configured.
    pub area_mm2: Option<f64>,
    /// Fraction of the lesion that does not overlap its mirror image about the major and the
    /// minor principal axis (0 = symmetric).
    pub asymmetry: [f64; 2],
    /// Perimeter² / (4π area): 1 for a disc, larger for irregular borders.
    pub compactness: f64,
    /// The dermoscopic colours covering >= 5% of the lesion (white, red, light brown, dark
    /// brown, blue-gray, black).
    pub colors: Vec<&'static str>,
    pub bbox: Rect,
}

/// Reference sRGB values of the six colours of the ABCD rule.
const DERMOSCOPIC_COLORS: [(&str, [f64; 3]); 6] = [
    ("white", [235.0, 230.0, 225.0]),
    ("red", [190.0, 60.0, 60.0]),
    ("light_brown", [180.0, 120.0, 80.0]),
    ("dark_brown", [100.0, 60.0, 40.0]),
    ("blue_gray", [100.0, 115.0, 140.0]),
    ("black", [30.0, 25.0, 25.0]),
];

pub fn measure(
    img: &RgbImage,
    mask: &GrayImage,
    pixel_pitch_mm: Option<f64>,
) -> Option<Measurements> {
    let pts: Vec<(f64, f64)> = mask
        .enumerate_pixels()
        .filter(|(_, _, p)| p[0] > 0)
        .map(|(x, y, _)| (f64::from(x), f64::from(y)))
        .collect();
    if pts.is_empty() {
        return None;
    }
    let n = pts.len() as f64;
    let (cx, cy) = pts.iter().fold((0.0, 0.0), |a, p| (a.0 + p.0, a.1 + p.1));
    let (cx, cy) = (cx / n, cy / n);
    let (mut m20, mut m02, mut m11) = (0.0, 0.0, 0.0);
    for (x, y) in &pts {
        m20 += (x - cx).powi(2);
        m02 += (y - cy).powi(2);
        m11 += (x - cx) * (y - cy);
    }
    let theta = 0.5 * (2.0 * m11).atan2(m20 - m02);
    let axes = [(theta.cos(), theta.sin()), (-theta.sin(), theta.cos())];
    let (w, h) = mask.dimensions();
    let inside = |x: f64, y: f64| {
        let (xi, yi) = (x.round(), y.round());
        xi >= 0.0
            && yi >= 0.0
            && xi < f64::from(w)
            && yi < f64::from(h)
            && mask.get_pixel(xi as u32, yi as u32)[0] > 0
    };
    let mut asymmetry = [0.0; 2];
    for (k, (dx, dy)) in axes.iter().enumerate() {
        let miss = pts
            .iter()
            .filter(|(x, y)| {
                let (px, py) = (x - cx, y - cy);
                let along = px * dx + py * dy;
                // mirror about the axis through the centroid
                !inside(cx + 2.0 * along * dx - px, cy + 2.0 * along * dy - py)
            })
            .count();
        asymmetry[k] = miss as f64 / n;
    }
    let contours = imageproc::contours::find_contours::<i32>(mask);
    let perimeter: f64 = contours
        .iter()
        .filter(|c| c.border_type == imageproc::contours::BorderType::Outer)
        .map(|c| imageproc::geometry::arc_length(&c.points, true))
        .fold(0.0, f64::max);
    let compactness = perimeter.powi(2) / (4.0 * std::f64::consts::PI * n);
    let mut counts = [0u64; 6];
    for (x, y) in &pts {
        let p = img.get_pixel(*x as u32, *y as u32);
        let nearest = DERMOSCOPIC_COLORS
            .iter()
            .enumerate()
            .min_by(|a, b| dist2(p, &a.1 .1).total_cmp(&dist2(p, &b.1 .1)))
            .map(|(i, _)| i)
            .unwrap_or(0);
        counts[nearest] += 1;
    }
    let colors = DERMOSCOPIC_COLORS
        .iter()
        .zip(counts)
        .filter(|(_, c)| *c as f64 >= 0.05 * n)
        .map(|((name, _), _)| *name)
        .collect();
    let (xs, ys) = (
        pts.iter().map(|p| p.0 as u32),
        pts.iter().map(|p| p.1 as u32),
    );
    let bbox = Rect {
        left: xs.clone().min().unwrap_or(0),
        right: xs.max().unwrap_or(0) + 1,
        top: ys.clone().min().unwrap_or(0),
        bottom: ys.max().unwrap_or(0) + 1,
    };
    Some(Measurements {
        area_px: pts.len() as u64,
        area_mm2: pixel_pitch_mm.map(|p| n * p * p),
        asymmetry,
        compactness,
        colors,
        bbox,
    })
}

fn dist2(p: &Rgb<u8>, c: &[f64; 3]) -> f64 {
    (0..3).map(|i| (f64::from(p[i]) - c[i]).powi(2)).sum()
}

/// The frame with the lesion outline drawn in green, for the `--masks` overlays.
pub fn overlay(img: &RgbImage, mask: &GrayImage) -> RgbImage {
    let mut out = img.clone();
    let (w, h) = mask.dimensions();
    let on = |x: i64, y: i64| {
        x >= 0
            && y >= 0
            && x < i64::from(w)
            && y < i64::from(h)
            && mask.get_pixel(x as u32, y as u32)[0] > 0
    };
    for (x, y, p) in out.enumerate_pixels_mut() {
        let (xi, yi) = (i64::from(x), i64::from(y));
        if on(xi, yi) && !(on(xi - 1, yi) && on(xi + 1, yi) && on(xi, yi - 1) && on(xi, yi + 1)) {
            *p = Rgb([0, 255, 0]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bordered(w: u32, h: u32, (top, bottom, left, right): (u32, u32, u32, u32)) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            if y >= top && y < h - bottom && x >= left && x < w - right {
                Rgb([180, 180, 180])
            } else {
                Rgb([0, 0, 0])
            }
        })
    }

    fn disc(w: u32, h: u32, cx: f64, cy: f64, rx: f64, ry: f64) -> GrayImage {
        GrayImage::from_fn(w, h, |x, y| {
            let d = ((f64::from(x) - cx) / rx).powi(2) + ((f64::from(y) - cy) / ry).powi(2);
            Luma([if d <= 1.0 { 255 } else { 0 }])
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

    #[test]
    fn largest_component_is_kept_and_its_holes_filled() {
        let mut m = disc(100, 100, 40.0, 40.0, 20.0, 20.0);
        for y in 38..43 {
            for x in 38..43 {
                m.put_pixel(x, y, Luma([0])); // a hole
            }
        }
        for y in 85..90 {
            for x in 85..90 {
                m.put_pixel(x, y, Luma([255])); // a small second blob
            }
        }
        let out = largest_component_filled(&m);
        assert_eq!(out.get_pixel(40, 40)[0], 255);
        assert_eq!(out.get_pixel(87, 87)[0], 0);
        assert_eq!(
            largest_component_filled(&GrayImage::new(4, 4))
                .pixels()
                .filter(|p| p[0] > 0)
                .count(),
            0
        );
    }

    #[test]
    fn a_disc_is_symmetric_and_compact() {
        let img = RgbImage::from_pixel(200, 200, Rgb([100, 60, 40]));
        let m = measure(&img, &disc(200, 200, 100.0, 100.0, 50.0, 50.0), None).unwrap();
        assert!(
            m.asymmetry[0] < 0.03 && m.asymmetry[1] < 0.03,
            "{:?}",
            m.asymmetry
        );
        assert!((0.95..1.15).contains(&m.compactness), "{}", m.compactness);
        assert_eq!(m.colors, vec!["dark_brown"]);
    }

    #[test]
    fn an_ellipse_has_its_known_area_and_is_symmetric() {
        let img = RgbImage::from_pixel(300, 200, Rgb([180, 120, 80]));
        let m = measure(&img, &disc(300, 200, 150.0, 100.0, 80.0, 40.0), Some(0.01)).unwrap();
        let area = std::f64::consts::PI * 80.0 * 40.0;
        assert!(
            (m.area_px as f64 - area).abs() / area < 0.01,
            "{}",
            m.area_px
        );
        assert!((m.area_mm2.unwrap() - m.area_px as f64 * 1e-4).abs() < 1e-9);
        assert!(
            m.asymmetry[0] < 0.03 && m.asymmetry[1] < 0.03,
            "{:?}",
            m.asymmetry
        );
        assert!(
            m.compactness > 1.1,
            "an elongated shape is less compact: {}",
            m.compactness
        );
        assert_eq!((m.bbox.left, m.bbox.right), (70, 231));
    }

    #[test]
    fn a_half_disc_is_asymmetric_about_one_axis_and_irregular_shapes_less_compact() {
        let img = RgbImage::from_pixel(200, 200, Rgb([30, 25, 25]));
        let mut half = disc(200, 200, 100.0, 100.0, 60.0, 60.0);
        for y in 0..200 {
            for x in 100..200 {
                half.put_pixel(x, y, Luma([0]));
            }
        }
        let m = measure(&img, &half, None).unwrap();
        let (lo, hi) = (
            m.asymmetry[0].min(m.asymmetry[1]),
            m.asymmetry[0].max(m.asymmetry[1]),
        );
        assert!(lo < 0.05 && hi > 0.15, "{:?}", m.asymmetry);
        let star = GrayImage::from_fn(200, 200, |x, y| {
            let (dx, dy) = (f64::from(x) - 100.0, f64::from(y) - 100.0);
            let r = 50.0 + 20.0 * (8.0 * dy.atan2(dx)).sin();
            Luma([if dx.hypot(dy) <= r { 255 } else { 0 }])
        });
        let s = measure(&img, &star, None).unwrap();
        assert!(s.compactness > 1.4, "{}", s.compactness);
        assert_eq!(s.colors, vec!["black"]);
    }

    #[test]
    fn border_contact_measures_how_much_of_the_outline_is_cut_off() {
        let field = Rect {
            top: 10,
            bottom: 90,
            left: 10,
            right: 90,
        };
        assert_eq!(
            border_contact(&disc(100, 100, 50.0, 50.0, 20.0, 20.0), field),
            0.0
        );
        // centre 5 px outside the field: the straight cut is a large share of the outline pixels
        let cut = border_contact(&disc(100, 100, 5.0, 50.0, 20.0, 20.0), field);
        assert!((0.3..0.6).contains(&cut), "{cut}");
        let grazing = border_contact(&disc(100, 100, 30.0, 50.0, 20.0, 20.0), field);
        assert!(grazing > 0.0 && grazing < 0.05, "{grazing}");
        let full = GrayImage::from_pixel(100, 100, Luma([255]));
        assert_eq!(border_contact(&full, field), 1.0);
    }

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

    #[test]
    fn masks_are_made_at_working_scale_and_placed_in_the_frame() {
        let logits = vec![5.0f32; 16];
        let small = mask_from_logits(&logits, (4, 4), (3, 2), 0.5);
        assert_eq!(small.pixels().filter(|p| p[0] > 0).count(), 6);
        let field = Rect {
            top: 2,
            bottom: 6,
            left: 3,
            right: 9,
        };
        let m = frame_mask(&small, (12, 8), field);
        assert_eq!(m.pixels().filter(|p| p[0] > 0).count(), 24);
        assert_eq!(m.get_pixel(3, 2)[0], 255);
        assert_eq!(m.get_pixel(2, 2)[0], 0);
        let (work, scale) = working_field(&RgbImage::new(2000, 1000), Rect::whole(2000, 1000), 512);
        assert_eq!((work.dimensions(), scale), ((512, 256), 0.256));
    }
}
