"""`dermaedge-train device-eval`: the shipped models scored through the device's own pipeline.

Needs the `dermaedge` binary: scripts/test.sh builds it and runs this file again with
DERMAEDGE_BIN set (the first, binary-less pytest run skips it).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from dermaedge_train.cli import main
from dermaedge_train.data import DataError
from dermaedge_train.device_eval import device_eval, device_eval_segmentation

from .conftest import REPO, SAMPLES

BIN = os.environ.get("DERMAEDGE_BIN")
pytestmark = pytest.mark.skipif(not BIN, reason="DERMAEDGE_BIN (the built binary) not set")


@pytest.fixture(scope="module")
def samples_root(tmp_path_factory) -> Path:
    """The eight bundled ISIC samples in the `simple` layout."""
    root = tmp_path_factory.mktemp("samples")
    (root / "cls" / "images").mkdir(parents=True)
    shutil.copy(SAMPLES / "labels.csv", root / "cls" / "labels.csv")
    for jpg in SAMPLES.glob("*.jpg"):
        shutil.copy(jpg, root / "cls" / "images" / jpg.name)
    (root / "seg" / "images").mkdir(parents=True)
    shutil.copy(SAMPLES / "pairs.csv", root / "seg" / "pairs.csv")
    shutil.copytree(SAMPLES / "masks", root / "seg" / "masks")
    for r in rows(SAMPLES / "pairs.csv"):
        shutil.copy(SAMPLES / r["image"], root / "seg" / "images" / r["image"])
    return root


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_scores_what_the_binary_classified_and_reports_coverage(samples_root, tmp_path):
    out = tmp_path / "eval"
    rep = device_eval(Path(BIN), REPO / "models", samples_root, out)
    assert rep["images"] == rep["analyzed"] == 8
    refused = sum(rep["recapture_reasons"].values())
    assert rep["classified"] + refused >= 8  # a refused frame can have several reasons
    assert rep["coverage"] == pytest.approx(rep["classified"] / 8)
    # real dermoscopy, never refused as something else; counted per source too
    assert rep["false_not_dermoscopic"] == 0
    assert sum(n for _, n in rep["not_dermoscopic_by_source"].values()) == 8
    assert rep["classified"] > 0, "the development models classify some of the samples"
    preds, truth = rows(out / "predictions.csv"), rows(out / "truth.csv")
    assert [r["image"] for r in preds] == [r["image"] for r in truth]
    assert len(preds) == rep["classified"] == rep["n"]
    for p in preds:
        assert sum(float(p[c]) for c in p if c != "image") == pytest.approx(1, abs=1e-5)
    labels = {r["image"].removesuffix(".jpg"): r["label"] for r in rows(SAMPLES / "labels.csv")}
    for t in truth:
        assert t[labels[t["image"]]] == "1.0"
    assert 0 <= rep["balanced_accuracy"] <= 1
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    flag = {
        r["image"].removesuffix(".jpg"): r["classification"]["melanoma_flag"]
        for r in results
        if r["status"] == "ok"
    }
    manifest = json.loads((REPO / "models" / "classifier-f32.json").read_text())
    assert rep["melanoma_flag"]["threshold"] == pytest.approx(
        manifest["decision"]["melanoma_threshold"], rel=1e-6
    )
    mel = [t["image"] for t in truth if labels[t["image"]] == "MEL"]
    if mel:
        hits = sum(flag[m] for m in mel)
        assert rep["melanoma_flag"]["sensitivity"] == pytest.approx(hits / len(mel))
    assert {m["precision"] for m in rep["models"]} == {"float32"}
    for groups in (rep["refused_by_source"], rep["refused_by_class"]):
        assert sum(n for _, n in groups.values()) == 8
        assert sum(r for r, _ in groups.values()) == 8 - rep["classified"]
    refused_ids = {r["image"].removesuffix(".jpg") for r in results if r["status"] != "ok"}
    for cls, (refused, n) in rep["refused_by_class"].items():
        assert n == sum(lab == cls for lab in labels.values())
        assert refused == sum(labels[i] == cls for i in refused_ids)
    assert json.loads((out / "device_eval.json").read_text())["coverage"] == rep["coverage"]


def test_a_split_file_selects_its_images(samples_root, tmp_path):
    split = tmp_path / "split.csv"
    names = sorted(p.stem for p in SAMPLES.glob("*.jpg"))
    split.write_text(
        "image,split\n"
        + "".join(f"{n},{'val' if i < 3 else 'train'}\n" for i, n in enumerate(names))
    )
    rep = device_eval(Path(BIN), REPO / "models", samples_root, tmp_path / "e", split_file=split)
    assert rep["images"] == 3


def test_the_command_line_runs_int8_and_names_a_missing_binary(samples_root, tmp_path, capsys):
    args = [
        "device-eval",
        "--binary",
        BIN,
        "--models",
        str(REPO / "models"),
        "--data",
        str(samples_root),
        "--precision",
        "int8",
        "--out",
        str(tmp_path / "e"),
    ]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 8
    with pytest.raises(DataError, match="nope/dermaedge: cannot run it"):
        device_eval(Path("nope/dermaedge"), REPO / "models", samples_root, tmp_path / "f")


def test_segmentation_scores_the_device_masks_against_the_ground_truth(samples_root, tmp_path):
    out = tmp_path / "seg"
    rep = device_eval_segmentation(Path(BIN), REPO / "models", samples_root, out)
    pairs = rows(SAMPLES / "pairs.csv")
    assert rep["n"] == rep["images"] == rep["analyzed"] == len(pairs) == 5
    assert sorted(rep["per_image"]) == sorted(r["image"].removesuffix(".jpg") for r in pairs)
    for r in pairs:  # the masks the device wrote, at the image's size
        stem = r["image"].removesuffix(".jpg")
        assert (
            Image.open(out / "masks" / f"{stem}.mask.png").size
            == Image.open(SAMPLES / r["image"]).size
        )
    j = list(rep["per_image"].values())
    assert rep["jaccard"] == pytest.approx(sum(j) / 5, abs=1e-3)
    assert rep["thresholded_jaccard"] <= rep["jaccard"]
    # the development segmenter finds these lesions (thresholded Jaccard 0.67 at export)
    assert rep["jaccard"] > 0.5
