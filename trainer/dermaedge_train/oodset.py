"""Frames that are not dermoscopic lesion images, and what the device says about them.

A dermatoscope in a field clinic also sees its lens cap, a wall, plain skin, a ruler, and a
camera that lost its sensor shows colour bars; people drop ordinary photos into the watched
folder. ``build_ood_set`` makes a reproducible set of such frames: synthetic camera frames
generated here, plus any photos found under the folders given (e.g. Debian's wallpaper
packages). Every image has a ``kind`` and a ``part``: ``fit`` images may be used to choose a
refusal rule, ``test`` images only to report it, so the reported figure is honest.

``ood_eval`` feeds a set to the ``dermaedge`` binary and reports, per kind, how many frames were
refused (``status`` other than ``ok``), classified, and given the melanoma flag.
"""

from __future__ import annotations

import collections
import csv
import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from .data import DataError
from .device_eval import run_device

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png"}
SIZES = [(640, 480), (1280, 960), (800, 600), (1280, 720)]


def part_of(name: str) -> str:
    """``fit`` or ``test``, from the name alone (stable across machines and runs)."""
    return "test" if hashlib.sha256(name.encode()).digest()[0] % 2 else "fit"


def _noise(rng, img: np.ndarray, sigma: float) -> np.ndarray:
    return np.clip(img + rng.normal(0, sigma, img.shape), 0, 255)


def colour_bars(rng, w: int, h: int) -> np.ndarray:
    """EBU/SMPTE-style bars (white, yellow, cyan, green, magenta, red, blue, black), what a
    V4L2 test source or a camera without its sensor delivers; vertical or horizontal."""
    level = rng.choice([0.75, 1.0]) * 255
    bars = np.array(
        [[1, 1, 1], [1, 1, 0], [0, 1, 1], [0, 1, 0], [1, 0, 1], [1, 0, 0], [0, 0, 1], [0, 0, 0]]
    )
    if rng.random() < 0.5:
        idx = (np.arange(w) * 8 // w)[None, :].repeat(h, 0)
    else:
        idx = (np.arange(h) * 8 // h)[:, None].repeat(w, 1)
    return _noise(rng, bars[idx] * level, rng.uniform(0, 6))


def lens_cap(rng, w: int, h: int) -> np.ndarray:
    """Almost black, sensor noise, a faint vignette."""
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot((xx - w / 2) / w, (yy - h / 2) / h)
    base = rng.uniform(2, 25) * (1 - r)[..., None] * rng.uniform(0.8, 1.2, 3)
    return _noise(rng, base, rng.uniform(1, 5))


def flat(rng, w: int, h: int) -> np.ndarray:
    """One colour (a wall, a sheet, a glove) with sensor noise."""
    return _noise(rng, np.ones((h, w, 3)) * rng.uniform(30, 230, 3), rng.uniform(1, 8))


def gradient(rng, w: int, h: int) -> np.ndarray:
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    yy, xx = np.mgrid[0:h, 0:w]
    if rng.random() < 0.5:
        t = (xx / w * np.cos(rng.uniform(0, np.pi)) + yy / h * np.sin(rng.uniform(0, np.pi))) % 1
    else:
        t = np.clip(np.hypot(xx - w * rng.random(), yy - h * rng.random()) / max(w, h), 0, 1)
    return _noise(rng, a + (b - a) * t[..., None], 2)


def noise(rng, w: int, h: int) -> np.ndarray:
    """White noise, or noise smoothed into blobs (a sensor fault, a dirty lens)."""
    img = rng.uniform(0, 255, (h, w, 3))
    if rng.random() < 0.5:
        pil = Image.fromarray(img.astype(np.uint8)).filter(
            ImageFilter.GaussianBlur(rng.uniform(4, 30))
        )
        img = np.asarray(pil, dtype=float)
        img = (img - img.mean()) * rng.uniform(3, 8) + 128
    return np.clip(img, 0, 255)


def skin_plain(rng, w: int, h: int) -> np.ndarray:
    """Skin without a lesion: a skin tone (light to dark) with slow shading and fine texture."""
    light = rng.uniform(0, 1)
    tone = np.array([224, 172, 140]) * (1 - light) * 0.3 + np.array([230, 185, 160]) * light
    tone = tone * rng.uniform(0.35, 1.0)  # darker skin types
    slow = rng.normal(0, 1, (max(h // 64, 2), max(w // 64, 2)))
    slow = np.asarray(Image.fromarray(slow.astype(np.float32)).resize((w, h), Image.BICUBIC))
    img = tone * (1 + 0.06 * slow[..., None])
    return _noise(rng, img, rng.uniform(2, 6))


def ruler(rng, w: int, h: int) -> np.ndarray:
    """A ruler or colour card: light background, dark millimetre ticks, a few colour patches."""
    img = np.ones((h, w, 3)) * rng.uniform(200, 250)
    step = int(rng.integers(8, 20))
    y0 = int(h * rng.uniform(0.3, 0.6))
    for k, x in enumerate(range(0, w, step)):
        length = h // 6 if k % 10 == 0 else h // 12 if k % 5 == 0 else h // 20
        img[y0 : y0 + length, x : x + 2] = 20
    for _ in range(int(rng.integers(0, 6))):
        x, y = int(rng.integers(0, w - 60)), int(rng.integers(0, h // 4))
        img[y : y + 50, x : x + 50] = rng.uniform(0, 255, 3)
    return _noise(rng, img, 3)


def checkerboard(rng, w: int, h: int) -> np.ndarray:
    size = int(rng.integers(16, 80))
    yy, xx = np.mgrid[0:h, 0:w]
    board = ((xx // size + yy // size) % 2)[..., None] * 215 + 20
    return _noise(rng, board.repeat(3, 2).astype(float), 3)


SYNTHETIC = {
    "colour_bars": colour_bars,
    "lens_cap": lens_cap,
    "flat": flat,
    "gradient": gradient,
    "noise": noise,
    "skin_plain": skin_plain,
    "ruler": ruler,
    "checkerboard": checkerboard,
}


def find_photos(folders: list[Path]) -> list[Path]:
    photos = []
    for folder in folders:
        if not folder.is_dir():
            raise DataError(f"{folder}: not a folder of photos")
        photos += [p for p in folder.rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES]
    return sorted(photos)


def build_ood_set(
    out: Path, per_kind: int = 20, photos: list[Path] | None = None, seed: int = 0
) -> list[dict]:
    """Write the frames to ``out/images`` and their kinds to ``out/kinds.csv``; returns the
    rows. Photos become camera-sized JPEGs (the device decodes what a camera would send)."""
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for kind, make in SYNTHETIC.items():
        for i in range(per_kind):
            w, h = SIZES[int(rng.integers(len(SIZES)))]
            name = f"{kind}_{i:03d}.jpg"
            Image.fromarray(make(rng, w, h).astype(np.uint8)).save(images / name, quality=92)
            rows.append({"image": name, "kind": kind, "part": part_of(name), "origin": "synthetic"})
    for k, src in enumerate(find_photos(photos or [])):
        try:
            with Image.open(src) as im:
                im = im.convert("RGB")
                im.thumbnail((1280, 1280))
        except OSError as e:
            print(f"ood-set: {src}: skipped ({e})")
            continue
        name = f"photo_{k:04d}.jpg"
        im.save(images / name, quality=92)
        rows.append({"image": name, "kind": "photo", "part": part_of(name), "origin": str(src)})
    with open(out / "kinds.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "kind", "part", "origin"])
        writer.writeheader()
        writer.writerows(rows)
    return rows


def load_ood_set(root: Path, part: str = "") -> list[dict]:
    kinds = root / "kinds.csv"
    if not kinds.is_file():
        raise DataError(f"{kinds}: missing; build the set with `dermaedge-train ood-set`")
    with open(kinds, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"image", "kind", "part"} <= rows[0].keys():
        raise DataError(f"{kinds}: want the columns image, kind, part")
    rows = [r for r in rows if not part or r["part"] == part]
    if not rows:
        raise DataError(f"{kinds}: no image in part {part!r}")
    return rows


def ood_eval(
    binary: Path, models: Path, root: Path, out: Path, part: str = "test", precision="float32"
) -> dict:
    """Per kind: frames, unreadable (no result), refused (any recapture reason), classified,
    melanoma flag raised; ``refused_fraction`` counts unreadable frames as refused, since
    neither gets a classification."""
    rows = load_ood_set(root, part)
    results = run_device(
        binary, models, precision, [root / "images" / r["image"] for r in rows], out
    )
    by_name = {r["image"]: r for r in results}
    per_kind: dict[str, dict] = {}
    for kind in sorted({r["kind"] for r in rows}):
        mine = [by_name.get(r["image"]) for r in rows if r["kind"] == kind]
        analyzed = [m for m in mine if m is not None]
        refused = [m for m in analyzed if m["status"] != "ok"]
        classified = [m for m in analyzed if m["status"] == "ok" and m.get("classification")]
        flagged = [m for m in classified if m["classification"]["melanoma_flag"]]
        reasons = collections.Counter(x for m in refused for x in m["recapture_reasons"])
        per_kind[kind] = {
            "frames": len(mine),
            "unreadable": len(mine) - len(analyzed),
            "refused": len(refused),
            "refused_fraction": (len(refused) + len(mine) - len(analyzed)) / len(mine),
            "classified": len(classified),
            "melanoma_flag": len(flagged),
            "reasons": dict(reasons),
        }
    report = {
        "part": part or "all",
        "precision": precision,
        "models": results[0]["models"] if results else [],
        "frames": len(rows),
        "classified": sum(k["classified"] for k in per_kind.values()),
        "melanoma_flag": sum(k["melanoma_flag"] for k in per_kind.values()),
        "kinds": per_kind,
    }
    (out / "ood_eval.json").write_text(json.dumps(report, indent=2))
    return report
