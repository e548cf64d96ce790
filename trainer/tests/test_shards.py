"""Shards restore the exact folder tree and catch corruption."""

import numpy as np
import pytest

from dermaedge_train.data import DataError
from dermaedge_train.shards import pack, unpack


def test_pack_unpack_round_trip(simple_root, tmp_path):
    shards = pack(simple_root, tmp_path / "shards", max_mb=0.02)
    assert len(shards) > 1  # the size limit splits the data
    n = unpack(shards, tmp_path / "restored")
    originals = sorted(p for p in simple_root.rglob("*") if p.is_file())
    assert n == len(originals)
    for p in originals:
        assert (tmp_path / "restored" / p.relative_to(simple_root)).read_bytes() == p.read_bytes()


def test_corrupt_shard_is_detected(simple_root, tmp_path):
    (shard,) = pack(simple_root / "cls" / "images", tmp_path, max_mb=100)
    z = dict(np.load(shard))
    z["data"] = z["data"].copy()
    z["data"][100] ^= 0xFF
    np.savez(shard, **z)
    with pytest.raises(DataError, match=r"is corrupt \(sha256 mismatch\)"):
        unpack([shard], tmp_path / "out")
