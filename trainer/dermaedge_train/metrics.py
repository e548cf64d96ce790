"""Classification and segmentation metrics, as the ISIC challenges define them.

- Balanced multiclass accuracy (BMA): the mean of per-class sensitivities over the classes
  that have true samples (the ISIC 2019 ranking metric).
- Melanoma sensitivity at a specificity: the best threshold on P(MEL) whose specificity reaches
  the target; that threshold is the device's melanoma operating point.
- Expected calibration error: 15 equal-width confidence bins, weighted by bin size.
- Segmentation: per-image Jaccard (IoU) and Dice; the ISIC 2018 thresholded Jaccard scores a
  per-image Jaccard below 0.65 as 0.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve

from .data import CLASSES

MEL = CLASSES.index("MEL")


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    present = np.unique(y_true)
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in present]))


def per_class(y_true: np.ndarray, probs: np.ndarray) -> list[dict]:
    y_pred = probs.argmax(axis=1)
    k = probs.shape[1]
    cm = confusion_matrix(y_true, y_pred, labels=list(range(k)))
    out = []
    for c in range(k):
        tp = cm[c, c]
        fn = cm[c].sum() - tp
        fp = cm[:, c].sum() - tp
        tn = cm.sum() - tp - fn - fp
        positives = int((y_true == c).sum())
        auc = (
            float(roc_auc_score(y_true == c, probs[:, c]))
            if 0 < positives < len(y_true)
            else float("nan")
        )
        out.append(
            {
                "class": CLASSES[c],
                "support": positives,
                "sensitivity": float(tp / (tp + fn)) if tp + fn else float("nan"),
                "specificity": float(tn / (tn + fp)) if tn + fp else float("nan"),
                "auc": auc,
            }
        )
    return out


def sensitivity_at_specificity(
    positive: np.ndarray, score: np.ndarray, min_specificity: float
) -> tuple[float, float, float]:
    """(sensitivity, specificity, threshold) of the most sensitive threshold with
    specificity >= min_specificity; 'score >= threshold' means positive."""
    if positive.all() or not positive.any():
        return float("nan"), float("nan"), float("nan")
    fpr, tpr, thr = roc_curve(positive, score)
    ok = np.flatnonzero(1 - fpr >= min_specificity - 1e-12)
    best = ok[np.argmax(tpr[ok])]
    threshold = float(min(thr[best], 1.0))
    return float(tpr[best]), float(1 - fpr[best]), threshold


def rates_at_threshold(
    positive: np.ndarray, score: np.ndarray, threshold: float
) -> tuple[float, float]:
    """(sensitivity, specificity) of 'score >= threshold means positive'."""
    pred = score >= threshold
    sens = float(pred[positive].mean()) if positive.any() else float("nan")
    spec = float((~pred[~positive]).mean()) if (~positive).any() else float("nan")
    return sens, spec


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    return float(ece)


def fit_temperature(logits: np.ndarray, y_true: np.ndarray) -> float:
    """The temperature T that minimises the NLL of softmax(logits / T) (Guo et al., 2017)."""

    def nll(log_t: float) -> float:
        p = softmax(logits, math.exp(log_t))
        return float(-np.mean(np.log(p[np.arange(len(y_true)), y_true] + 1e-12)))

    res = minimize_scalar(nll, bounds=(math.log(0.05), math.log(20.0)), method="bounded")
    return float(math.exp(res.x))


def classification_report(
    y_true: np.ndarray, probs: np.ndarray, mel_specificity: float = 0.72
) -> dict:
    y_true = np.asarray(y_true)
    y_pred = probs.argmax(axis=1)
    sens, spec, thr = sensitivity_at_specificity(y_true == MEL, probs[:, MEL], mel_specificity)
    classes = per_class(y_true, probs)
    aucs = [c["auc"] for c in classes if not math.isnan(c["auc"])]
    return {
        "n": int(len(y_true)),
        "balanced_accuracy": balanced_accuracy(y_true, y_pred),
        "accuracy": float(np.mean(y_pred == y_true)),
        "mean_auc": float(np.mean(aucs)) if aucs else float("nan"),
        "melanoma": {
            "auc": classes[MEL]["auc"],
            "target_specificity": mel_specificity,
            "sensitivity": sens,
            "specificity": spec,
            "threshold": thr,
        },
        "ece": expected_calibration_error(y_true, probs),
        "per_class": classes,
        "confusion_matrix": confusion_matrix(
            y_true, y_pred, labels=list(range(len(CLASSES)))
        ).tolist(),
    }


def jaccard(pred: np.ndarray, truth: np.ndarray) -> float:
    pred, truth = pred.astype(bool), truth.astype(bool)
    union = np.logical_or(pred, truth).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(pred, truth).sum() / union)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    pred, truth = pred.astype(bool), truth.astype(bool)
    total = pred.sum() + truth.sum()
    if total == 0:
        return 1.0
    return float(2 * np.logical_and(pred, truth).sum() / total)


def segmentation_report(jaccards: list[float], dices: list[float]) -> dict:
    j = np.asarray(jaccards)
    return {
        "n": int(len(j)),
        "jaccard": float(j.mean()),
        "thresholded_jaccard": float(np.where(j < 0.65, 0.0, j).mean()),
        "dice": float(np.mean(dices)),
    }


def bootstrap_ci(values: np.ndarray, stat, n: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of stat(values[idx]) over resampled rows."""
    rng = np.random.default_rng(seed)
    stats = [stat(rng.integers(0, len(values), len(values))) for _ in range(n)]
    return float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))


def json_safe(x):
    """Replace NaN/inf (undefined metrics, e.g. AUC of an absent class) by None for JSON."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x
