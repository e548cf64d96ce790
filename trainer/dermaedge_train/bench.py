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
from .models import build_model
from .train import load_samples, mean_std, pick_device, seg_loss


def _step_fn(cfg: Config, device: torch.device):
    m = cfg.model
    model = build_model(
        cfg.task, m.arch, cfg.data.image_size, m.pretrained, m.dropout, 0, m.width
    ).to(device)
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    mean, std = mean_std(cfg)
    augment = BatchAugment(cfg, mean, std, device)
    autocast = device.type == "cuda" and cfg.train.amp
    criterion = nn.CrossEntropyLoss() if cfg.task == "classification" else seg_loss

    def step(x, y):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        x, y2 = augment(x, None if cfg.task == "classification" else y)
        x = x.contiguous(memory_format=memory_format)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            out = model(x)
        loss = criterion(out.float(), y if y2 is None else y2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

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
        "amp_bf16": device.type == "cuda" and cfg.train.amp,
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
