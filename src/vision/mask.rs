//! The lesion mask: from the segmenter's logits to one filled region, placed in the frame.
//! The raw mask has specks and holes, and the measurements and the border-contact check
//! assume a single filled lesion, so the clean-up lives beside the mask's construction. The
//! `--masks` overlay draws that same mask, so it lives here too.

use fast_image_resize as fr;
use image::{GrayImage, Luma, Rgb, RgbImage};
use imageproc::region_labelling::{connected_components, Connectivity};

use super::Rect;

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
    use crate::vision::test_images::disc;
    use crate::vision::working_field;

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
