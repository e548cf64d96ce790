"""The CPU recipe's machinery: time budget and size schedule, resumable order, decoded cache,
and a training run killed with SIGKILL and resumed from its last checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import dermaedge_train
from dermaedge_train import preprocess
from dermaedge_train.cache import load_or_build
from dermaedge_train.config import ConfigError, load_config
from dermaedge_train.data import load_classification, load_rgb, load_segmentation
from dermaedge_train.loader import EpochSampler, model_steps
from dermaedge_train.models import mean_std
from dermaedge_train.train import Schedule


def _schedule(**kw) -> Schedule:
    base = dict(lr=1.0, warmup_steps=10, total_steps=100, budget_s=0.0, sizes=(64,), shares=(1,))
    return Schedule(**(base | kw))


def test_epoch_schedule_warms_up_then_decays_to_zero():
    s = _schedule()
    assert s.progress(50, 1e9) == 0.5  # steps, not seconds
    assert s.lr_at(0, 0.0) == pytest.approx(0.1)
    assert s.lr_at(9, 0.09) == pytest.approx(0.5 * (1 + np.cos(np.pi * 0.09)))
    lrs = [s.lr_at(k, s.progress(k, 0)) for k in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)


def test_time_budget_sets_progress_and_size_phases():
    s = _schedule(budget_s=600.0, sizes=(128, 160, 224), shares=(0.5, 0.3, 0.2))
    assert s.progress(3, 300.0) == 0.5  # seconds, not steps
    assert [s.size_at(p) for p in (0.0, 0.49, 0.5, 0.79, 0.8, 0.99, 1.2)] == [
        128,
        128,
        160,
        160,
        224,
        224,
        224,
    ]


def test_size_schedule_must_end_at_the_export_size():
    with pytest.raises(ConfigError, match="train.sizes"):
        load_config(
            None, ["data.image_size=224", "train.sizes=[128, 160]", "train.size_shares=[0.5, 0.5]"]
        )
    with pytest.raises(ConfigError, match="train.size_shares"):
        load_config(
            None, ["data.image_size=224", "train.sizes=[128, 224]", "train.size_shares=[0.5]"]
        )
    with pytest.raises(ConfigError, match="train.size_shares"):
        load_config(
            None, ["data.image_size=224", "train.sizes=[128, 224]", "train.size_shares=[0.5, 0.6]"]
        )
    cfg = load_config(
        None, ["data.image_size=224", "train.sizes=[128, 224]", "train.size_shares=[0.7, 0.3]"]
    )
    assert [int(s) for s in cfg.train.sizes] == [128, 224]


@pytest.mark.parametrize("weights", [None, torch.tensor([1.0, 1.0, 4.0, 0.5] * 5)])
def test_a_resumed_epoch_goes_on_with_the_batches_it_had_not_seen(weights):
    whole = EpochSampler(20, seed=7, weights=weights)
    whole.set_epoch(3)
    order = list(whole)
    resumed = EpochSampler(20, seed=7, weights=weights)
    resumed.set_epoch(3, start=8)
    assert list(resumed) == order[8:] and len(resumed) == 12
    other = EpochSampler(20, seed=7, weights=weights)
    other.set_epoch(4)
    assert list(other) != order  # a new order every epoch


def test_ranks_share_one_epoch_without_overlap():
    ranks = [EpochSampler(10, seed=1, rank=r, world=3) for r in range(3)]
    seen = [i for s in ranks for i in s]
    assert len(seen) == 12 and set(seen) == set(range(10))  # padded to 3 x 4


def test_cache_holds_what_the_steps_make_and_is_rebuilt_when_a_file_changes(simple_root, tmp_path):
    cfg = load_config(None, [f"data.root={simple_root}", "data.image_size=32"])
    samples = load_classification(simple_root)
    steps = model_steps(cfg, *mean_std(cfg))
    cache = load_or_build(samples, steps, 32, tmp_path, workers=2)
    assert cache.images.shape == (len(samples), 32, 32, 3) and cache.masks is None
    for s in samples[:5]:
        want = preprocess.apply_steps(load_rgb(s.image), steps, stop_before="normalize")
        np.testing.assert_array_equal(cache.images[cache.row[s.image_id]], want)
    folders = sorted(p.name for p in tmp_path.iterdir())
    load_or_build(samples, steps, 32, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == folders  # reused, not rebuilt
    st = samples[0].image.stat()
    os.utime(samples[0].image, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    try:
        load_or_build(samples, steps, 32, tmp_path, workers=1)
        assert len(list(tmp_path.iterdir())) == len(folders) + 1
    finally:
        os.utime(samples[0].image, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_cache_keeps_segmentation_masks_aligned(simple_root, tmp_path):
    cfg = load_config(None, [f"data.root={simple_root}", "task=segmentation", "data.image_size=32"])
    samples = load_segmentation(simple_root)
    cache = load_or_build(samples, model_steps(cfg, *mean_std(cfg)), 32, tmp_path, workers=1)
    assert cache.masks.shape == (len(samples), 32, 32)
    assert set(np.unique(cache.masks)) <= {0, 1}
    # The synthetic lesions are darker than the skin around them.
    img, mask = cache.images[0].astype(float), cache.masks[0].astype(bool)
    assert img[mask].mean() < img[~mask & (img.sum(-1) > 60)].mean()


def _train_cmd(root: Path, out: Path, cache: Path, resume: bool) -> list[str]:
    sets = [
        f"data.root={root}",
        f"data.cache={cache}",
        "data.image_size=64",
        "data.val_fraction=0.25",
        "data.calib_fraction=0.25",
        "data.seed=14",  # a split with melanomas in both calib and val (checked below)
        "train.max_minutes=0.4",
        "train.checkpoint_minutes=0.02",
        "train.sizes=[32, 64]",
        "train.size_shares=[0.5, 0.5]",
        "train.select=last",
        "train.batch_size=4",
        "train.workers=0",
        "train.device=cpu",
    ]
    code = "import sys; from dermaedge_train.cli import main; sys.exit(main(sys.argv[1:]))"
    args = [sys.executable, "-c", code, "train", "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    return args + (["--resume"] if resume else [])


def test_a_killed_run_resumes_from_its_last_checkpoint(simple_root, tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    # The subprocess imports this very package, wherever the environment's install points.
    package_root = str(Path(dermaedge_train.__file__).resolve().parents[1])
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": package_root}
    proc = subprocess.Popen(
        _train_cmd(simple_root, out, cache, False),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    last = out / "last.pt"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if last.exists():
                state = torch.load(last, weights_only=False)["state"]
                if state["step"] >= 3:
                    break
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.2)
        else:
            pytest.fail("no checkpoint with progress within 120 s")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (out / "best.pt").exists()  # killed before the schedule's end
    assert not (out / "finished.json").exists()
    killed = torch.load(last, weights_only=False)["state"]
    assert 0 < killed["elapsed_s"] < 24

    done = subprocess.run(
        _train_cmd(simple_root, out, cache, True), capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"resuming {last}" in done.stdout
    final = torch.load(out / "best.pt", weights_only=False)
    assert final["state"]["step"] > killed["step"]
    assert final["state"]["elapsed_s"] >= 24  # the budget was spent, counting both processes
    assert final["temperature_split"] == "calib"
    assert json.loads((out / "finished.json").read_text())["steps"] == final["state"]["step"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["size"] for r in rows} <= {32, 64} and rows[-1]["size"] == 64
    assert rows[-1]["val"] is not None

    # Its export takes the temperature and the melanoma operating point from the calib split.
    split = dict(line.split(",") for line in (out / "split.csv").read_text().split()[1:])
    mel_in = {v for k, v in split.items() if int(k.removeprefix("ISIC_")) // 10 == 0}
    assert {"calib", "val"} <= mel_in
    models = tmp_path / "models"
    from dermaedge_train.cli import main

    assert (
        main(
            [
                "export",
                str(out / "best.pt"),
                "--out",
                str(models),
                "--name",
                "classifier",
                "--version",
                "0.0.1-test",
                "--no-int8",
            ]
        )
        == 0
    )
    manifest = json.loads((models / "classifier-f32.json").read_text())
    assert manifest["calibration"]["fitted_on"] == "calibration split, NLL"
    assert manifest["metrics"]["melanoma"]["threshold_chosen_on"] == "calib"
    assert manifest["decision"]["melanoma_threshold"] == pytest.approx(
        manifest["metrics"]["melanoma"]["threshold"]
    )
