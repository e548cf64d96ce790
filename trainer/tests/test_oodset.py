"""`dermaedge-train ood-set` / `ood-eval`: frames that are not dermoscopy, and the device's
answers per kind (the device part needs DERMAEDGE_BIN, as in test_device_eval.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermaedge_train.cli import main
from dermaedge_train.data import DataError
from dermaedge_train.oodset import SYNTHETIC, build_ood_set, load_ood_set, ood_eval

from .conftest import REPO

BIN = os.environ.get("DERMAEDGE_BIN")


def test_the_set_is_reproducible_with_every_kind_in_both_parts(tmp_path):
    photos = tmp_path / "photos" / "nested"
    photos.mkdir(parents=True)
    Image.fromarray(np.full((300, 400, 3), 90, np.uint8)).save(photos / "wall.png")
    (photos / "notes.txt").write_text("not a photo")
    a = build_ood_set(tmp_path / "a", per_kind=4, photos=[tmp_path / "photos"], seed=3)
    b = build_ood_set(tmp_path / "b", per_kind=4, photos=[tmp_path / "photos"], seed=3)
    assert a == b
    for r in a:
        assert (tmp_path / "a/images" / r["image"]).read_bytes() == (
            tmp_path / "b/images" / r["image"]
        ).read_bytes()
    kinds = {r["kind"] for r in a}
    assert kinds == set(SYNTHETIC) | {"photo"}
    assert len(a) == 4 * len(SYNTHETIC) + 1
    assert {r["part"] for r in a} == {"fit", "test"}
    assert load_ood_set(tmp_path / "a") == a
    assert all(r["part"] == "test" for r in load_ood_set(tmp_path / "a", "test"))
    with Image.open(tmp_path / "a/images/colour_bars_000.jpg") as im:
        assert im.size in {(640, 480), (1280, 960), (800, 600), (1280, 720)}


def test_a_missing_set_or_photo_folder_is_named(tmp_path):
    with pytest.raises(DataError, match="kinds.csv: missing"):
        load_ood_set(tmp_path)
    with pytest.raises(DataError, match="not a folder of photos"):
        build_ood_set(tmp_path / "x", per_kind=1, photos=[tmp_path / "nope"])


@pytest.mark.skipif(not BIN, reason="DERMAEDGE_BIN (the built binary) not set")
def test_ood_eval_reports_every_frame_per_kind(tmp_path, capsys):
    build_ood_set(tmp_path / "ood", per_kind=2, seed=1)
    (tmp_path / "ood/images/colour_bars_000.jpg").write_bytes(b"\xff\xd8 truncated")
    rep = ood_eval(Path(BIN), REPO / "models", tmp_path / "ood", tmp_path / "eval", part="")
    assert rep["frames"] == 2 * len(SYNTHETIC)
    assert set(rep["kinds"]) == set(SYNTHETIC)
    for k in rep["kinds"].values():
        assert k["frames"] == 2
        assert k["refused"] + k["classified"] + k["unreadable"] == k["frames"]
        assert k["melanoma_flag"] <= k["classified"]
    assert rep["kinds"]["colour_bars"]["unreadable"] == 1
    # Almost black frames are what the exposure check already refuses.
    assert rep["kinds"]["lens_cap"]["refused"] == 2
    # The shipped classifier's OOD decision (issue 11): none of these camera frames gets a
    # classification; the colour bars pass the quality gate and are refused as not dermoscopic.
    assert rep["classified"] == 0 and rep["melanoma_flag"] == 0
    assert rep["kinds"]["colour_bars"]["reasons"] == {"not_dermoscopic": 1}
    saved = json.loads((tmp_path / "eval/ood_eval.json").read_text())
    assert saved == rep
    lines = (tmp_path / "eval/results.jsonl").read_text().splitlines()
    assert len(lines) == rep["frames"] - 1
    assert (
        main(
            [
                "ood-eval",
                "--binary",
                BIN,
                "--models",
                str(REPO / "models"),
                "--ood",
                str(tmp_path / "ood"),
                "--part",
                "",
                "--out",
                str(tmp_path / "e2"),
            ]
        )
        == 0
    )
    assert "lens_cap" in capsys.readouterr().out
