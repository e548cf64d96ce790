"""The preprocessing the device repeats, defined once, as data.

A model's preprocessing is a list of steps (plain dicts, written verbatim into the exported
manifest). `apply_steps` runs such a list on one decoded image; training, evaluation, export
and the Rust device all follow the same list, so a change here is a change of the contract
(see docs/manifest.md).

Every step takes and returns HxWx3 uint8 RGB except the last, ``normalize``, which returns a
1x3xHxW float32 tensor. Staying in uint8 between steps makes the reference inputs stored beside
a model exact PNGs, and the arithmetic is written so that an integer implementation can match
it bit for bit (integer luma, round-half-up).

Steps:
- ``crop_border``: trim the dark dermatoscope border/vignette. Luma is
  ``(77 R + 150 G + 29 B) >> 8``. A row (column) is *bright* when more than
  ``min_bright_fraction`` of its pixels have luma > ``luma_threshold``. The crop keeps rows from
  the first to the last bright row, columns likewise. If that keeps less than ``min_keep`` of
  the height or the width, or nothing, the image is left whole (a dark frame is the quality
  gate's business, not the crop's).
- ``lesion_crop`` (needs a mask): a square around the mask's bounding box, side
  ``floor(max(w, h) * (1 + 2 * margin) + 0.5)``, centred on the box, shifted to lie inside
  the image and clipped to it. Without lesion pixels the image is left whole.
- ``resize``: to ``width`` x ``height`` with a triangle (bilinear) filter whose support scales
  with the reduction (PIL ``BILINEAR``; the ``image`` crate's ``FilterType::Triangle``).
- ``shades_of_gray``: colour constancy. ``e_c = (mean((I_c/255)^p))^(1/p)``,
  ``gain_c = |e| / (sqrt(3) e_c)``, ``out = min(255, floor(I_c * gain_c + 0.5))``, in float64.
- ``normalize``: ``(I/255 - mean_c) / std_c`` to float32, channels first (NCHW).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image

Step = dict[str, Any]


def crop_border_box(
    img: np.ndarray,
    luma_threshold: int = 20,
    min_bright_fraction: float = 0.5,
    min_keep: float = 0.5,
) -> tuple[int, int, int, int]:
    """Return (top, bottom, left, right), half-open, of the image without its dark border."""
    h, w = img.shape[:2]
    rgb = img.astype(np.uint32)
    luma = (77 * rgb[..., 0] + 150 * rgb[..., 1] + 29 * rgb[..., 2]) >> 8
    bright = luma > luma_threshold
    rows = np.flatnonzero(bright.sum(axis=1) > min_bright_fraction * w)
    cols = np.flatnonzero(bright.sum(axis=0) > min_bright_fraction * h)
    if rows.size == 0 or cols.size == 0:
        return 0, h, 0, w
    top, bottom = int(rows[0]), int(rows[-1]) + 1
    left, right = int(cols[0]), int(cols[-1]) + 1
    if bottom - top < min_keep * h or right - left < min_keep * w:
        return 0, h, 0, w
    return top, bottom, left, right


def lesion_box(mask: np.ndarray, margin: float = 0.25) -> tuple[int, int, int, int] | None:
    """Square (top, bottom, left, right) around the lesion with `margin`, inside the image."""
    h, w = mask.shape[:2]
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    side = math.floor(max(y1 - y0, x1 - x0) * (1 + 2 * margin) + 0.5)  # round half up
    side = max(1, min(side, h, w))
    cy2, cx2 = y0 + y1, x0 + x1  # twice the centre, to stay in integers
    top = min(max((cy2 - side) // 2, 0), h - side)
    left = min(max((cx2 - side) // 2, 0), w - side)
    return top, top + side, left, left + side


def resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    if img.shape[1] == width and img.shape[0] == height:
        return img
    return np.asarray(Image.fromarray(img).resize((width, height), Image.BILINEAR))


def shades_of_gray(img: np.ndarray, p: float = 6.0) -> np.ndarray:
    x = img.astype(np.float64) / 255.0
    e = np.power(np.mean(np.power(x, p), axis=(0, 1)), 1.0 / p)
    e = np.maximum(e, 1e-6)
    gain = np.linalg.norm(e) / (math.sqrt(3.0) * e)
    out = np.floor(img.astype(np.float64) * gain + 0.5)
    return np.minimum(out, 255.0).astype(np.uint8)


def normalize(img: np.ndarray, mean: list[float], std: list[float]) -> np.ndarray:
    x = img.astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def crop(img: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    t, b, left, r = box
    return img[t:b, left:r]


CROPS = ("crop_border", "lesion_crop")


def crop_box(img: np.ndarray, step: Step, mask: np.ndarray | None):
    """The box a crop step cuts out of `img`, or None when it leaves the image whole."""
    if step["op"] == "crop_border":
        return crop_border_box(
            img, step["luma_threshold"], step["min_bright_fraction"], step["min_keep"]
        )
    return None if mask is None else lesion_box(mask, step["margin"])


def apply_crops(img: np.ndarray, steps: list[Step], mask: np.ndarray | None = None):
    """Run the crop steps that come before ``resize``.

    Returns the cropped image, the mask cropped along, and the ``crop_border`` box in the
    input's coordinates (the whole image without that step): training crops randomly from
    here, and segmentation maps its output back into that box.
    """
    border = (0, img.shape[0], 0, img.shape[1])
    for step in steps:
        if step["op"] not in CROPS:
            break
        box = crop_box(img, step, mask)
        if box is None:
            continue
        if step["op"] == "crop_border":
            border = box
        img = crop(img, box)
        mask = None if mask is None else crop(mask, box)
    return img, mask, border


def apply_steps(
    img: np.ndarray, steps: list[Step], mask: np.ndarray | None = None, stop_before: str = ""
) -> np.ndarray:
    """Run `steps` on `img` (HxWx3 uint8). A mask, when given, is cropped along.

    `stop_before` names a step at which to stop and return the uint8 image so far (the
    reference inputs stop before ``normalize``).
    """
    for step in steps:
        op = step["op"]
        if op == stop_before:
            return img
        if op in CROPS:
            box = crop_box(img, step, mask)
            if box is not None:
                img = crop(img, box)
                mask = None if mask is None else crop(mask, box)
        elif op == "resize":
            img = resize(img, step["width"], step["height"])
        elif op == "shades_of_gray":
            img = shades_of_gray(img, step["p"])
        elif op == "normalize":
            return normalize(img, step["mean"], step["std"])
        else:
            raise ValueError(f"unknown preprocessing step {op!r}")
    return img


def build_steps(
    *,
    width: int,
    height: int,
    mean: list[float],
    std: list[float],
    crop_border: dict | None,
    lesion_crop: dict | None,
    color_constancy: dict | None,
) -> list[Step]:
    """The ordered step list for a model, from the config's preprocessing choices."""
    steps: list[Step] = []
    if crop_border is not None:
        steps.append({"op": "crop_border", **crop_border})
    if lesion_crop is not None:
        steps.append({"op": "lesion_crop", **lesion_crop})
    steps.append({"op": "resize", "width": width, "height": height, "filter": "triangle"})
    if color_constancy is not None:
        steps.append({"op": "shades_of_gray", **color_constancy})
    steps.append({"op": "normalize", "mean": list(mean), "std": list(std), "scale": 1 / 255})
    return steps
