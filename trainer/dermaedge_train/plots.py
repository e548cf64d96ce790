"""Figures saved with every evaluation: confusion matrix, ROC curves, reliability diagram,
and overlays of the worst segmentations."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from .data import CLASSES  # noqa: E402


def confusion(cm: list[list[int]], path: Path) -> None:
    cm = np.asarray(cm)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(CLASSES)), CLASSES, rotation=45)
    ax.set_yticks(range(len(CLASSES)), CLASSES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(CLASSES)):
        for j in range(len(CLASSES)):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    ax.set_title("confusion matrix (row-normalised colour, counts)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def roc(y_true: np.ndarray, probs: np.ndarray, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 5))
    for c, name in enumerate(CLASSES):
        pos = y_true == c
        if 0 < pos.sum() < len(y_true):
            fpr, tpr, _ = roc_curve(pos, probs[:, c])
            ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.legend(fontsize=8)
    ax.set_title("ROC, one class against the rest")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def reliability(y_true: np.ndarray, probs: np.ndarray, path: Path, bins: int = 15) -> None:
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0, 1, bins + 1)
    centres, accs, counts = [], [], []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            centres.append(conf[inside].mean())
            accs.append(correct[inside].mean())
            counts.append(inside.sum())
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.scatter(centres, accs, s=np.sqrt(np.asarray(counts)) * 6)
    ax.plot(centres, accs)
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title("reliability diagram")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def overlay(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, path: Path) -> None:
    """Image with the true outline in green and the predicted mask tinted red."""
    out = image.astype(np.float32).copy()
    out[pred.astype(bool)] = out[pred.astype(bool)] * 0.6 + np.array([255, 0, 0]) * 0.4
    t = truth.astype(bool)
    edge = t & ~(np.roll(t, 1, 0) & np.roll(t, -1, 0) & np.roll(t, 1, 1) & np.roll(t, -1, 1))
    out[edge] = [0, 255, 0]
    Image.fromarray(out.clip(0, 255).astype(np.uint8)).save(path)
