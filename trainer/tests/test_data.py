"""Readers for every layout, and a clear error for every bad input, naming the file."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermaedge_train.data import (
    CLASSES,
    DataError,
    load_classification,
    load_mask,
    load_rgb,
    load_segmentation,
)

from .conftest import SAMPLES


def test_simple_layout_reads_every_row(simple_root):
    samples = load_classification(simple_root)
    assert len(samples) == 32
    assert sorted({s.label for s in samples}) == list(range(8))
    assert samples[0].lesion_id == "HAM_0_0" and samples[0].source == "synthetic_a"
    seg = load_segmentation(simple_root)
    assert len(seg) == 32 and seg[0].mask.name.endswith(".png")


def test_isic2019_layout_with_metadata(isic2019_root):
    samples = load_classification(isic2019_root)
    assert [CLASSES[s.label] for s in samples] == list(CLASSES)
    assert samples[0].lesion_id == "BCN_1" and samples[0].site == "head/neck"


def test_ham10000_layout_maps_dx_codes(ham_root):
    samples = load_classification(ham_root)
    assert [CLASSES[s.label] for s in samples] == list(CLASSES)
    assert samples[0].lesion_id == "HAM_0000000"


def test_isic2018_layout_pairs_masks(isic2018_root):
    seg = load_segmentation(isic2018_root)
    assert len(seg) == 3
    assert seg[1].mask.name == "ISIC_0000001_segmentation.png"


def test_real_samples_decode():
    samples = load_classification(SAMPLES, "simple", images=SAMPLES, require_all_classes=False)
    assert len(samples) == 8
    for s in samples:
        img = load_rgb(s.image)
        assert img.dtype == np.uint8 and img.ndim == 3


def _rewrite_labels(root: Path, old: str, new: str) -> None:
    p = root / "cls" / "labels.csv"
    p.write_text(p.read_text().replace(old, new, 1))


def test_missing_image_names_row_and_file(simple_root, tmp_path):
    import shutil

    root = tmp_path / "d"
    shutil.copytree(simple_root, root)
    (root / "cls" / "images" / "ISIC_0000001.jpg").unlink()
    with pytest.raises(DataError, match=r"labels.csv row 3: image 'ISIC_0000001.jpg' not found"):
        load_classification(root)


def test_label_outside_classes(simple_root, tmp_path):
    import shutil

    root = tmp_path / "d"
    shutil.copytree(simple_root, root)
    _rewrite_labels(root, "ISIC_0000000.jpg,MEL", "ISIC_0000000.jpg,UNK")
    with pytest.raises(DataError, match=r"row 2: label 'UNK' is not one of MEL"):
        load_classification(root)


def test_empty_class_is_an_error(simple_root, tmp_path):
    import shutil

    root = tmp_path / "d"
    shutil.copytree(simple_root, root)
    text = (root / "cls" / "labels.csv").read_text().splitlines()
    kept = [line for line in text if ",DF," not in line]
    (root / "cls" / "labels.csv").write_text("\n".join(kept) + "\n")
    with pytest.raises(DataError, match=r"class\(es\) DF have no images"):
        load_classification(root)
    assert len(load_classification(root, require_all_classes=False)) == 28


def test_missing_column(tmp_path):
    (tmp_path / "labels.csv").write_text("image,diagnosis\nx.jpg,MEL\n")
    with pytest.raises(DataError, match=r"labels.csv: missing column\(s\) label"):
        load_classification(tmp_path)


def test_isic2019_unk_row_is_refused(isic2019_root):
    gt = isic2019_root / "ISIC_2019_Training_GroundTruth.csv"
    lines = gt.read_text().splitlines()
    lines[1] = "ISIC_0000000,0,0,0,0,0,0,0,0,1.0"
    gt.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"row 2: image ISIC_0000000 is UNK"):
        load_classification(isic2019_root)


def test_ham_unknown_dx(ham_root):
    meta = ham_root / "HAM10000_metadata.csv"
    meta.write_text(meta.read_text().replace(",mel,", ",melanoma,"))
    with pytest.raises(DataError, match=r"row 2: dx 'melanoma' is not a HAM10000 code"):
        load_classification(ham_root)


def test_unreadable_and_truncated_images(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(DataError, match=r"bad.jpg: not a readable image"):
        load_rgb(bad)
    whole = (SAMPLES / "ISIC_0001100.jpg").read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=r"cut.jpg: cannot decode image"):
        load_rgb(cut)
    with pytest.raises(DataError, match=r"nothere.jpg: file not found"):
        load_rgb(tmp_path / "nothere.jpg")


def test_tiny_and_16bit_and_rgba_images(tmp_path):
    Image.new("RGB", (1, 1)).save(tmp_path / "one.png")
    with pytest.raises(DataError, match=r"one.png: image is 1x1 pixels, too small"):
        load_rgb(tmp_path / "one.png")
    deep = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    img = load_rgb(tmp_path / "deep.png")
    assert img.shape == (64, 64, 3) and img.max() == (deep.max() >> 8)
    Image.new("RGBA", (8, 8), (10, 20, 30, 0)).save(tmp_path / "rgba.png")
    assert load_rgb(tmp_path / "rgba.png")[0, 0].tolist() == [10, 20, 30]


def test_mask_size_mismatch(tmp_path):
    Image.new("L", (10, 12)).save(tmp_path / "m.png")
    with pytest.raises(DataError, match=r"m.png: mask is 10x12 but its image is 20x20"):
        load_mask(tmp_path / "m.png", (20, 20))


def test_segmentation_missing_mask(isic2018_root):
    (
        isic2018_root / "ISIC2018_Task1_Training_GroundTruth" / "ISIC_0000002_segmentation.png"
    ).unlink()
    with pytest.raises(DataError, match=r"ISIC_0000002.jpg: its mask .* is missing"):
        load_segmentation(isic2018_root)
