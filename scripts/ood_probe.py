"""Exploration for issue 11, not part of the product: how far apart are dermoscopy and the
out-of-distribution set (`dermaedge-train ood-set`) in the shipped classifier's pooled-feature
space? Mahalanobis distance in a whitened PCA space fitted on 2,000 training images, threshold
at the 98th percentile of the calibration split, false refusals on the validation split,
refusals per kind on the set's `fit` part (the `test` part stays unseen); energy score beside.
Full frames through the manifest's preprocessing, in PyTorch (the device crops nothing here).

Usage: python scripts/ood_probe.py  (after `source scripts/env.sh`; ~4 min on 2 cores; needs
the 1.0.0 run in ~/.cache/dermaedge/runs/cpu/classifier and the set in ~/.cache/dermaedge/ood)
"""

import csv
import json
from pathlib import Path

import numpy as np
import torch
from dermaedge_train.data import load_classification, load_rgb
from dermaedge_train.export import load_checkpoint
from dermaedge_train.preprocess import apply_steps
from dermaedge_train.splits import load_split, select

torch.set_num_threads(2)
run = Path.home() / ".cache/dermaedge/runs/cpu/classifier"
model, ckpt, cfg = load_checkpoint(run / "best.pt")
model.eval()
steps = [
    s
    for s in json.load(
        (Path(__file__).resolve().parent.parent / "models/classifier-f32.json").open()
    )["preprocessing"]
    if s["op"] != "lesion_crop"
]


def feats(paths):
    out, logits = [], []
    for i in range(0, len(paths), 32):
        x = torch.from_numpy(
            np.concatenate([apply_steps(load_rgb(p), steps) for p in paths[i : i + 32]])
        )
        with torch.no_grad():
            f = model.net._avg_pooling(model.net.extract_features(x)).flatten(1)
            logits.append(model.net._fc(f).numpy())
            out.append(f.numpy())
    return np.concatenate(out), np.concatenate(logits)


samples = load_classification(
    Path(__file__).resolve().parent.parent.parent / "shared/data",
    require_all_classes=False,
)
assign = load_split(run / "split.csv", samples)
rng = np.random.default_rng(0)
tr = select(samples, assign, "train")
tr = [tr[i] for i in rng.choice(len(tr), 2000, replace=False)]
cal, val = select(samples, assign, "calib"), select(samples, assign, "val")
ood_root = Path.home() / ".cache/dermaedge/ood"
ood = [
    r
    for r in csv.DictReader((ood_root / "kinds.csv").read_text().splitlines())
    if r["part"] == "fit"
]
Ftr, _ = feats([s.image for s in tr])
Fcal, Lcal = feats([s.image for s in cal])
Fval, Lval = feats([s.image for s in val])
Food, Lood = feats([ood_root / "images" / r["image"] for r in ood])
mu = Ftr.mean(0)
C = np.cov(Ftr - mu, rowvar=False)
w, V = np.linalg.eigh(C)
w, V = w[::-1], V[:, ::-1]


def energy(L):
    return -np.log(np.exp(L - L.max(1, keepdims=True)).sum(1)) - L.max(1)


def report(name, cal_scores, val_scores, ood_scores):
    """Threshold at the calibration split's 98th percentile; false refusals on validation,
    refusals per kind on the OOD fit part."""
    thr = np.quantile(cal_scores, 0.98)
    kinds = {}
    for r, s in zip(ood, ood_scores):
        kinds.setdefault(r["kind"], []).append(s > thr)
    print(
        f"{name}: val falsely refused {(val_scores > thr).mean():.1%}; OOD fit refused "
        + ", ".join(f"{kk} {np.mean(v):.0%}" for kk, v in kinds.items())
    )


for k in (16, 32, 64, 128):
    P = V[:, :k] / np.sqrt(w[:k])

    def d(F, P=P):
        return (((F - mu) @ P) ** 2).sum(1)

    report(f"k={k}", d(Fcal), d(Fval), d(Food))
report("energy", energy(Lcal), energy(Lval), energy(Lood))
