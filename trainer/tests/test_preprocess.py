"""Every device-repeated preprocessing step on synthetic images with known answers."""

import numpy as np

from dermaedge_train import preprocess


def _bordered(h=60, w=80, top=5, bottom=7, left=9, right=3, value=180):
    img = np.zeros((h, w, 3), np.uint8)
    img[top : h - bottom, left : w - right] = value
    return img


def test_crop_border_finds_the_exact_box():
    assert preprocess.crop_border_box(_bordered()) == (5, 53, 9, 77)


def test_crop_border_trims_a_circular_vignette_to_its_wide_part():
    n = 101
    yy, xx = np.mgrid[0:n, 0:n]
    img = np.zeros((n, n, 3), np.uint8)
    img[(yy - 50) ** 2 + (xx - 50) ** 2 <= 50**2] = 200
    t, b, left, r = preprocess.crop_border_box(img)
    # rows whose chord is longer than half the width: |y - 50| < 50 * sqrt(3) / 2
    assert 5 <= t <= 8 and 93 <= b <= 96 and 5 <= left <= 8 and 93 <= r <= 96


def test_crop_border_leaves_dark_or_borderless_images_whole():
    assert preprocess.crop_border_box(np.zeros((20, 30, 3), np.uint8)) == (0, 20, 0, 30)
    assert preprocess.crop_border_box(np.full((20, 30, 3), 200, np.uint8)) == (0, 20, 0, 30)
    # a small bright patch is below min_keep: keep the whole frame
    img = np.zeros((40, 40, 3), np.uint8)
    img[10:15, 10:15] = 255
    assert preprocess.crop_border_box(img) == (0, 40, 0, 40)


def test_lesion_box_is_a_square_with_margin_inside_the_image():
    mask = np.zeros((100, 120), np.uint8)
    mask[40:60, 50:70] = 1  # 20x20 lesion
    assert preprocess.lesion_box(mask, 0.25) == (35, 65, 45, 75)
    corner = np.zeros((100, 120), np.uint8)
    corner[0:10, 0:10] = 1
    t, b, left, r = preprocess.lesion_box(corner, 0.5)
    assert (t, left) == (0, 0) and b - t == r - left == 20
    assert preprocess.lesion_box(np.zeros((5, 5), np.uint8)) is None


def test_shades_of_gray_removes_a_colour_cast():
    rng = np.random.default_rng(0)
    grey = rng.uniform(60, 200, (32, 32, 1)).repeat(3, axis=2)
    cast = (grey * np.array([1.0, 0.8, 0.6])).astype(np.uint8)
    out = preprocess.shades_of_gray(cast, 6).astype(float)
    means = out.reshape(-1, 3).mean(axis=0)
    assert np.ptp(means) < 2.5, means  # channels balanced again
    assert np.ptp(cast.reshape(-1, 3).mean(axis=0)) > 40


def test_shades_of_gray_keeps_a_neutral_image():
    img = np.full((8, 8, 3), 100, np.uint8)
    assert np.array_equal(preprocess.shades_of_gray(img), img)


def test_normalize_layout_and_values():
    img = np.zeros((2, 3, 3), np.uint8)
    img[..., 0] = 255
    x = preprocess.normalize(img, [0.5, 0.5, 0.5], [0.5, 0.25, 0.5])
    assert x.shape == (1, 3, 2, 3) and x.dtype == np.float32
    assert np.allclose(x[0, 0], 1.0) and np.allclose(x[0, 1], -2.0)


def test_apply_steps_runs_in_manifest_order():
    img = _bordered(h=64, w=64, top=8, bottom=8, left=8, right=8)
    steps = preprocess.build_steps(
        width=16,
        height=16,
        mean=[0, 0, 0],
        std=[1, 1, 1],
        crop_border={"luma_threshold": 20, "min_bright_fraction": 0.5, "min_keep": 0.5},
        lesion_crop=None,
        color_constancy={"p": 6.0},
    )
    assert [s["op"] for s in steps] == ["crop_border", "resize", "shades_of_gray", "normalize"]
    pre = preprocess.apply_steps(img, steps, stop_before="normalize")
    assert pre.shape == (16, 16, 3) and (pre == 180).all()  # border gone, no black pixels
    x = preprocess.apply_steps(img, steps)
    assert x.shape == (1, 3, 16, 16) and np.allclose(x, 180 / 255)
