"""The dataset a config names, and its split: the same images in the same splits for
training, export and evaluation (a run's ``split.csv`` pins them)."""

from __future__ import annotations

import random
from pathlib import Path

from .config import Config
from .data import load_classification, load_segmentation
from .splits import load_split, make_split, save_split


def load_samples(cfg: Config) -> list:
    d = cfg.data
    opt = {
        k: Path(v)
        for k, v in (("images", d.images), ("masks", d.masks), ("metadata", d.metadata))
        if v
    }
    if cfg.task == "classification":
        opt.pop("masks", None)
        samples = load_classification(
            Path(d.root), d.layout, require_all_classes=d.require_all_classes, **opt
        )
    else:
        opt.pop("metadata", None)
        samples = load_segmentation(Path(d.root), d.layout, **opt)
    if d.limit and d.limit < len(samples):
        # A seeded random subset (for smoke runs), in the dataset's order.
        keep = sorted(random.Random(d.seed).sample(range(len(samples)), d.limit))
        samples = [samples[i] for i in keep]
    return samples


def split_samples(cfg: Config, samples: list, out_dir: Path | None, rank: int = 0) -> dict:
    d = cfg.data
    if d.split_file:
        assign = load_split(Path(d.split_file), samples)
    else:
        assign = make_split(
            samples, d.val_fraction, d.test_fraction, d.seed, d.holdout_source, d.calib_fraction
        )
    if out_dir is not None and rank == 0:
        save_split(assign, out_dir / "split.csv")
    return assign
