//! The ABCD-style measurements dermatologists read (area, asymmetry, border compactness,
//! colours), from the cleaned lesion mask at the working resolution; the pipeline scales them
//! back to the frame. They are textbook shape and colour figures rather than model outputs,
//! so a clinician can check them against the image.

use image::{GrayImage, Rgb, RgbImage};
use serde::Serialize;

use super::Rect;

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

/// The measurements of the lesion `mask` marks on `img`; `None` for an empty mask.
/// `pixel_pitch_mm` (mm per pixel at this image's scale) adds the area in mm².
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
    Some(Measurements {
        area_px: pts.len() as u64,
        area_mm2: pixel_pitch_mm.map(|p| n * p * p),
        asymmetry: asymmetry(mask, &pts),
        compactness: compactness(mask, n),
        colors: colors(img, &pts),
        bbox: bounding_box(&pts),
    })
}

/// A: the share of lesion pixels whose mirror image about each principal axis (through the
/// centroid, from the second moments) falls outside the lesion. `pts` is not empty.
fn asymmetry(mask: &GrayImage, pts: &[(f64, f64)]) -> [f64; 2] {
    let n = pts.len() as f64;
    let (cx, cy) = pts.iter().fold((0.0, 0.0), |a, p| (a.0 + p.0, a.1 + p.1));
    let (cx, cy) = (cx / n, cy / n);
    let (mut m20, mut m02, mut m11) = (0.0, 0.0, 0.0);
    for (x, y) in pts {
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
    asymmetry
}

/// B: perimeter² / (4π area) of the longest outer contour, `area` being the pixel count.
fn compactness(mask: &GrayImage, area: f64) -> f64 {
    let contours = imageproc::contours::find_contours::<i32>(mask);
    let perimeter: f64 = contours
        .iter()
        .filter(|c| c.border_type == imageproc::contours::BorderType::Outer)
        .map(|c| imageproc::geometry::arc_length(&c.points, true))
        .fold(0.0, f64::max);
    perimeter.powi(2) / (4.0 * std::f64::consts::PI * area)
}

/// C: each lesion pixel counts for its nearest dermoscopic colour; those covering >= 5% of
/// the lesion are reported, in the table's order.
fn colors(img: &RgbImage, pts: &[(f64, f64)]) -> Vec<&'static str> {
    let n = pts.len() as f64;
    let mut counts = [0u64; 6];
    for (x, y) in pts {
        let p = img.get_pixel(*x as u32, *y as u32);
        let nearest = DERMOSCOPIC_COLORS
            .iter()
            .enumerate()
            .min_by(|a, b| dist2(p, &a.1 .1).total_cmp(&dist2(p, &b.1 .1)))
            .map(|(i, _)| i)
            .unwrap_or(0);
        counts[nearest] += 1;
    }
    DERMOSCOPIC_COLORS
        .iter()
        .zip(counts)
        .filter(|(_, c)| *c as f64 >= 0.05 * n)
        .map(|((name, _), _)| *name)
        .collect()
}

/// The half-open box around the lesion pixels.
fn bounding_box(pts: &[(f64, f64)]) -> Rect {
    let (xs, ys) = (
        pts.iter().map(|p| p.0 as u32),
        pts.iter().map(|p| p.1 as u32),
    );
    Rect {
        left: xs.clone().min().unwrap_or(0),
        right: xs.max().unwrap_or(0) + 1,
        top: ys.clone().min().unwrap_or(0),
        bottom: ys.max().unwrap_or(0) + 1,
    }
}

fn dist2(p: &Rgb<u8>, c: &[f64; 3]) -> f64 {
    (0..3).map(|i| (f64::from(p[i]) - c[i]).powi(2)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vision::test_images::disc;
    use image::Luma;

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
}
