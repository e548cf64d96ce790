"""train -> evaluate -> export -> quantize -> parity, for both tasks, on tiny models.

Also checks the two sides of the device contract the trainer owns: every manifest validates
against models/manifest.schema.json and names the sha256 of its file, and the reference
outputs are reproduced by onnxruntime from the stored reference inputs.
"""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermaedge_train import preprocess
from dermaedge_train.cli import main
from dermaedge_train.evaluate import onnx_logits_fn
from dermaedge_train.export import ExportError, sha256, validate_manifest

from .conftest import SAMPLES

REFERENCES = [str(SAMPLES / "ISIC_0001100.jpg"), str(SAMPLES / "ISIC_0011593.jpg")]


def _train(root: Path, out: Path, task: str, arch: str, epochs: int, extra=()) -> Path:
    args = [
        "train",
        "--out",
        str(out),
        "--set",
        f"data.root={root}",
        "--set",
        f"task={task}",
        "--set",
        f"model.arch={arch}",
        "--set",
        "data.image_size=64",
        "--set",
        "data.val_fraction=0.5",
        "--set",
        f"train.epochs={epochs}",
        "--set",
        "train.batch_size=8",
        "--set",
        "train.workers=0",
        "--set",
        "train.lr=0.003",
        "--set",
        "model.width=8",
        "--set",
        "data.augment.scale=[0.8, 1.0]",
        *extra,
    ]
    assert main(args) == 0
    return out / "best.pt"


@pytest.fixture(scope="module")
def cls_run(simple_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cls_run")
    _train(
        simple_root,
        out,
        "classification",
        "efficientnet_lite0",
        3,
        ["--set", "data.color_constancy.enabled=true"],
    )
    return out


@pytest.fixture(scope="module")
def seg_run(simple_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("seg_run")
    _train(simple_root, out, "segmentation", "unet", 3)
    return out


def test_classifier_run_directory(cls_run):
    assert (cls_run / "config.yaml").exists() and (cls_run / "split.csv").exists()
    rows = [json.loads(line) for line in (cls_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert all(r["img_per_s"] > 0 and 0 <= r["val"]["balanced_accuracy"] <= 1 for r in rows)
    import torch

    ckpt = torch.load(cls_run / "best.pt", weights_only=False)
    assert ckpt["temperature"] > 0
    assert [s["op"] for s in ckpt["steps"]] == [
        "crop_border",
        "resize",
        "shades_of_gray",
        "normalize",
    ]


def test_resume_continues_from_last_checkpoint(simple_root, tmp_path):
    _train(
        simple_root,
        tmp_path,
        "classification",
        "efficientnet_lite0",
        1,
        ["--set", "model.pretrained=false"],
    )
    args = [
        "train",
        "--out",
        str(tmp_path),
        "--resume",
        "--config",
        str(tmp_path / "config.yaml"),
        "--set",
        "train.epochs=2",
    ]
    assert main(args) == 0
    epochs = [
        json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
    ]
    assert epochs == [1, 2]


def test_evaluate_writes_isic_csv_scored_like_the_official_scorer(cls_run, tmp_path):
    scoring = pytest.importorskip("isic_challenge_scoring")
    out = tmp_path / "eval"
    assert main(["evaluate", str(cls_run / "best.pt"), "--out", str(out)]) == 0
    with open(out / "predictions.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["image", "MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]
    assert all(abs(sum(map(float, r[1:])) - 1) < 1e-5 for r in rows[1:])
    ours = json.loads((out / "metrics.json").read_text())
    official = scoring.ClassificationScore.from_file(
        out / "truth.csv", out / "predictions.csv", scoring.ClassificationMetric.BALANCED_ACCURACY
    )
    assert ours["balanced_accuracy"] == pytest.approx(official.overall, abs=1e-9)
    for png in ("confusion.png", "roc.png", "reliability.png"):
        assert Image.open(out / png).size[0] > 100


def _check_manifests(models: Path, name: str, task: str) -> list[dict]:
    manifests = []
    for precision in ("f32", "int8"):
        m = json.loads((models / f"{name}-{precision}.json").read_text())
        validate_manifest(m)
        assert m["sha256"] == sha256(models / m["file"])
        assert m["task"] == task and m["opset"] >= 13
        ref = json.loads((models / m["reference"]).read_text())
        fn = onnx_logits_fn(models / m["file"])
        norm = m["preprocessing"][-1]
        assert len(ref["cases"]) == 2
        for case in ref["cases"]:
            pre = np.asarray(Image.open(models / case["input"]))
            # the stored input is exactly what the steps make of the sample image
            from dermaedge_train.data import load_rgb

            again = preprocess.apply_steps(
                load_rgb(SAMPLES / case["image"]), m["preprocessing"], stop_before="normalize"
            )
            assert np.array_equal(pre, again)
            out = fn(preprocess.normalize(pre, norm["mean"], norm["std"]))
            if task == "classification":
                stored = np.array(case["output"])
            else:
                out = out[0, 0, :: case["output_stride"], :: case["output_stride"]]
                stored = np.array(case["output"]).reshape(out.shape)
            assert np.abs(out.ravel() - stored.ravel()).max() < 1e-5
        manifests.append(m)
    return manifests


@pytest.fixture(scope="module")
def cls_models(cls_run, tmp_path_factory) -> Path:
    models = tmp_path_factory.mktemp("models")
    assert (
        main(
            [
                "export",
                str(cls_run / "best.pt"),
                "--out",
                str(models),
                "--name",
                "classifier",
                "--version",
                "0.0.1-test",
                "--reference",
                *REFERENCES,
                "--allow-int8-drift",
            ]
        )
        == 0
    )
    return models


def test_export_classifier(cls_models):
    models = cls_models
    f32, int8 = _check_manifests(models, "classifier", "classification")
    assert f32["metrics"]["parity"]["max_abs_diff_vs_pytorch"] < 1e-4
    assert 0 <= int8["metrics"]["parity"]["argmax_agreement_vs_float32"] <= 1
    assert f32["classes"] == ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]
    assert 0 <= f32["decision"]["melanoma_threshold"] <= 1
    assert f32["calibration"]["temperature"] > 0
    assert "CC BY-NC 4.0" in f32["license"]
    assert (models / "classifier-int8.onnx").stat().st_size < (
        models / "classifier-f32.onnx"
    ).stat().st_size / 2
    # OOD statistics (issue 11): the second output, the threshold from this file's outputs,
    # the tiny run's single source falls back to the default margin and says so
    for m in (f32, int8):
        o = m["ood"]
        assert o["output"] == "ood_distance" and o["threshold"] > 0
        assert o["margin"] == 2.0 and o["margin_rule"].startswith("default")
        assert 0 <= m["metrics"]["ood"]["false_refusal"] <= 1
        ref = json.loads((models / m["reference"]).read_text())
        dist = onnx_logits_fn(models / m["file"], output=1)
        for case in ref["cases"]:
            pre = np.asarray(Image.open(models / case["input"]))
            norm = m["preprocessing"][-1]
            got = dist(preprocess.normalize(pre, norm["mean"], norm["std"]))[0]
            assert got == pytest.approx(case["ood_distance"], rel=1e-4)
    # and the contract: a classifier manifest without them is not valid
    bare = {k: v for k, v in f32.items() if k != "ood"}
    with pytest.raises(ExportError, match="ood"):
        validate_manifest(bare)


def test_export_segmenter_and_evaluate_full_resolution(seg_run, tmp_path):
    models = tmp_path / "models"
    assert (
        main(
            [
                "export",
                str(seg_run / "best.pt"),
                "--out",
                str(models),
                "--name",
                "segmenter",
                "--version",
                "0.0.1-test",
                "--reference",
                *REFERENCES,
            ]
        )
        == 0
    )
    f32, int8 = _check_manifests(models, "segmenter", "segmentation")
    assert int8["metrics"]["parity"]["mask_agreement_vs_float32"] >= 0.99
    assert 0 <= f32["metrics"]["thresholded_jaccard"] <= f32["metrics"]["jaccard"] <= 1
    assert f32["decision"]["mask_threshold"] == 0.5
    assert list((seg_run / "export-eval" / "segmenter-f32").glob("worst_*.png"))


@pytest.mark.parametrize(
    "path, value, message",
    [
        (["sha256"], "abc", r"manifest sha256: 'abc' does not match"),
        (["preprocessing", 0, "op"], "sharpen", r"manifest preprocessing/0: .* is not valid"),
        (["calibration"], None, r"'calibration' is a required property"),
        (["input", "layout"], "NHWC", r"manifest input/layout: 'NCHW' was expected"),
        (["opset"], 11, r"manifest opset: 11 is less than the minimum of 13"),
    ],
)
def test_manifest_schema_rejects_wrong_manifests(cls_models, path, value, message):
    from dermaedge_train.export import ExportError

    m = json.loads((cls_models / "classifier-f32.json").read_text())
    node = m
    for key in path[:-1]:
        node = node[key]
    if value is None:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    with pytest.raises(ExportError, match=message):
        validate_manifest(m)


def test_cli_reports_bad_input_in_one_line(tmp_path):
    (tmp_path / "labels.csv").write_text("image,label\nmissing.jpg,MEL\n")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "dermaedge_train.cli",
            "train",
            "--out",
            str(tmp_path / "run"),
            "--set",
            f"data.root={tmp_path}",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0
    assert "labels.csv row 2: image 'missing.jpg' not found" in r.stderr
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "dermaedge_train.cli",
            "export",
            str(tmp_path / "none.pt"),
            "--out",
            str(tmp_path),
            "--name",
            "x",
            "--version",
            "1",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "none.pt: checkpoint not found" in r.stderr


def test_predict_masks_then_train_on_lesion_crops(seg_run, simple_root, tmp_path):
    masks = tmp_path / "masks"
    assert (
        main(
            [
                "predict-masks",
                str(seg_run / "best.pt"),
                "--data",
                str(simple_root),
                "--out",
                str(masks),
            ]
        )
        == 0
    )
    assert len(list(masks.glob("*.png"))) == 32
    out = tmp_path / "run"
    _train(
        simple_root,
        out,
        "classification",
        "efficientnet_lite0",
        1,
        [
            "--set",
            "data.lesion_crop.enabled=true",
            "--set",
            f"data.lesion_crop.masks_dir={masks}",
            "--set",
            "model.pretrained=false",
        ],
    )
    import torch

    steps = torch.load(out / "best.pt", weights_only=False)["steps"]
    assert [s["op"] for s in steps][:2] == ["crop_border", "lesion_crop"]


def test_distributed_training_with_torchrun_on_cpu(simple_root, tmp_path):
    """DDP through torchrun (gloo on CPU): two ranks, one epoch, rank 0 writes the run."""
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "dermaedge_train.cli",
            "train",
            "--out",
            str(tmp_path),
            "--set",
            f"data.root={simple_root}",
            "--set",
            "data.image_size=64",
            "--set",
            "train.epochs=1",
            "--set",
            "train.batch_size=4",
            "--set",
            "train.workers=0",
            "--set",
            "model.pretrained=false",
            "--set",
            "data.val_fraction=0.5",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1 and (tmp_path / "best.pt").exists()
