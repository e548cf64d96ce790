"""Out-of-distribution statistics: is this frame a dermoscopic image like the training data?

The classifier's mid-level features describe texture and colour (block 7 of EfficientNet-Lite0:
80 channels at 1/16 of the input). Each channel's mean and standard deviation over the image
give a 160-d vector; dermoscopy occupies a compact region of that space, and wallpapers,
colour bars, lens caps or rulers lie far from it. The distance is the Mahalanobis distance in
the top ``COMPONENTS`` principal directions of the training split (whitened), computed inside
the exported ONNX graph as a second output, ``ood_distance``, so the device needs no extra
code path to stay in step with the trainer.

Why these features and not the pooled head (1,280-d, what the class decision uses): measured
with the 1.0.0 classifier (scripts/ood_probe.py, issue 11), the head refused 85-89 % of ordinary
photos at a useful threshold, block 7 97-100 %; early blocks are more source-specific, so the
threshold carries a margin for an unseen clinic (below).

The threshold: ``margin`` x the 99th percentile of the calibration split's distances. The
margin comes from leave-one-source-out fits: for every training source with at least
``MIN_SOURCE_IMAGES`` images, fit without it and take the 98th percentile of its images'
distances over the 99th percentile of the other calibration images; the largest ratio is the
margin. So a clinic whose images the fit never saw, as different as the most different source
here, is falsely refused about 2 % of the time, by construction on the sources we have.
"""

from __future__ import annotations

import collections

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

COMPONENTS = 64
CALIB_QUANTILE = 0.99
SOURCE_QUANTILE = 0.98
MIN_SOURCE_IMAGES = 200
# Without two sources large enough for the leave-one-source-out rule (tiny test data), the
# margin the 1.0.0 classifier's rule gave, rounded up; the manifest says which rule was used.
DEFAULT_MARGIN = 2.0
SHRINKAGE = 1e-3
OUTPUT = "ood_distance"


class OodError(Exception):
    """The statistics cannot be fitted; the message says on what."""


def feature_layer(model: nn.Module) -> tuple[nn.Module, str]:
    """The module whose output the statistics describe, and its name for the manifest."""
    net = model.net
    if hasattr(net, "_blocks"):  # EfficientNet-Lite0
        return net._blocks[7], "EfficientNet block 7 output"
    if hasattr(net, "block2"):  # Xception
        return net.block2, "Xception block 2 output"
    raise OodError(f"{type(model).__name__}: no feature layer known for OOD statistics")


def pooled_stats(a: torch.Tensor) -> torch.Tensor:
    """Per-channel mean and population standard deviation over H and W: N x 2C."""
    m = a.mean((2, 3))
    s = ((a - m[..., None, None]) ** 2).mean((2, 3)).sqrt()
    return torch.cat([m, s], 1)


class WithOod(nn.Module):
    """The classifier with a second output: the OOD distance of its input."""

    def __init__(self, model: nn.Module, mean: np.ndarray, projection: np.ndarray):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.from_numpy(mean.astype(np.float32)))
        self.register_buffer("projection", torch.from_numpy(projection.astype(np.float32)))
        self._act = None
        layer, _ = feature_layer(model)
        self._hook = layer.register_forward_hook(self._keep)
        # torch.onnx.export restores the mode it found: a wrapper left in training mode
        # would put the classifier's BatchNorm back into training after the export.
        self.eval()

    def _keep(self, _module, _inputs, output):
        self._act = output

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)
        z = (pooled_stats(self._act) - self.mean) @ self.projection
        return logits, (z * z).sum(1)

    def remove_hook(self) -> None:
        self._hook.remove()


@torch.no_grad()
def features_of_batch(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Pooled statistics of a batch of model inputs (float64, N x 2C)."""
    layer, _ = feature_layer(model)
    acts = []
    hook = layer.register_forward_hook(lambda _m, _i, o: acts.append(pooled_stats(o)))
    try:
        model.eval()
        model(x)
    finally:
        hook.remove()
    return acts[0].double().numpy()


def features(model: nn.Module, samples: list, steps: list, masks_dir=None) -> np.ndarray:
    """Pooled statistics of `samples`, preprocessed exactly as the device does."""
    from .evaluate import Preprocessed

    loader = DataLoader(Preprocessed(samples, steps, masks_dir), batch_size=32, num_workers=2)
    return np.concatenate([features_of_batch(model, x) for x, _ in loader])


def fit(feats: np.ndarray, components: int = COMPONENTS) -> tuple[np.ndarray, np.ndarray]:
    """Mean and whitening projection (D x k) of the top principal directions."""
    n, d = feats.shape
    if n < 2:
        raise OodError(f"{n} training image(s): too few to fit OOD statistics")
    mean = feats.mean(0)
    cov = np.cov(feats - mean, rowvar=False).reshape(d, d)
    # A little shrinkage keeps the whitening finite where directions have no variance.
    cov += SHRINKAGE * np.trace(cov) / d * np.eye(d)
    w, v = np.linalg.eigh(cov)
    # No more directions than the images span: beyond rank n-1 the eigenvalues are the
    # shrinkage alone, and whitening them would amplify rounding noise into the distance.
    k = min(components, d, n - 1)
    w, v = w[::-1][:k], v[:, ::-1][:, :k]
    return mean, v / np.sqrt(w)


def distance(feats: np.ndarray, mean: np.ndarray, projection: np.ndarray) -> np.ndarray:
    z = (feats - mean) @ projection
    return (z * z).sum(1)


def source_margins(train_f, train_src, calib_f, calib_src) -> dict[str, float]:
    """Leave-one-source-out: per large source, q98(its distances) / q99(other calibration)."""
    counts = collections.Counter(train_src)
    big = sorted(s for s, n in counts.items() if n >= MIN_SOURCE_IMAGES)
    if len(big) < 2:
        return {}
    train_src, calib_src = np.asarray(train_src), np.asarray(calib_src)
    out = {}
    for s in big:
        others = calib_src != s
        if others.sum() < 10:
            continue
        mean, proj = fit(train_f[train_src != s])
        t = np.quantile(distance(calib_f[others], mean, proj), CALIB_QUANTILE)
        held = distance(train_f[train_src == s], mean, proj)
        out[s] = float(np.quantile(held, SOURCE_QUANTILE) / t)
    return out


def refusal_by_source(dist: np.ndarray, sources: list[str], threshold: float) -> dict:
    by = collections.defaultdict(list)
    for s, d in zip(sources, dist, strict=True):
        by[s].append(bool(d > threshold))
    return {s: {"n": len(v), "refused": float(np.mean(v))} for s, v in sorted(by.items())}


def onnx_distances(path, samples: list, steps: list, masks_dir=None) -> np.ndarray:
    """The exported file's `ood_distance` for `samples` (no flip: the device decides on the
    frame as it is)."""
    from .evaluate import Preprocessed, onnx_logits_fn

    fn = onnx_logits_fn(path, output=1)
    loader = DataLoader(Preprocessed(samples, steps, masks_dir), batch_size=32, num_workers=2)
    out = np.zeros(len(samples), np.float64)
    for x, idx in loader:
        out[idx.numpy()] = fn(x.numpy()).ravel()
    return out


def fit_for_export(model: nn.Module, train_set: list, calib_set: list, steps: list, masks_dir):
    """Fit on the training split; the margin from leave-one-source-out on `calib_set` (the
    split the threshold is chosen on). Returns the wrapped model to export and the manifest's
    `ood` block without its threshold."""
    train_f = features(model, train_set, steps, masks_dir)
    mean, proj = fit(train_f)
    margins = source_margins(
        train_f,
        [s.source for s in train_set],
        features(model, calib_set, steps, masks_dir),
        [s.source for s in calib_set],
    )
    margin = max([1.0, *margins.values()]) if margins else DEFAULT_MARGIN
    _, layer = feature_layer(model)
    block = {
        "output": OUTPUT,
        "method": "mahalanobis",
        "features": f"{layer}: per-channel mean and standard deviation over the image",
        "components": int(proj.shape[1]),
        "fitted_on": f"train split, {len(train_set)} images",
        "margin": float(margin),
        "margin_rule": (
            f"leave-one-source-out, {SOURCE_QUANTILE:.0%} of each held-out source"
            if margins
            else f"default {DEFAULT_MARGIN} (no two sources of >= {MIN_SOURCE_IMAGES} images)"
        ),
        "source_margins": margins,
        "calib_quantile": CALIB_QUANTILE,
    }
    return WithOod(model, mean, proj), block


def threshold_for(path, calib_set: list, steps: list, masks_dir, block: dict) -> float:
    """margin x the calibration split's quantile, on this exact file's outputs."""
    d = onnx_distances(path, calib_set, steps, masks_dir)
    return float(block["margin"] * np.quantile(d, CALIB_QUANTILE))
