"""Train/validation/test splits: grouped by lesion, stratified by class, saved with the run.

HAM10000 holds several images of one lesion; a split that put them on both sides would
measure memory, not generalization. Splits group by `sample.group` (the lesion id where known)
and stratify by class with scikit-learn's StratifiedGroupKFold. ``holdout_source`` makes a
leave-one-source-out test split instead (train on every other source, test on that one).
``calib_fraction`` sets aside a fourth split, ``calib``, on which the softmax temperature and
the melanoma operating point are fitted, so that nothing reported on ``val`` was fitted on it.

The split is written as ``split.csv`` (image,split) and can be reused with ``data.split_file``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from .data import DataError

SPLITS = ("train", "val", "test", "calib")


def make_split(
    samples: list,
    val_fraction: float,
    test_fraction: float = 0.0,
    seed: int = 0,
    holdout_source: str = "",
    calib_fraction: float = 0.0,
) -> dict[str, str]:
    """Map image id -> 'train' | 'val' | 'test' | 'calib'."""
    ids = [s.image_id for s in samples]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"image id {dup} appears twice in the dataset; ids must be unique")
    assign = dict.fromkeys(ids, "train")
    rest = list(range(len(samples)))
    if holdout_source:
        test = [i for i in rest if getattr(samples[i], "source", "") == holdout_source]
        if not test:
            raise DataError(f"data.holdout_source: no image has source {holdout_source!r}")
        for i in test:
            assign[ids[i]] = "test"
        rest = [i for i in rest if assign[ids[i]] == "train"]
    elif test_fraction > 0:
        picked = _grouped_fold(samples, rest, test_fraction, seed)
        for i in picked:
            assign[ids[i]] = "test"
        rest = [i for i in rest if assign[ids[i]] == "train"]
    # Fractions are of the whole dataset; each fold is cut from what is left.
    left = 1 - (0 if holdout_source else test_fraction)
    if calib_fraction > 0:
        for i in _grouped_fold(samples, rest, calib_fraction / left, seed + 2):
            assign[ids[i]] = "calib"
        rest = [i for i in rest if assign[ids[i]] == "train"]
        left -= calib_fraction
    for i in _grouped_fold(samples, rest, val_fraction / left, seed + 1):
        assign[ids[i]] = "val"
    return assign


def _grouped_fold(samples: list, idx: list[int], fraction: float, seed: int) -> list[int]:
    """One stratified, grouped fold of about `fraction` of `idx`."""
    n_splits = max(2, round(1 / fraction))
    labels = np.array([getattr(samples[i], "label", 0) for i in idx])
    groups = np.array([samples[i].group for i in idx])
    if len(idx) < n_splits or len(set(groups)) < n_splits:
        raise DataError(f"too few images/lesions ({len(idx)}) to split off {fraction:.0%}")
    kfold = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    _, fold = next(kfold.split(np.zeros(len(idx)), labels, groups))
    return [idx[j] for j in fold]


def save_split(assign: dict[str, str], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "split"])
        for image_id in sorted(assign):
            w.writerow([image_id, assign[image_id]])


def load_split(path: Path, samples: list) -> dict[str, str]:
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError as e:
        raise DataError(f"{path}: split file not found") from e
    assign = {}
    for i, r in enumerate(rows, start=2):
        if r.get("split") not in SPLITS:
            raise DataError(f"{path} row {i}: split must be one of {', '.join(SPLITS)}")
        assign[r["image"]] = r["split"]
    missing = [s.image_id for s in samples if s.image_id not in assign]
    if missing:
        raise DataError(
            f"{path}: {len(missing)} image(s) of the dataset are not in the split, e.g. "
            f"{missing[0]}; make a new split or use the dataset it was made for"
        )
    return assign


def select(samples: list, assign: dict[str, str], split: str) -> list:
    return [s for s in samples if assign[s.image_id] == split]
