"""Evaluation of a checkpoint or an exported ONNX file, exactly as the device preprocesses.

Classification writes ``predictions.csv`` in the ISIC submission format
(image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC; calibrated probabilities), ``truth.csv`` (the same
columns one-hot, for the official ``isic-challenge-scoring``), ``metrics.json`` (with 95%
bootstrap intervals) and PNG figures. Segmentation scores the predicted mask at the image's
full resolution (as the device uses it) and saves overlays of the worst cases.

`score_csv` scores any predictions CSV — e.g. the one ``dermaedge analyze --csv`` writes — so
the Rust pipeline is measured by the same code.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from . import metrics, plots, preprocess
from .data import CLASSES, ClsSample, DataError, load_mask, load_rgb

LogitsFn = Callable[[np.ndarray], np.ndarray]  # float32 Nx3xHxW -> logits


def torch_logits_fn(model: torch.nn.Module) -> LogitsFn:
    model.eval()

    @torch.no_grad()
    def run(x: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(x)).float().numpy()

    return run


def onnx_logits_fn(path: Path, threads: int = 0, output: int = 0) -> LogitsFn:
    """onnxruntime on an exported file; `output` picks the graph output (1: ood_distance)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        # Exports have a static batch of 1.
        return np.concatenate([sess.run(None, {name: x[i : i + 1]})[output] for i in range(len(x))])

    return run


def model_input(sample, steps: list, masks_dir: Path | None = None) -> np.ndarray:
    """The 1x3xHxW input of one sample, exactly as the manifest's steps make it."""
    img = load_rgb(sample.image)
    mask = None
    if masks_dir is not None:
        mask = load_mask(masks_dir / f"{sample.image_id}.png", img.shape[:2])
    return preprocess.apply_steps(img, steps, mask)


class Preprocessed(Dataset):
    def __init__(self, samples: list, steps: list, masks_dir: Path | None):
        self.samples, self.steps, self.masks_dir = samples, steps, masks_dir

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        x = model_input(self.samples[i], self.steps, self.masks_dir)
        return torch.from_numpy(x[0]), i


def classify(
    fn: LogitsFn,
    samples: list,
    steps: list,
    tta: bool = True,
    masks_dir: Path | None = None,
    workers: int = 2,
    batch: int = 32,
) -> np.ndarray:
    """Logits for `samples` (mean over identity and horizontal flip when `tta`)."""
    loader = DataLoader(
        Preprocessed(samples, steps, masks_dir), batch_size=batch, num_workers=workers
    )
    out = np.zeros((len(samples), len(CLASSES)), np.float32)
    for x, idx in loader:
        x = x.numpy()
        logits = fn(x)
        if tta:
            logits = (logits + fn(np.ascontiguousarray(x[..., ::-1]))) / 2
        out[idx.numpy()] = logits
    return out


def write_predictions(path: Path, image_ids: list[str], probs: np.ndarray) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", *CLASSES])
        for image_id, p in zip(image_ids, probs, strict=True):
            w.writerow([image_id, *(f"{v:.8f}" for v in p)])


def write_truth(path: Path, image_ids: list[str], labels: np.ndarray) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", *CLASSES])
        for image_id, y in zip(image_ids, labels, strict=True):
            w.writerow([image_id, *("1.0" if c == y else "0.0" for c in range(len(CLASSES)))])


# The headline figures of a classification report (the rest is in its metrics.json).
SUMMARY = ("n", "balanced_accuracy", "balanced_accuracy_ci95", "mean_auc", "ece", "melanoma")


def report_classification(
    y: np.ndarray, probs: np.ndarray, out_dir: Path, mel_specificity: float = 0.72
) -> dict:
    """Metrics with bootstrap intervals, and the figures, into out_dir."""
    rep = metrics.classification_report(y, probs, mel_specificity)
    pred = probs.argmax(axis=1)
    rep["balanced_accuracy_ci95"] = metrics.bootstrap_ci(
        y, lambda i: metrics.balanced_accuracy(y[i], pred[i])
    )
    mel = metrics.MEL
    if 0 < (y == mel).sum() < len(y):
        from sklearn.metrics import roc_auc_score

        def auc(i):
            pos = y[i] == mel
            return roc_auc_score(pos, probs[i, mel]) if 0 < pos.sum() < len(i) else np.nan

        rep["melanoma"]["auc_ci95"] = metrics.bootstrap_ci(y, auc)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots.confusion(rep["confusion_matrix"], out_dir / "confusion.png")
    plots.roc(y, probs, out_dir / "roc.png")
    plots.reliability(y, probs, out_dir / "reliability.png")
    (out_dir / "metrics.json").write_text(json.dumps(metrics.json_safe(rep), indent=2))
    return rep


def evaluate_classification(
    fn: LogitsFn,
    samples: list[ClsSample],
    steps: list,
    temperature: float,
    out_dir: Path,
    tta: bool = True,
    masks_dir: Path | None = None,
    workers: int = 2,
    mel_threshold: float | None = None,
) -> dict:
    """Metrics on `samples`; with `mel_threshold` (chosen elsewhere), the melanoma
    sensitivity and specificity are those at that threshold, not at the best one here."""
    out_dir.mkdir(parents=True, exist_ok=True)
    logits = classify(fn, samples, steps, tta, masks_dir, workers)
    probs = metrics.softmax(logits, temperature)
    ids = [s.image_id for s in samples]
    y = np.array([s.label for s in samples])
    write_predictions(out_dir / "predictions.csv", ids, probs)
    write_truth(out_dir / "truth.csv", ids, y)
    rep = report_classification(y, probs, out_dir)
    if mel_threshold is not None and np.isfinite(mel_threshold):
        pos = y == metrics.MEL
        sens, spec = metrics.rates_at_threshold(pos, probs[:, metrics.MEL], mel_threshold)
        rep["melanoma"].update(
            threshold=float(mel_threshold),
            sensitivity=sens,
            specificity=spec,
            threshold_chosen_on="calib",
        )
    rep["temperature"] = temperature
    (out_dir / "metrics.json").write_text(json.dumps(metrics.json_safe(rep), indent=2))
    return rep


def segment_full(fn: LogitsFn, img: np.ndarray, steps: list, threshold: float = 0.5):
    """The lesion mask at the image's resolution, as the device computes it."""
    x = preprocess.apply_steps(img, steps)
    prob = 1 / (1 + np.exp(-fn(x)[0, 0].astype(np.float64)))
    t, b, left, r = preprocess.apply_crops(img, steps)[2]
    up = np.asarray(
        Image.fromarray(prob.astype(np.float32), mode="F").resize((r - left, b - t), Image.BILINEAR)
    )
    mask = np.zeros(img.shape[:2], np.uint8)
    mask[t:b, left:r] = up > threshold
    return mask


def evaluate_segmentation(
    fn: LogitsFn, samples: list, steps: list, out_dir: Path, threshold: float = 0.5, worst: int = 8
) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for s in samples:
        img = load_rgb(s.image)
        truth = load_mask(s.mask, img.shape[:2])
        pred = segment_full(fn, img, steps, threshold)
        rows.append((metrics.jaccard(pred, truth), metrics.dice(pred, truth), s))
    rep = metrics.segmentation_report([r[0] for r in rows], [r[1] for r in rows])
    j = np.array([r[0] for r in rows])
    rep["thresholded_jaccard_ci95"] = metrics.bootstrap_ci(
        j, lambda i: float(np.where(j[i] < 0.65, 0, j[i]).mean())
    )
    rep["per_image"] = {r[2].image_id: round(r[0], 4) for r in rows}
    for jac, _, s in sorted(rows, key=lambda r: r[0])[:worst]:
        img = load_rgb(s.image)
        plots.overlay(
            img,
            load_mask(s.mask, img.shape[:2]),
            segment_full(fn, img, steps, threshold),
            out_dir / f"worst_{jac:.3f}_{s.image_id}.png",
        )
    (out_dir / "metrics.json").write_text(json.dumps(metrics.json_safe(rep), indent=2))
    return rep


def read_probabilities(path: Path) -> dict[str, np.ndarray]:
    """Read an ISIC-format CSV (image + the 8 class columns) into image id -> vector."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError as e:
        raise DataError(f"{path}: file not found") from e
    if not rows or any(c not in rows[0] for c in ("image", *CLASSES)):
        raise DataError(f"{path}: needs the columns image,{','.join(CLASSES)}")
    out = {}
    for i, r in enumerate(rows, start=2):
        try:
            out[Path(r["image"]).stem] = np.array([float(r[c]) for c in CLASSES])
        except ValueError as e:
            raise DataError(f"{path} row {i}: {e}") from e
    return out


def score_csv(pred_csv: Path, truth: dict[str, int] | Path, out_dir: Path) -> dict:
    """Score a predictions CSV against labels (image id -> class) or a one-hot truth CSV."""
    preds = read_probabilities(pred_csv)
    if isinstance(truth, Path):
        truth = {k: int(v.argmax()) for k, v in read_probabilities(truth).items()}
    missing = [k for k in truth if k not in preds]
    if missing:
        raise DataError(f"{pred_csv}: no prediction for {len(missing)} image(s), e.g. {missing[0]}")
    ids = sorted(truth)
    y = np.array([truth[k] for k in ids])
    probs = np.stack([preds[k] for k in ids])
    return report_classification(y, probs, out_dir)


def labels_of(samples: list[ClsSample]) -> dict[str, int]:
    return {s.image_id: s.label for s in samples}
