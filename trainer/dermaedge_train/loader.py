"""Datasets, data loaders and batch augmentation.

Work is split so a GPU never waits on the CPU: loader workers only decode, crop and resize
(the per-image steps of the manifest, with a random-resized crop in place of the plain resize
when training) and hand over uint8 tensors; flips, 90-degree rotations, colour jitter and
normalisation then run on whole batches on the training device (`BatchAugment`).

Evaluation follows `preprocess.apply_steps` exactly, so what is measured is what the device
computes.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from . import preprocess
from .config import Config
from .data import DataError, SegSample, load_mask, load_rgb


def model_steps(cfg: Config, mean: tuple, std: tuple) -> list[preprocess.Step]:
    """The manifest's preprocessing steps for this config."""
    d = cfg.data
    lesion_crop = None
    if d.lesion_crop.enabled and cfg.task == "classification":
        lesion_crop = {"margin": d.lesion_crop.margin}
    return preprocess.build_steps(
        width=d.image_size,
        height=d.image_size,
        mean=list(mean),
        std=list(std),
        crop_border=_section(d.crop_border),
        lesion_crop=lesion_crop,
        color_constancy=_section(d.color_constancy),
    )


def lesion_masks_dir(cfg: Config) -> Path | None:
    """Where the classifier's lesion masks are, when it trains on lesion crops."""
    lc = cfg.data.lesion_crop
    if cfg.task == "classification" and lc.enabled and lc.masks_dir:
        return Path(lc.masks_dir)
    return None


def _section(sec) -> dict | None:
    if not sec.enabled:
        return None
    return {k: v for k, v in vars(sec).items() if k not in ("enabled", "masks_dir")}


def _random_resized_box(h: int, w: int, scale, ratio, rng: random.Random):
    """torchvision's RandomResizedCrop box choice, with our own RNG."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        cw = round(math.sqrt(target * aspect))
        ch = round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top = rng.randint(0, h - ch)
            left = rng.randint(0, w - cw)
            return top, top + ch, left, left + cw
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return top, top + side, left, left + side


class LesionDataset(Dataset):
    """Classification or segmentation samples -> (uint8 3xSxS tensor, target)."""

    def __init__(self, samples: list, cfg: Config, steps: list, train: bool):
        self.samples = samples
        self.cfg = cfg
        self.steps = steps
        self.train = train
        self.size = cfg.data.image_size
        self.epoch = 0
        self.masks_dir = lesion_masks_dir(cfg)

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _mask_for(self, s, img: np.ndarray) -> np.ndarray | None:
        if isinstance(s, SegSample):
            return load_mask(s.mask, img.shape[:2])
        if self.masks_dir is not None:
            path = self.masks_dir / f"{s.image_id}.png"
            if not path.is_file():
                raise DataError(f"{path}: lesion mask for {s.image} not found (data.lesion_crop)")
            return load_mask(path, img.shape[:2])
        return None

    def __getitem__(self, i: int):
        s = self.samples[i]
        img = load_rgb(s.image)
        mask = self._mask_for(s, img)
        if not self.train:
            out = preprocess.apply_steps(img, self.steps, mask, stop_before="normalize")
            if isinstance(s, SegSample):
                # Validation masks at model resolution; `evaluate` scores at full resolution.
                m = preprocess.apply_crops(img, self.steps, mask)[1]
                mask_t = torch.from_numpy(preprocess.resize(m * 255, self.size, self.size) > 127)
                return _chw(out), mask_t.to(torch.uint8)
            return _chw(out), s.label
        rng = random.Random(hash((self.cfg.data.seed, self.epoch, i)))
        # Per-image steps up to the resize, then a random-resized crop instead of the resize.
        cropped_img, cropped_mask, _ = preprocess.apply_crops(img, self.steps, mask)
        h, w = cropped_img.shape[:2]
        a = self.cfg.data.augment
        t, b, left, r = _random_resized_box(h, w, a.scale, a.ratio, rng)
        out = preprocess.resize(cropped_img[t:b, left:r], self.size, self.size)
        for step in self.steps:
            if step["op"] == "shades_of_gray":
                out = preprocess.shades_of_gray(out, step["p"])
        if isinstance(s, SegSample):
            m = cropped_mask[t:b, left:r] * 255
            m = preprocess.resize(np.ascontiguousarray(m), self.size, self.size) > 127
            return _chw(out), torch.from_numpy(m).to(torch.uint8)
        return _chw(out), s.label


def _chw(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


class WeightedDistributedSampler(Sampler[int]):
    """Class-balanced sampling with replacement, each rank taking its share of one draw."""

    def __init__(self, weights: torch.Tensor, rank: int, world: int, seed: int):
        self.weights, self.rank, self.world, self.seed = weights, rank, world, seed
        self.num = math.ceil(len(weights) / world)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        idx = torch.multinomial(self.weights, self.num * self.world, True, generator=g)
        return iter(idx[self.rank :: self.world].tolist())

    def __len__(self) -> int:
        return self.num


def make_loader(
    ds: LesionDataset,
    cfg: Config,
    train: bool,
    rank: int = 0,
    world: int = 1,
    class_weights: torch.Tensor | None = None,
) -> DataLoader:
    sampler = None
    if train and cfg.data.balance == "sampler" and class_weights is not None:
        labels = torch.tensor([s.label for s in ds.samples])
        sampler = WeightedDistributedSampler(class_weights[labels], rank, world, cfg.data.seed)
    elif world > 1:
        sampler = DistributedSampler(ds, world, rank, shuffle=train, seed=cfg.data.seed)
    workers = cfg.train.workers
    return DataLoader(
        ds,
        batch_size=cfg.train.batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=train and len(ds) > cfg.train.batch_size,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )


class BatchAugment:
    """Dihedral flips/rotations, colour jitter and normalisation on whole batches."""

    def __init__(self, cfg: Config, mean, std, device: torch.device):
        self.a = cfg.data.augment
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255.0 - self.mean) / self.std

    def __call__(self, x: torch.Tensor, mask: torch.Tensor | None = None):
        x = x.float() / 255.0
        b = x.shape[0]
        if self.a.dihedral:
            k = torch.randint(0, 8, (b,), device=x.device)
            x = _dihedral(x, k)
            if mask is not None:
                mask = _dihedral(mask[:, None], k)[:, 0]

        def factor(strength: float) -> torch.Tensor:
            u = torch.rand(b, 1, 1, 1, device=x.device) * 2 - 1
            return 1 + strength * u

        if self.a.brightness:
            x = x * factor(self.a.brightness)
        gray = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
        if self.a.contrast:
            m = gray.mean(dim=(2, 3), keepdim=True)
            x = (x - m) * factor(self.a.contrast) + m
        if self.a.saturation:
            gray = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
            x = (x - gray) * factor(self.a.saturation) + gray
        x = (x.clamp(0, 1) - self.mean) / self.std
        return x, mask


def _dihedral(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Apply the k-th of the 8 flips/rotations to each image (square images)."""
    out = x.clone()
    for t in range(8):
        sel = (k == t).nonzero(as_tuple=True)[0]
        if sel.numel() == 0 or t == 0:
            continue
        y = x[sel]
        if t >= 4:
            y = y.flip(-1)
        out[sel] = torch.rot90(y, t % 4, dims=(-2, -1))
    return out
