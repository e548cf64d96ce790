"""Tiny generated datasets in every layout the trainer reads.

Images are synthetic dermoscopy-like frames: skin-toned background, a dark vignette border,
and an elliptical "lesion" whose colour depends on the class, so a tiny model can learn
something in one epoch. Masks are the exact ellipses.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermaedge_train.data import CLASSES

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "tests" / "samples"
LESION_COLOURS = [
    (60, 30, 25),
    (150, 90, 60),
    (200, 120, 140),
    (190, 80, 70),
    (120, 100, 60),
    (170, 110, 90),
    (180, 40, 60),
    (230, 180, 170),
]


def synth_image(label: int, seed: int, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.empty((size, size, 3), np.float64)
    img[...] = (220, 170, 150)
    img += rng.normal(0, 6, img.shape)
    cy, cx = size / 2 + rng.uniform(-4, 4), size / 2 + rng.uniform(-4, 4)
    ry, rx = rng.uniform(size / 8, size / 4), rng.uniform(size / 8, size / 4)
    mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    img[mask] = np.array(LESION_COLOURS[label]) + rng.normal(0, 6, (mask.sum(), 3))
    img[:2], img[-2:], img[:, :2], img[:, -2:] = 0, 0, 0, 0  # black dermatoscope border
    return img.clip(0, 255).astype(np.uint8), mask.astype(np.uint8)


def _save(img: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


@pytest.fixture(scope="session")
def simple_root(tmp_path_factory) -> Path:
    """The `simple` layout (like ../shared/data): cls/ and seg/, 4 images per class."""
    root = tmp_path_factory.mktemp("simple")
    rows, pairs = [], []
    for label in range(len(CLASSES)):
        for k in range(4):
            i = label * 10 + k
            img, mask = synth_image(label, i)
            name = f"ISIC_{i:07d}"
            _save(img, root / "cls" / "images" / f"{name}.jpg")
            # two images of one lesion for every pair of k, as in HAM10000
            rows.append(
                [
                    f"{name}.jpg",
                    CLASSES[label],
                    f"HAM_{label}_{k // 2}",
                    "50",
                    "male",
                    "back",
                    "synthetic_a" if k < 3 else "synthetic_b",
                    "48",
                    "48",
                ]
            )
            _save(img, root / "seg" / "images" / f"{name}.jpg")
            _save(mask * 255, root / "seg" / "masks" / f"{name}.png")
            pairs.append([f"{name}.jpg", f"{name}.png"])
    with open(root / "cls" / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["image", "label", "lesion_id", "age", "sex", "site", "source", "width", "height"]
        )
        w.writerows(rows)
    with open(root / "seg" / "pairs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "mask"])
        w.writerows(pairs)
    return root


@pytest.fixture()
def isic2019_root(tmp_path) -> Path:
    root = tmp_path / "isic2019"
    (root / "ISIC_2019_Training_Input").mkdir(parents=True)
    with open(root / "ISIC_2019_Training_GroundTruth.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", *CLASSES, "UNK"])
        for label in range(len(CLASSES)):
            name = f"ISIC_{label:07d}"
            _save(synth_image(label, label)[0], root / "ISIC_2019_Training_Input" / f"{name}.jpg")
            w.writerow([name, *("1.0" if c == label else "0.0" for c in range(8)), "0.0"])
    with open(root / "ISIC_2019_Training_Metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "age_approx", "anatom_site_general", "lesion_id", "sex"])
        w.writerow(["ISIC_0000000", "55", "head/neck", "BCN_1", "female"])
    return root


@pytest.fixture()
def ham_root(tmp_path) -> Path:
    root = tmp_path / "ham"
    codes = ["mel", "nv", "bcc", "akiec", "bkl", "df", "vasc", "scc"]
    root.mkdir(parents=True)
    with open(root / "HAM10000_metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"])
        for label, code in enumerate(codes):
            image_id = f"ISIC_{24306 + label:07d}"
            part = "HAM10000_images_part_1" if label < 4 else "HAM10000_images_part_2"
            _save(synth_image(label, label)[0], root / part / f"{image_id}.jpg")
            w.writerow([f"HAM_{label:07d}", image_id, code, "histo", "60", "male", "back"])
    return root


@pytest.fixture()
def isic2018_root(tmp_path) -> Path:
    root = tmp_path / "isic2018"
    for i in range(3):
        img, mask = synth_image(i, i)
        _save(img, root / "ISIC2018_Task1-2_Training_Input" / f"ISIC_{i:07d}.jpg")
        _save(
            mask * 255,
            root / "ISIC2018_Task1_Training_GroundTruth" / f"ISIC_{i:07d}_segmentation.png",
        )
    return root
