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
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from . import preprocess
from .cache import Cache
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
    """Classification or segmentation samples -> (uint8 3xSxS tensor, target).

    With a `Cache`, images come decoded, cropped and resized from it instead of from their
    files; what follows (the random-resized crop, colour constancy) is the same either way.
    """

    def __init__(
        self, samples: list, cfg: Config, steps: list, train: bool, cache: Cache | None = None
    ):
        self.samples = samples
        self.cfg = cfg
        self.steps = steps
        self.train = train
        self.size = cfg.data.image_size
        self.epoch = 0
        self.masks_dir = lesion_masks_dir(cfg)
        self.cache = cache

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

    def _cropped(self, s) -> tuple[np.ndarray, np.ndarray | None]:
        """The image (and mask) after the per-image steps up to the resize."""
        if self.cache is not None:
            row = self.cache.row[s.image_id]
            mask = self.cache.masks[row] if self.cache.masks is not None else None
            return np.asarray(self.cache.images[row]), mask
        img = load_rgb(s.image)
        cropped_img, cropped_mask, _ = preprocess.apply_crops(
            img, self.steps, self._mask_for(s, img)
        )
        return cropped_img, cropped_mask

    def __getitem__(self, i: int):
        s = self.samples[i]
        img, mask = self._cropped(s)
        if self.train:
            # A random-resized crop instead of the plain resize.
            rng = random.Random(hash((self.cfg.data.seed, self.epoch, i)))
            a = self.cfg.data.augment
            t, b, left, r = _random_resized_box(*img.shape[:2], a.scale, a.ratio, rng)
            img = img[t:b, left:r]
            mask = mask[t:b, left:r] if mask is not None else None
        out = preprocess.resize(np.ascontiguousarray(img), self.size, self.size)
        for step in self.steps:
            if step["op"] == "shades_of_gray":
                out = preprocess.shades_of_gray(out, step["p"])
        if isinstance(s, SegSample):
            # Masks at model resolution; `evaluate` scores validation at full resolution.
            m = preprocess.resize(np.ascontiguousarray(mask * 255), self.size, self.size) > 127
            return _chw(out), torch.from_numpy(m).to(torch.uint8)
        return _chw(out), s.label


def _chw(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


class EpochSampler(Sampler[int]):
    """The training order: a seeded shuffle (or class-balanced draws with replacement) per
    epoch, each rank taking its share, from position `start` on, so that a run resumed from a
    mid-epoch checkpoint goes on with the very batches it had not yet seen."""

    def __init__(
        self,
        n: int,
        seed: int,
        weights: torch.Tensor | None = None,
        rank: int = 0,
        world: int = 1,
    ):
        self.n, self.seed, self.weights, self.rank, self.world = n, seed, weights, rank, world
        self.per_rank = math.ceil(n / world)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        total = self.per_rank * self.world
        if self.weights is not None:
            idx = torch.multinomial(self.weights, total, True, generator=g)
        else:
            idx = torch.randperm(self.n, generator=g)
            idx = torch.cat([idx, idx[: total - self.n]])  # pad so every rank gets as many
        return iter(idx[self.rank :: self.world][self.start :].tolist())

    def __len__(self) -> int:
        return self.per_rank - self.start


def make_loader(
    ds: LesionDataset,
    cfg: Config,
    train: bool,
    rank: int = 0,
    world: int = 1,
    class_weights: torch.Tensor | None = None,
) -> DataLoader:
    sampler = None
    if train:
        weights = None
        if cfg.data.balance == "sampler" and class_weights is not None:
            weights = class_weights[torch.tensor([s.label for s in ds.samples])]
        sampler = EpochSampler(len(ds), cfg.data.seed, weights, rank, world)
    workers = cfg.train.workers
    return DataLoader(
        ds,
        batch_size=cfg.train.batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=train and len(ds) > cfg.train.batch_size,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )


def batches_per_epoch(loader: DataLoader) -> int:
    """Training batches in a whole epoch (however far a resumed epoch has got)."""
    n = loader.sampler.per_rank
    b = loader.batch_size
    return n // b if loader.drop_last else math.ceil(n / b)


class BatchAugment:
    """Dihedral flips/rotations, colour jitter and normalisation on whole batches."""

    def __init__(self, cfg: Config, mean, std, device: torch.device):
        self.a = cfg.data.augment
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255.0 - self.mean) / self.std

    def __call__(self, x: torch.Tensor, mask: torch.Tensor | None = None, size: int = 0):
        """Augment and normalise a uint8 batch; `size`: resize it first (progressive runs)."""
        x = x.float() / 255.0
        if size and size != x.shape[-1]:
            x = nn.functional.interpolate(
                x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
            if mask is not None:
                m = mask[:, None].float()
                m = nn.functional.interpolate(m, size=(size, size), mode="bilinear")
                mask = (m[:, 0] > 0.5).to(mask.dtype)
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
