"""Training throughput benchmark: images per second per architecture.

For each architecture it times full training steps (batch augmentation, forward, backward,
optimiser) twice: on a synthetic uint8 batch already on the device (what the model can do)
and fed by the real data loader (what the pipeline delivers). When the second is well below
the first, the data pipeline starves the accelerator.
"""

from __future__ import annotations

import json
import time

import torch
from torch import nn

from .config import Config
from .data import CLASSES
from .loader import BatchAugment, LesionDataset, make_loader, model_steps
from .models import build_model, mean_std, seg_loss
from .runtime import Runtime, pick_device, use_autocast
from .samples import load_samples
from .train import train_step


def _step_fn(cfg: Config, device: torch.device):
    """One training step of train.py (augmentation, forward, backward, optimiser)."""
    m = cfg.model
    model = build_model(
        cfg.task, m.arch, cfg.data.image_size, m.pretrained, m.dropout, m.freeze, m.width
    ).to(device)
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    mean, std = mean_std(cfg)
    augment = BatchAugment(cfg, mean, std, device)
    rt = Runtime(device, memory_format, use_autocast(cfg, device))
    is_cls = cfg.task == "classification"
    criterion = nn.CrossEntropyLoss() if is_cls else seg_loss
    size = cfg.data.image_size

    def step(x, y):
        train_step(model, x, y, augment, criterion, opt, rt, is_cls, size)

    return step


def _time(step, batches, device, warmup: int) -> float:
    n, t0 = 0, None
    for i, (x, y) in enumerate(batches):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            n = 0
        step(x, y)
        n += x.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def bench(cfg: Config, steps: int = 30, warmup: int = 5, with_data: bool = True) -> dict:
    device = pick_device(cfg, 0)
    size, bs = cfg.data.image_size, cfg.train.batch_size
    step = _step_fn(cfg, device)
    x = torch.randint(0, 256, (bs, 3, size, size), dtype=torch.uint8)
    if cfg.task == "classification":
        y = torch.randint(0, len(CLASSES), (bs,))
    else:
        y = torch.randint(0, 2, (bs, size, size), dtype=torch.uint8)
    x, y = x.to(device), y.to(device)
    result = {
        "arch": cfg.model.arch,
        "task": cfg.task,
        "image_size": size,
        "batch_size": bs,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "amp_bf16": use_autocast(cfg, device),
        "synthetic_img_per_s": _time(step, ((x, y) for _ in range(steps + warmup)), device, warmup),
    }
    if with_data:
        samples = load_samples(cfg)
        mean, std = mean_std(cfg)
        loader = make_loader(
            LesionDataset(samples, cfg, model_steps(cfg, mean, std), True), cfg, True
        )

        def batches():
            done = 0
            while True:
                for b in loader:
                    yield b
                    done += 1
                    if done == steps + warmup:
                        return

        result["loader_img_per_s"] = _time(step, batches(), device, warmup)
        result["workers"] = cfg.train.workers
    print(json.dumps(result))
    return result
