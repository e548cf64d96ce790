"""The training recipe, top to bottom: data, split, model, optimiser, epochs, checkpoints.

One process per GPU under ``torchrun`` (DDP; rank 0 writes everything), or one plain process
on a GPU or the CPU. A run directory holds:

- ``config.yaml``: the resolved config (re-run with it to repeat the run);
- ``split.csv``: which image went to train/val/test;
- ``metrics.jsonl``: one line of metrics per epoch;
- ``last.pt`` (resume from here with ``--resume``) and ``best.pt`` (the best validation score,
  with the calibration temperature fitted on the validation split).
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from . import metrics
from .config import Config
from .data import CLASSES, class_counts, load_classification, load_segmentation
from .loader import BatchAugment, LesionDataset, make_loader, model_steps
from .models import ARCH_MEAN_STD, build_model
from .splits import load_split, make_split, save_split, select


@dataclass(frozen=True)
class Runtime:
    """Where and how tensors run: the device, the memory layout, bf16 autocast or not."""

    device: torch.device
    memory_format: torch.memory_format
    autocast: bool


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
        assign = make_split(samples, d.val_fraction, d.test_fraction, d.seed, d.holdout_source)
    if out_dir is not None and rank == 0:
        save_split(assign, out_dir / "split.csv")
    return assign


def mean_std(cfg: Config) -> tuple[tuple, tuple]:
    mean, std = ARCH_MEAN_STD[cfg.model.arch]
    return tuple(cfg.data.mean or mean), tuple(cfg.data.std or std)


def class_weights(samples: list) -> torch.Tensor:
    counts = torch.tensor(class_counts(samples), dtype=torch.float32)
    w = torch.where(counts > 0, counts.sum() / (len(CLASSES) * counts.clamp(min=1)), 0.0)
    return w


def pick_device(cfg: Config, local_rank: int) -> torch.device:
    want = cfg.train.device
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device is cuda but no CUDA device is available")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def setup_distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); torchrun sets the environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def seg_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    target = mask.float()[:, None]
    bce = nn.functional.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    inter = (p * target).sum(dim=(1, 2, 3))
    soft_dice = (2 * inter + 1) / (p.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3)) + 1)
    return bce + (1 - soft_dice).mean()


def train(cfg: Config, out_dir: Path, resume: bool = False) -> Path:
    rank, world, local_rank = setup_distributed()
    device = pick_device(cfg, local_rank)
    torch.manual_seed(cfg.data.seed + rank)
    out_dir = Path(out_dir)
    # Later commands (evaluate, export) run from anywhere: record where the data really is.
    for sec, key in (
        (cfg.data, "root"),
        (cfg.data, "images"),
        (cfg.data, "masks"),
        (cfg.data, "metadata"),
        (cfg.data.lesion_crop, "masks_dir"),
    ):
        if getattr(sec, key):
            setattr(sec, key, str(Path(getattr(sec, key)).resolve()))
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(out_dir / "config.yaml")

    # Data: samples, split, per-image steps on the loader workers, batch augmentation here.
    samples = load_samples(cfg)
    assign = split_samples(cfg, samples, out_dir, rank)
    train_set, val_set = select(samples, assign, "train"), select(samples, assign, "val")
    mean, std = mean_std(cfg)
    steps = model_steps(cfg, mean, std)
    is_cls = cfg.task == "classification"
    weights = class_weights(train_set) if is_cls else None
    train_loader = make_loader(
        LesionDataset(train_set, cfg, steps, True), cfg, True, rank, world, weights
    )
    val_loader = make_loader(LesionDataset(val_set, cfg, steps, False), cfg, False)
    augment = BatchAugment(cfg, mean, std, device)

    # Model, loss, optimiser, schedule (linear warm-up, cosine decay, per step).
    m = cfg.model
    model = build_model(
        cfg.task, m.arch, cfg.data.image_size, m.pretrained, m.dropout, m.freeze, m.width
    ).to(device)
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    net = (
        DistributedDataParallel(model, [local_rank] if device.type == "cuda" else None)
        if world > 1
        else model
    )
    if is_cls:
        loss_weights = weights.to(device) if cfg.data.balance == "weighted_loss" else None
        criterion = nn.CrossEntropyLoss(
            weight=loss_weights, label_smoothing=cfg.train.label_smoothing
        )
    else:
        criterion = seg_loss
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    total = cfg.train.epochs * len(train_loader)
    warmup = max(1, int(cfg.train.warmup_epochs * len(train_loader)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, total))))
        ),
    )
    rt = Runtime(device, memory_format, device.type == "cuda" and cfg.train.amp)

    start_epoch, best = 0, -1.0
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    if resume and last_path.exists():
        ckpt = torch.load(last_path, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch, best = ckpt["epoch"] + 1, ckpt["best"]
        if rank == 0:
            print(f"resuming {last_path} at epoch {start_epoch + 1}")

    for epoch in range(start_epoch, cfg.train.epochs):
        for ds_or_sampler in (train_loader.sampler, train_loader.dataset):
            if hasattr(ds_or_sampler, "set_epoch"):
                ds_or_sampler.set_epoch(epoch)
        stats = train_one_epoch(
            net,
            train_loader,
            augment,
            criterion,
            optimizer,
            scheduler,
            rt,
            epoch,
            cfg,
            rank,
        )
        if rank == 0:
            logits, targets = predict(model, val_loader, augment, rt, is_cls, cfg.train.tta)
            val = summarize(logits, targets, is_cls)
            score = val["balanced_accuracy"] if is_cls else val["thresholded_jaccard"]
            row = {"epoch": epoch + 1, **stats, "val": val}
            with open(out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics.json_safe(row)) + "\n")
            print(
                f"epoch {epoch + 1}/{cfg.train.epochs} loss {stats['loss']:.4f} "
                f"{stats['img_per_s']:.0f} img/s val {_headline(val)}"
            )
            ckpt = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch,
                "best": max(best, score),
                "config": cfg.to_dict(),
                "mean": mean,
                "std": std,
                "steps": steps,
                "val": val,
            }
            torch.save(ckpt, last_path)
            if score > best:
                best = score
                torch.save(ckpt, best_path)
        if world > 1:
            dist.barrier()

    if rank == 0:
        calibrate(
            best_path,
            model,
            val_loader,
            augment,
            rt,
            is_cls,
            cfg.train.tta,
        )
    if world > 1:
        dist.destroy_process_group()
    return best_path


def train_one_epoch(
    net,
    loader,
    augment,
    criterion,
    optimizer,
    scheduler,
    rt: Runtime,
    epoch,
    cfg,
    rank,
) -> dict:
    net.train()
    seen, loss_sum, t0 = 0, 0.0, time.perf_counter()
    # A live bar on a terminal only: logs get the one summary line per epoch.
    show = rank == 0 and sys.stderr.isatty()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}", disable=not show, leave=False, mininterval=2.0)
    for x, y in bar:
        x = x.to(rt.device, non_blocking=True)
        y = y.to(rt.device, non_blocking=True)
        if cfg.task == "classification":
            x, _ = augment(x)
        else:
            x, y = augment(x, y)
        x = x.contiguous(memory_format=rt.memory_format)
        with torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=rt.autocast):
            out = net(x)
        loss = criterion(out.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        seen += x.shape[0]
        loss_sum += loss.item() * x.shape[0]
        rate = seen / (time.perf_counter() - t0)
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", img_s=f"{rate:.0f}")
    elapsed = time.perf_counter() - t0
    world = dist.get_world_size() if dist.is_initialized() else 1
    return {
        "loss": loss_sum / max(seen, 1),
        "img_per_s": seen * world / elapsed,
        "lr": scheduler.get_last_lr()[0],
        "seconds": elapsed,
    }


@torch.no_grad()
def predict(model, loader, augment, rt: Runtime, is_cls, tta):
    """Logits (classification: mean over identity and horizontal flip when `tta`)."""
    model.eval()
    outs, targets = [], []
    for x, y in loader:
        x = augment.normalize(x.to(rt.device)).contiguous(memory_format=rt.memory_format)
        with torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=rt.autocast):
            out = model(x).float()
            if is_cls and tta:
                out = (out + model(x.flip(-1)).float()) / 2
        outs.append(out.float().cpu())
        targets.append(y)
    return torch.cat(outs).numpy(), torch.cat([torch.as_tensor(t) for t in targets]).numpy()


def summarize(logits: np.ndarray, targets: np.ndarray, is_cls: bool) -> dict:
    if is_cls:
        r = metrics.classification_report(targets, metrics.softmax(logits))
        return {k: r[k] for k in ("balanced_accuracy", "accuracy", "mean_auc", "ece")} | {
            "melanoma_auc": r["melanoma"]["auc"]
        }
    pred = logits[:, 0] > 0
    j = [metrics.jaccard(p, t) for p, t in zip(pred, targets, strict=True)]
    d = [metrics.dice(p, t) for p, t in zip(pred, targets, strict=True)]
    return metrics.segmentation_report(j, d)


def _headline(val: dict) -> str:
    return " ".join(f"{k} {v:.4f}" for k, v in val.items() if isinstance(v, float))


def calibrate(best_path, model, val_loader, augment, rt: Runtime, is_cls, tta):
    """Fit the softmax temperature of the best checkpoint on the validation split."""
    ckpt = torch.load(best_path, map_location=rt.device, weights_only=False)
    ckpt["temperature"] = 1.0
    if is_cls:
        model.load_state_dict(ckpt["model"])
        logits, targets = predict(model, val_loader, augment, rt, True, tta)
        t = metrics.fit_temperature(logits, targets)
        ckpt["temperature"] = t
        ckpt["val_calibrated"] = {
            "temperature": t,
            "ece_before": metrics.expected_calibration_error(targets, metrics.softmax(logits)),
            "ece_after": metrics.expected_calibration_error(targets, metrics.softmax(logits, t)),
        }
        print(
            f"temperature {t:.3f}: ECE {ckpt['val_calibrated']['ece_before']:.4f} -> "
            f"{ckpt['val_calibrated']['ece_after']:.4f}"
        )
    torch.save(ckpt, best_path)
