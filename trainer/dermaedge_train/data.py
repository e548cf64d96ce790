"""Dataset readers: every on-disk layout a user has, turned into one list of samples.

Supported layouts (see `load_classification` / `load_segmentation`):

- ``simple``: the layout of ``../shared/data`` — ``cls/labels.csv`` (image,label,lesion_id,age,
  sex,site,source,width,height) with ``cls/images/``, and ``seg/pairs.csv`` (image,mask) with
  ``seg/images/`` and ``seg/masks/``.
- ``isic2019``: ``ISIC_2019_Training_GroundTruth.csv`` (one-hot MEL..SCC,UNK) with an image
  folder and the optional ``ISIC_2019_Training_Metadata.csv``.
- ``ham10000``: ``HAM10000_metadata.csv`` (``dx`` codes, ``lesion_id``) with the image folders.
- ``isic2018``: ISIC 2018 Task 1 — an image folder and a mask folder of
  ``<id>_segmentation.png`` files.

Every reader checks each row and raises `DataError` naming the file (and row) that is wrong:
a bad row never silently disappears.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# The ISIC 2019 classes in the order every output, CSV and manifest uses.
CLASSES: tuple[str, ...] = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC")
CLASS_INDEX = {name: i for i, name in enumerate(CLASSES)}

# HAM10000 `dx` codes to ISIC 2019 classes. ISIC 2019 files HAM's "akiec" (actinic keratosis
# and intraepithelial carcinoma) under AK, and so do we.
HAM_DX = {
    "mel": "MEL",
    "nv": "NV",
    "bcc": "BCC",
    "akiec": "AK",
    "bkl": "BKL",
    "df": "DF",
    "vasc": "VASC",
    "scc": "SCC",
}

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")

# Decompression-bomb guard for training data: far above any dermoscopic image.
MAX_IMAGE_PIXELS = 100_000_000


class DataError(Exception):
    """A dataset file or row is missing or wrong; the message names it."""


@dataclass(frozen=True)
class ClsSample:
    image: Path
    label: int
    lesion_id: str = ""
    age: str = ""
    sex: str = ""
    site: str = ""
    source: str = ""

    @property
    def image_id(self) -> str:
        return self.image.stem

    @property
    def group(self) -> str:
        """What a split must keep together: the lesion where known, else the image."""
        return self.lesion_id or self.image.stem


@dataclass(frozen=True)
class SegSample:
    image: Path
    mask: Path

    @property
    def image_id(self) -> str:
        return self.image.stem

    @property
    def group(self) -> str:
        return self.image.stem


# --------------------------------------------------------------------------------------------
# Images


def load_rgb(path: Path) -> np.ndarray:
    """Decode an image as HxWx3 uint8 RGB, EXIF orientation applied (the device does the same)."""
    img = _open(path)
    try:
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            # 16-bit grayscale: scale to 8 bits rather than clip.
            arr = np.asarray(img, dtype=np.uint32) >> 8
            img = Image.fromarray(arr.astype(np.uint8), mode="L")
        rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except OSError as e:
        raise DataError(f"{path}: cannot decode image ({e})") from e
    if rgb.shape[0] < 2 or rgb.shape[1] < 2:
        raise DataError(f"{path}: image is {rgb.shape[1]}x{rgb.shape[0]} pixels, too small")
    return rgb


def load_mask(path: Path, expect_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Decode a lesion mask as HxW uint8 in {0, 1} (pixels > 127 are lesion)."""
    img = _open(path)
    try:
        arr = np.asarray(img.convert("L"), dtype=np.uint8)
    except OSError as e:
        raise DataError(f"{path}: cannot decode mask ({e})") from e
    if expect_hw is not None and arr.shape != tuple(expect_hw):
        raise DataError(
            f"{path}: mask is {arr.shape[1]}x{arr.shape[0]} but its image is "
            f"{expect_hw[1]}x{expect_hw[0]}; masks must match their image's size"
        )
    return (arr > 127).astype(np.uint8)


def _open(path: Path) -> Image.Image:
    try:
        img = Image.open(path)
        if img.width * img.height > MAX_IMAGE_PIXELS:
            raise DataError(
                f"{path}: {img.width}x{img.height} pixels is over the limit of "
                f"{MAX_IMAGE_PIXELS} pixels"
            )
        img.load()
        return img
    except FileNotFoundError as e:
        raise DataError(f"{path}: file not found") from e
    except (UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: not a readable image ({e})") from e
    except OSError as e:  # truncated files and the like
        raise DataError(f"{path}: cannot decode image ({e})") from e


# --------------------------------------------------------------------------------------------
# Classification layouts


def load_classification(
    root: Path,
    layout: str = "auto",
    images: Path | None = None,
    metadata: Path | None = None,
    require_all_classes: bool = True,
) -> list[ClsSample]:
    """Read a classification dataset in any supported layout."""
    root = Path(root)
    if layout == "auto":
        layout = _detect_cls_layout(root)
    if layout == "simple":
        base = root / "cls" if (root / "cls" / "labels.csv").exists() else root
        samples = read_simple_cls(base / "labels.csv", images or base / "images")
    elif layout == "isic2019":
        gt = root if root.is_file() else _find_one(root, "*GroundTruth*.csv")
        imgs = images or _guess_isic2019_images(gt.parent)
        meta = metadata
        if meta is None:
            found = sorted(gt.parent.glob("*Metadata*.csv"))
            meta = found[0] if found else None
        samples = read_isic2019(gt, imgs, meta)
    elif layout == "ham10000":
        meta = root if root.is_file() else _find_one(root, "HAM10000_metadata*")
        dirs = [images] if images else [d for d in meta.parent.iterdir() if d.is_dir()]
        samples = read_ham10000(meta, dirs)
    else:
        raise DataError(
            f"unknown classification layout {layout!r}: use auto, simple, isic2019 or ham10000"
        )
    check_classes(samples, str(root), require_all=require_all_classes)
    return samples


def _detect_cls_layout(root: Path) -> str:
    if root.is_file():
        name = root.name
        if "GroundTruth" in name:
            return "isic2019"
        if name.startswith("HAM10000_metadata"):
            return "ham10000"
        raise DataError(f"{root}: cannot tell the dataset layout from this file name")
    if (root / "labels.csv").exists() or (root / "cls" / "labels.csv").exists():
        return "simple"
    if list(root.glob("*GroundTruth*.csv")):
        return "isic2019"
    if list(root.glob("HAM10000_metadata*")):
        return "ham10000"
    if not root.exists():
        raise DataError(f"{root}: dataset folder not found")
    raise DataError(
        f"{root}: no labels.csv, ISIC_2019_Training_GroundTruth.csv or HAM10000_metadata.csv "
        "found; name the layout and files in the config"
    )


def _find_one(root: Path, pattern: str) -> Path:
    found = sorted(root.glob(pattern))
    if not found:
        raise DataError(f"{root}: no file matching {pattern}")
    return found[0]


def _guess_isic2019_images(folder: Path) -> Path:
    for name in ("ISIC_2019_Training_Input", "images", "."):
        if (folder / name).is_dir():
            return folder / name
    raise DataError(f"{folder}: no image folder found beside the ground truth CSV")


def _read_csv(path: Path, required: list[str]) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in required if c not in header]
            if missing:
                raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
            return list(reader)
    except FileNotFoundError as e:
        raise DataError(f"{path}: file not found") from e


def _image_path(folder: Path, name: str, csv_path: Path, row: int) -> Path:
    """Resolve an image name (with or without suffix) inside `folder`, or fail naming the row."""
    p = folder / name
    if p.suffix.lower() in IMAGE_SUFFIXES:
        if p.is_file():
            return p
    else:
        for suffix in IMAGE_SUFFIXES:
            if (folder / (name + suffix)).is_file():
                return folder / (name + suffix)
    raise DataError(f"{csv_path} row {row}: image {name!r} not found in {folder}")


def _label(value: str, csv_path: Path, row: int) -> int:
    if value not in CLASS_INDEX:
        raise DataError(f"{csv_path} row {row}: label {value!r} is not one of {', '.join(CLASSES)}")
    return CLASS_INDEX[value]


def read_simple_cls(labels_csv: Path, images: Path) -> list[ClsSample]:
    rows = _read_csv(labels_csv, ["image", "label"])
    out = []
    for i, r in enumerate(rows, start=2):  # row 1 is the header
        out.append(
            ClsSample(
                image=_image_path(images, r["image"], labels_csv, i),
                label=_label(r["label"].strip(), labels_csv, i),
                lesion_id=(r.get("lesion_id") or "").strip(),
                age=(r.get("age") or "").strip(),
                sex=(r.get("sex") or "").strip(),
                site=(r.get("site") or "").strip(),
                source=(r.get("source") or "").strip(),
            )
        )
    return out


def read_isic2019(gt_csv: Path, images: Path, metadata_csv: Path | None = None) -> list[ClsSample]:
    rows = _read_csv(gt_csv, ["image", *CLASSES])
    meta: dict[str, dict[str, str]] = {}
    if metadata_csv is not None:
        meta = {r["image"]: r for r in _read_csv(metadata_csv, ["image"])}
    out = []
    for i, r in enumerate(rows, start=2):
        try:
            onehot = {c: float(r[c]) for c in CLASSES}
            unk = float(r.get("UNK") or 0)
        except ValueError as e:
            raise DataError(f"{gt_csv} row {i}: class columns must be numbers ({e})") from e
        hot = [c for c, v in onehot.items() if v >= 0.5]
        if unk >= 0.5:
            raise DataError(
                f"{gt_csv} row {i}: image {r['image']} is UNK, not one of the 8 classes"
            )
        if len(hot) != 1:
            raise DataError(
                f"{gt_csv} row {i}: image {r['image']} must have exactly one class set, has "
                f"{len(hot)}"
            )
        m = meta.get(r["image"], {})
        out.append(
            ClsSample(
                image=_image_path(images, r["image"], gt_csv, i),
                label=CLASS_INDEX[hot[0]],
                lesion_id=(m.get("lesion_id") or "").strip(),
                age=(m.get("age_approx") or "").strip(),
                sex=(m.get("sex") or "").strip(),
                site=(m.get("anatom_site_general") or "").strip(),
                source="isic2019",
            )
        )
    return out


def read_ham10000(metadata_csv: Path, image_dirs: list[Path]) -> list[ClsSample]:
    rows = _read_csv(metadata_csv, ["lesion_id", "image_id", "dx"])
    index: dict[str, Path] = {}
    for d in image_dirs:
        for p in Path(d).iterdir():
            if p.suffix.lower() in IMAGE_SUFFIXES:
                index[p.stem] = p
    out = []
    for i, r in enumerate(rows, start=2):
        dx = r["dx"].strip().lower()
        if dx not in HAM_DX:
            raise DataError(
                f"{metadata_csv} row {i}: dx {r['dx']!r} is not a HAM10000 code "
                f"({', '.join(HAM_DX)})"
            )
        path = index.get(r["image_id"])
        if path is None:
            raise DataError(
                f"{metadata_csv} row {i}: image {r['image_id']!r} not found in "
                f"{', '.join(str(d) for d in image_dirs)}"
            )
        out.append(
            ClsSample(
                image=path,
                label=CLASS_INDEX[HAM_DX[dx]],
                lesion_id=r["lesion_id"].strip(),
                age=(r.get("age") or "").strip(),
                sex=(r.get("sex") or "").strip(),
                site=(r.get("localization") or "").strip(),
                source="ham10000",
            )
        )
    return out


def check_classes(samples: list[ClsSample], where: str, require_all: bool = True) -> None:
    if not samples:
        raise DataError(f"{where}: the dataset has no images")
    counts = Counter(s.label for s in samples)
    empty = [CLASSES[i] for i in range(len(CLASSES)) if counts[i] == 0]
    if empty and require_all:
        raise DataError(
            f"{where}: class(es) {', '.join(empty)} have no images; every class needs "
            "training examples (set data.require_all_classes: false to allow this)"
        )


def class_counts(samples: list[ClsSample]) -> list[int]:
    counts = Counter(s.label for s in samples)
    return [counts[i] for i in range(len(CLASSES))]


# --------------------------------------------------------------------------------------------
# Segmentation layouts


def load_segmentation(
    root: Path, layout: str = "auto", images: Path | None = None, masks: Path | None = None
) -> list[SegSample]:
    root = Path(root)
    if layout == "auto":
        if (root / "pairs.csv").exists() or (root / "seg" / "pairs.csv").exists():
            layout = "simple"
        elif not root.exists():
            raise DataError(f"{root}: dataset folder not found")
        else:
            layout = "isic2018"
    if layout == "simple":
        base = root / "seg" if (root / "seg" / "pairs.csv").exists() else root
        samples = read_simple_seg(
            base / "pairs.csv", images or base / "images", masks or base / "masks"
        )
    elif layout == "isic2018":
        imgs = images or _first_dir(root, ("ISIC2018_Task1-2_Training_Input", "images"))
        msks = masks or _first_dir(root, ("ISIC2018_Task1_Training_GroundTruth", "masks"))
        samples = read_isic2018_seg(imgs, msks)
    else:
        raise DataError(f"unknown segmentation layout {layout!r}: use auto, simple or isic2018")
    if not samples:
        raise DataError(f"{root}: the segmentation dataset has no image/mask pairs")
    return samples


def _first_dir(root: Path, names: tuple[str, ...]) -> Path:
    for n in names:
        if (root / n).is_dir():
            return root / n
    raise DataError(f"{root}: none of the folders {', '.join(names)} exists")


def read_simple_seg(pairs_csv: Path, images: Path, masks: Path) -> list[SegSample]:
    rows = _read_csv(pairs_csv, ["image", "mask"])
    return [
        SegSample(
            image=_image_path(images, r["image"], pairs_csv, i),
            mask=_image_path(masks, r["mask"], pairs_csv, i),
        )
        for i, r in enumerate(rows, start=2)
    ]


def read_isic2018_seg(images: Path, masks: Path) -> list[SegSample]:
    out = []
    for p in sorted(Path(images).iterdir()):
        if p.suffix.lower() not in (".jpg", ".jpeg", ".png"):
            continue
        m = Path(masks) / f"{p.stem}_segmentation.png"
        if not m.is_file():
            raise DataError(f"{p}: its mask {m} is missing")
        out.append(SegSample(image=p, mask=m))
    return out
