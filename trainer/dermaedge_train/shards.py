"""Pack a dataset folder into a few .npz shards, and unpack them elsewhere.

A GPU host may only take a limited upload per transfer (and many small files travel
slowly): ``pack`` stores the files' bytes unchanged (JPEGs stay JPEGs), at most ``max_mb``
per shard; ``unpack`` restores the identical folder tree, checking every file's sha256.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from .data import DataError


def pack(root: Path, out_dir: Path, max_mb: float = 48.0, prefix: str = "shard") -> list[Path]:
    root, out_dir = Path(root), Path(out_dir)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if not files:
        raise DataError(f"{root}: no files to pack")
    out_dir.mkdir(parents=True, exist_ok=True)
    limit = int(max_mb * 1e6)
    shards, batch, size = [], [], 0
    for p in files:
        n = p.stat().st_size
        if batch and size + n > limit:
            shards.append(_write(out_dir / f"{prefix}-{len(shards):03d}.npz", root, batch))
            batch, size = [], 0
        batch.append(p)
        size += n
    shards.append(_write(out_dir / f"{prefix}-{len(shards):03d}.npz", root, batch))
    return shards


def _write(path: Path, root: Path, files: list[Path]) -> Path:
    blobs = [p.read_bytes() for p in files]
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    np.savez(
        path,
        names=np.array([str(p.relative_to(root)) for p in files]),
        sha256=np.array([hashlib.sha256(b).hexdigest() for b in blobs]),
        offsets=offsets,
        data=np.frombuffer(b"".join(blobs), dtype=np.uint8),
    )
    return path


def unpack(shards: list[Path], dest: Path) -> int:
    dest = Path(dest)
    count = 0
    for shard in shards:
        try:
            z = np.load(shard, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DataError(f"{shard}: not a dataset shard ({e})") from e
        data, offsets = z["data"], z["offsets"]
        for i, (name, digest) in enumerate(zip(z["names"], z["sha256"], strict=True)):
            blob = data[offsets[i] : offsets[i + 1]].tobytes()
            if hashlib.sha256(blob).hexdigest() != digest:
                raise DataError(f"{shard}: {name} is corrupt (sha256 mismatch)")
            target = dest / str(name)
            if ".." in Path(str(name)).parts:
                raise DataError(f"{shard}: refusing path {name} outside the destination")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(blob)
            count += 1
    return count
