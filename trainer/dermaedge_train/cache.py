"""The decoded-image cache: every image decoded, border-cropped and resized once per dataset.

On a 2-core CPU, decoding and resizing JPEGs every epoch costs about as much as training the
network on them, so a CPU recipe keeps each image as it is just before the random crop: after
the manifest's per-image steps up to the resize (``crop_border``, ``lesion_crop``), resized to
the model size. The images are one uint8 array (N x S x S x 3, ~1.4 GB for 9,180 images at
224 px), memory-mapped from ``<data.cache>/<key>/``; segmentation data adds the masks (N x S x S,
0/1) the same way. Colour constancy and normalisation stay on the fly: they are cheap.

The key hashes the steps, the size and every file's path, size and modification time, so a
changed image, mask or config builds a new cache instead of reusing a stale one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np

from . import preprocess
from .data import DataError, SegSample, load_mask, load_rgb

VERSION = 1


@dataclass
class Cache:
    """Decoded images (and masks) in dataset order, and each image id's row."""

    images: np.ndarray
    masks: np.ndarray | None
    row: dict[str, int]


def cache_key(samples: list, steps: list, size: int, masks_dir: Path | None) -> str:
    h = hashlib.sha256(json.dumps([VERSION, steps, size], sort_keys=True).encode())
    for s in samples:
        for path in _files(s, masks_dir):
            st = path.stat()
            h.update(f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def _files(s, masks_dir: Path | None) -> list[Path]:
    if isinstance(s, SegSample):
        return [s.image, s.mask]
    if masks_dir is not None:
        return [s.image, masks_dir / f"{s.image_id}.png"]
    return [s.image]


def _decode(job: tuple) -> tuple[np.ndarray, np.ndarray | None]:
    s, steps, size, masks_dir = job
    img = load_rgb(s.image)
    mask = None
    if isinstance(s, SegSample):
        mask = load_mask(s.mask, img.shape[:2])
    elif masks_dir is not None:
        path = masks_dir / f"{s.image_id}.png"
        if not path.is_file():
            raise DataError(f"{path}: lesion mask for {s.image} not found (data.lesion_crop)")
        mask = load_mask(path, img.shape[:2])
    cropped, cropped_mask, _ = preprocess.apply_crops(img, steps, mask)
    out = preprocess.resize(cropped, size, size)
    if isinstance(s, SegSample):
        m = preprocess.resize(np.ascontiguousarray(cropped_mask * 255), size, size) > 127
        return out, m.astype(np.uint8)
    return out, None


def load_or_build(
    samples: list,
    steps: list,
    size: int,
    cache_dir: Path,
    masks_dir: Path | None = None,
    workers: int = 0,
) -> Cache:
    """The cache for these samples, built (in parallel, written atomically) if missing."""
    key = cache_key(samples, steps, size, masks_dir)
    folder = Path(cache_dir).expanduser() / key
    seg = bool(samples) and isinstance(samples[0], SegSample)
    ids = [s.image_id for s in samples]
    if not (folder / "index.json").exists():
        _build(folder, samples, steps, size, masks_dir, seg, workers or os.cpu_count() or 1)
    index = json.loads((folder / "index.json").read_text())
    if index["ids"] != ids:
        raise DataError(f"{folder}: cache index does not match the dataset; delete the folder")
    images = np.load(folder / "images.npy", mmap_mode="r")
    masks = np.load(folder / "masks.npy", mmap_mode="r") if seg else None
    return Cache(images, masks, {i: r for r, i in enumerate(ids)})


def _build(folder, samples, steps, size, masks_dir, seg, workers) -> None:
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    n = len(samples)
    print(f"cache: decoding {n} images at {size} px into {folder} ({workers} processes)")
    images = np.lib.format.open_memmap(tmp / "images.npy", "w+", np.uint8, (n, size, size, 3))
    masks = (
        np.lib.format.open_memmap(tmp / "masks.npy", "w+", np.uint8, (n, size, size))
        if seg
        else None
    )
    jobs = [(s, steps, size, masks_dir) for s in samples]
    with Pool(workers) as pool:
        for i, (img, mask) in enumerate(pool.imap(_decode, jobs, chunksize=16)):
            images[i] = img
            if masks is not None:
                masks[i] = mask
    images.flush()
    del images
    if masks is not None:
        masks.flush()
        del masks
    (tmp / "index.json").write_text(json.dumps({"ids": [s.image_id for s in samples]}))
    if folder.exists():  # a build that died before writing its index
        shutil.rmtree(folder)
    os.replace(tmp, folder)
