"""Where and how the tensors run: the device (CUDA, one of several under torchrun, or the
CPU), bf16 autocast or not. Shared by training, its benchmark and evaluation."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .config import Config


@dataclass(frozen=True)
class Runtime:
    """Where and how tensors run: the device, the memory layout, bf16 autocast or not."""

    device: torch.device
    memory_format: torch.memory_format
    autocast: bool


def use_autocast(cfg: Config, device: torch.device) -> bool:
    """bf16 autocast: on CUDA with train.amp; on a CPU only with native bf16 and train.cpu_bf16
    (emulated bf16 is slower than fp32)."""
    if device.type == "cuda":
        return cfg.train.amp
    return cfg.train.cpu_bf16 and torch.ops.mkldnn._is_mkldnn_bf16_supported()


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
