"""The training recipe, top to bottom: data, split, model, optimiser, epochs, checkpoints.

One process per GPU under ``torchrun`` (DDP; rank 0 writes everything), or one plain process
on a GPU or the CPU. A run directory holds:

- ``config.yaml``: the resolved config (re-run with it to repeat the run);
- ``split.csv``: which image went to train/val/test;
- ``metrics.jsonl``: one line of metrics per epoch;
- ``finished.json``: written when the schedule has run to its end (steps, epochs, minutes);
- ``last.pt`` (resume from here with ``--resume``; written at every epoch's end and at least
  every ``train.checkpoint_minutes``) and ``best.pt`` (the best validation epoch, or the end of
  the schedule with ``train.select: last``, with the calibration temperature fitted on the
  ``calib`` split, or on validation where there is none).
"""

from __future__ import annotations

import json
import math
import os
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
from .cache import load_or_build
from .config import Config, ConfigError
from .data import CLASSES, class_counts
from .loader import (
    BatchAugment,
    LesionDataset,
    batches_per_epoch,
    lesion_masks_dir,
    make_loader,
    model_steps,
)
from .models import build_model, mean_std, seg_loss
from .runtime import Runtime, pick_device, setup_distributed, use_autocast
from .samples import load_samples, split_samples
from .splits import select


def class_weights(samples: list) -> torch.Tensor:
    counts = torch.tensor(class_counts(samples), dtype=torch.float32)
    w = torch.where(counts > 0, counts.sum() / (len(CLASSES) * counts.clamp(min=1)), 0.0)
    return w


@dataclass(frozen=True)
class Schedule:
    """Where a run stands along its budget, and what that sets: the learning rate (linear
    warm-up, then cosine decay to zero) and the input size (progressive resizing).

    The budget is a number of steps (``train.epochs``) or of seconds (``train.max_minutes``):
    a time-budgeted run plans for the steps that fit, whatever the machine's speed, and its
    progress counts only time spent training and validating, carried across resumes.
    """

    lr: float
    warmup_steps: int
    total_steps: int
    budget_s: float
    sizes: tuple[int, ...]
    shares: tuple[float, ...]

    @staticmethod
    def of(cfg: Config, steps_per_epoch: int) -> Schedule:
        t = cfg.train
        sizes = tuple(int(s) for s in t.sizes) or (cfg.data.image_size,)
        return Schedule(
            lr=t.lr,
            warmup_steps=max(1, int(t.warmup_epochs * steps_per_epoch)),
            total_steps=t.epochs * steps_per_epoch,
            budget_s=t.max_minutes * 60,
            sizes=sizes,
            shares=tuple(t.size_shares) or (1.0,),
        )

    def progress(self, step: int, elapsed_s: float) -> float:
        if self.budget_s > 0:
            return elapsed_s / self.budget_s
        return step / max(1, self.total_steps)

    def lr_at(self, step: int, progress: float) -> float:
        warm = min(1.0, (step + 1) / self.warmup_steps)
        return self.lr * warm * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def size_at(self, progress: float) -> int:
        edge = 0.0
        for size, share in zip(self.sizes, self.shares, strict=True):
            edge += share
            if progress < edge:
                return size
        return self.sizes[-1]


def train(cfg: Config, out_dir: Path, resume: bool = False) -> Path:
    rank, world, local_rank = setup_distributed()
    if world > 1 and cfg.train.max_minutes:
        # Each process would read its own clock and stop at a different step.
        raise ConfigError("train.max_minutes: time budgets are for one process; use epochs")
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
    calib_set = select(samples, assign, "calib")
    mean, std = mean_std(cfg)
    steps = model_steps(cfg, mean, std)
    cache = None
    if cfg.data.cache:
        t0 = time.perf_counter()
        cache = load_or_build(
            samples,
            steps,
            cfg.data.image_size,
            Path(cfg.data.cache),
            lesion_masks_dir(cfg),
            cfg.train.workers,
        )
        if rank == 0:
            print(f"cache: {len(samples)} images ready in {time.perf_counter() - t0:.0f} s")
    is_cls = cfg.task == "classification"
    weights = class_weights(train_set) if is_cls else None
    train_loader = make_loader(
        LesionDataset(train_set, cfg, steps, True, cache), cfg, True, rank, world, weights
    )

    def eval_loader(subset: list):
        return make_loader(LesionDataset(subset, cfg, steps, False, cache), cfg, False)

    val_loader = eval_loader(val_set)
    augment = BatchAugment(cfg, mean, std, device)

    # Model, loss, optimiser; the schedule sets the learning rate and the size at every step.
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
    per_epoch = batches_per_epoch(train_loader)
    schedule = Schedule.of(cfg, per_epoch)
    rt = Runtime(device, memory_format, use_autocast(cfg, device))

    # Where the run stands; last.pt holds it (and is written mid-epoch too), so `--resume`
    # loses at most train.checkpoint_minutes of work.
    state = {"step": 0, "epoch": 0, "batch": 0, "elapsed_s": 0.0, "best": -1.0}
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    if resume and last_path.exists():
        ckpt = torch.load(last_path, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
        torch.set_rng_state(ckpt["rng"])
        if rank == 0:
            print(
                f"resuming {last_path}: epoch {state['epoch'] + 1}, batch {state['batch']}, "
                f"{state['elapsed_s'] / 60:.1f} min of the run done"
            )

    def checkpoint(val: dict | None) -> dict:
        return {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "state": dict(state),
            "rng": torch.get_rng_state(),
            "config": cfg.to_dict(),
            "mean": mean,
            "std": std,
            "steps": steps,
            "val": val,
        }

    def save_last(val: dict | None = None) -> None:
        if rank == 0:
            _atomic_save(checkpoint(val), last_path)

    clock = {"since": time.perf_counter(), "saved": time.perf_counter()}

    def elapsed() -> float:
        return state["elapsed_s"] + time.perf_counter() - clock["since"]

    def tick() -> None:
        now = time.perf_counter()
        state["elapsed_s"] += now - clock["since"]
        clock["since"] = now

    done = schedule.progress(state["step"], elapsed()) >= 1
    while not done:
        epoch = state["epoch"]
        train_loader.sampler.set_epoch(epoch, state["batch"] * cfg.train.batch_size)
        train_loader.dataset.set_epoch(epoch)
        net.train()
        seen, loss_sum, t0 = 0, 0.0, time.perf_counter()
        for x, y in _bar(train_loader, epoch, rank):
            progress = schedule.progress(state["step"], elapsed())
            if progress >= 1:
                done = True
                break
            lr = schedule.lr_at(state["step"], progress)
            for group in optimizer.param_groups:
                group["lr"] = lr
            size = schedule.size_at(progress)
            loss = train_step(net, x, y, augment, criterion, optimizer, rt, is_cls, size)
            seen += x.shape[0]
            loss_sum += loss * x.shape[0]
            state["step"] += 1
            state["batch"] += 1
            if time.perf_counter() - clock["saved"] > cfg.train.checkpoint_minutes * 60:
                tick()
                save_last()
                clock["saved"] = time.perf_counter()
        else:
            state["epoch"], state["batch"] = epoch + 1, 0
        seconds = time.perf_counter() - t0
        world_seen = seen * world
        if world > 1:
            dist.barrier()
        if rank == 0:
            tick()
            progress = schedule.progress(state["step"], state["elapsed_s"])
            done = done or progress >= 1
            val = None
            if done or state["epoch"] % cfg.train.val_every == 0:
                logits, targets = predict(model, val_loader, augment, rt, is_cls, cfg.train.tta)
                val = summarize(logits, targets, is_cls)
                tick()
            row = {
                "epoch": epoch + 1,
                "step": state["step"],
                "size": schedule.size_at(min(progress, 1.0)),
                "loss": loss_sum / max(seen, 1),
                "img_per_s": world_seen / max(seconds, 1e-9),
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": seconds,
                "elapsed_min": state["elapsed_s"] / 60,
                "val": val,
            }
            with open(out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics.json_safe(row)) + "\n")
            print(
                f"epoch {epoch + 1} step {state['step']} ({min(progress, 1):.0%} of the run, "
                f"{row['size']} px) loss {row['loss']:.4f} {row['img_per_s']:.0f} img/s"
                + (f" val {_headline(val)}" if val else "")
            )
            better = False
            if val is not None:
                score = val["balanced_accuracy"] if is_cls else val["thresholded_jaccard"]
                better = score > state["best"]
                state["best"] = max(state["best"], score)
            ckpt = checkpoint(val)
            _atomic_save(ckpt, last_path)
            clock["saved"] = time.perf_counter()
            if (cfg.train.select == "best" and better) or (cfg.train.select == "last" and done):
                _atomic_save(ckpt, best_path)
        if world > 1:
            flag = torch.tensor([float(done)], device=device)
            dist.broadcast(flag, 0)
            done = bool(flag.item())

    if rank == 0:
        if not best_path.exists():  # resumed after the schedule had ended
            _atomic_save(checkpoint(None), best_path)
        calibrate(
            best_path,
            model,
            eval_loader(calib_set or val_set),
            augment,
            rt,
            is_cls,
            cfg.train.tta,
            "calib" if calib_set else "val",
        )
        # The mark that the schedule ran to its end (scripts/train-models.sh skips such runs).
        summary = {"steps": state["step"], "epochs": state["epoch"], "minutes": elapsed() / 60}
        (out_dir / "finished.json").write_text(json.dumps(summary) + "\n")
    if world > 1:
        dist.destroy_process_group()
    return best_path


def _atomic_save(obj: dict, path: Path) -> None:
    """A checkpoint is written whole or not at all: a kill mid-write keeps the previous one."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _bar(loader, epoch: int, rank: int):
    # A live bar on a terminal only: logs get the one summary line per epoch.
    show = rank == 0 and sys.stderr.isatty()
    return tqdm(loader, desc=f"epoch {epoch + 1}", disable=not show, leave=False, mininterval=2.0)


def train_step(net, x, y, augment, criterion, optimizer, rt: Runtime, is_cls, size) -> float:
    x = x.to(rt.device, non_blocking=True)
    y = y.to(rt.device, non_blocking=True)
    if is_cls:
        x, _ = augment(x, size=size)
    else:
        x, y = augment(x, y, size=size)
    x = x.contiguous(memory_format=rt.memory_format)
    with torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=rt.autocast):
        out = net(x)
    loss = criterion(out.float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


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


def calibrate(best_path, model, calib_loader, augment, rt: Runtime, is_cls, tta, split: str):
    """Fit the softmax temperature of the best checkpoint on `split` (calib, or val)."""
    ckpt = torch.load(best_path, map_location=rt.device, weights_only=False)
    ckpt["temperature"] = 1.0
    ckpt["temperature_split"] = split
    if is_cls:
        model.load_state_dict(ckpt["model"])
        logits, targets = predict(model, calib_loader, augment, rt, True, tta)
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
