"""How the OOD features were chosen (issue 11), kept so the choice can be re-run; not part of
the product (the exporter's trainer/dermaedge_train/ood.py is).

For candidate feature maps of the shipped classifier (the pooled head, and the per-channel
mean and standard deviation of blocks 4, 7, 10 and 14), Mahalanobis distance in the top k
whitened principal directions of the training split, threshold = margin x the calibration
split's 99th percentile, margin from leave-one-source-out fits (ood.py's rule). Reports the
false refusals on the validation split (overall, worst source), on a source left out of the
fit (isic2018task1_512_komour), and the refusals per part of the OOD set (`dermaedge-train
ood-set`), alone and together with the device's other checks (from an `ood-eval` run of the
models before the OOD decision, if given).

Measured with the 1.0.0 classifier (2 cores, ~9 min for the features, cached):
  head k=64:  worst source 0.4 %, photos (test part) 85-88 %;
  block 7 k=64: margin 1.74, val 0.07 %, worst source 0.4 %, komour left out 2.0 %,
  photos 97 % (fit part 97 %), synthetic camera frames with the other checks 99.3 %;
  blocks 4/10 and concatenations: no better on photos, or worse on the left-out source.

Usage: python scripts/ood_probe.py [ood-eval results.jsonl]  (after `source scripts/env.sh`;
needs the run in ~/.cache/dermaedge/runs/cpu/classifier and the set in ~/.cache/dermaedge/ood)
"""

import collections
import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch
from dermaedge_train import ood
from dermaedge_train.data import load_classification, load_rgb
from dermaedge_train.export import load_checkpoint
from dermaedge_train.preprocess import apply_steps
from dermaedge_train.splits import load_split, select

REPO = Path(__file__).resolve().parent.parent
RUN = Path.home() / ".cache/dermaedge/runs/cpu/classifier"
OOD_ROOT = Path.home() / ".cache/dermaedge/ood"
CACHE = Path.home() / ".cache/dermaedge/ood-probe"
BLOCKS = (4, 7, 10, 14)
LEFT_OUT = "isic2018task1_512_komour"


def extract(model, steps, paths) -> dict:
    acts = {}
    for b in BLOCKS:
        model.net._blocks[b].register_forward_hook(
            lambda m, i, o, b=b: acts.__setitem__(b, o)
        )
    out = {k: [] for k in ["head", *map(str, BLOCKS)]}
    for i in range(0, len(paths), 32):
        x = torch.from_numpy(
            np.concatenate([apply_steps(load_rgb(p), steps) for p in paths[i : i + 32]])
        )
        with torch.no_grad():
            out["head"].append(
                model.net.extract_features(x).mean((2, 3)).double().numpy()
            )
            for b in BLOCKS:
                out[str(b)].append(ood.pooled_stats(acts[b]).double().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def cached_features() -> dict:
    CACHE.mkdir(parents=True, exist_ok=True)
    model, _, _ = load_checkpoint(RUN / "best.pt")
    model.eval()
    torch.set_num_threads(2)
    steps = [
        s
        for s in json.loads((REPO / "models/classifier-f32.json").read_text())[
            "preprocessing"
        ]
        if s["op"] != "lesion_crop"
    ]
    samples = load_classification(
        REPO.parent / "shared/data", require_all_classes=False
    )
    assign = load_split(RUN / "split.csv", samples)
    rows = list(csv.DictReader((OOD_ROOT / "kinds.csv").read_text().splitlines()))
    sets = {name: select(samples, assign, name) for name in ("train", "calib", "val")}
    out = {}
    for name, ss in [*sets.items(), ("ood", rows)]:
        f = CACHE / f"{name}.npz"
        if not f.exists():
            if name == "ood":
                paths = [OOD_ROOT / "images" / r["image"] for r in rows]
                meta = {
                    k: np.array([r[k] for r in rows]) for k in ("kind", "part", "image")
                }
            else:
                paths = [s.image for s in ss]
                meta = {
                    "source": np.array([s.source for s in ss]),
                    "image": np.array([s.image.name for s in ss]),
                }
            np.savez(f, **extract(model, steps, paths), **meta)
        out[name] = dict(np.load(f))
    return out


def main() -> None:
    d = cached_features()
    tr, ca, va, oo = d["train"], d["calib"], d["val"], d["ood"]
    gates = np.zeros(len(oo["image"]), bool)
    if len(sys.argv) > 1:
        refused = {}
        for line in Path(sys.argv[1]).read_text().splitlines():
            r = json.loads(line)
            refused[r["image"]] = r["status"] != "ok"
        gates = np.array([refused.get(i, False) for i in oo["image"]])
    test, photo = oo["part"] == "test", oo["kind"] == "photo"
    for key, k in [
        ("head", 32),
        ("head", 64),
        ("4", 32),
        ("7", 64),
        ("7", 128),
        ("10", 64),
        ("14", 64),
    ]:
        margins = ood.source_margins(
            tr[key], list(tr["source"]), ca[key], list(ca["source"])
        )
        margin = max([1.0, *margins.values()])
        mean, proj = ood.fit(tr[key], k)
        t = margin * np.quantile(ood.distance(ca[key], mean, proj), ood.CALIB_QUANTILE)
        dv = ood.distance(va[key], mean, proj)
        worst = max(
            v["refused"]
            for v in ood.refusal_by_source(dv, list(va["source"]), t).values()
        )
        # a clinic the fit never saw: fit without it, threshold by the same rule
        keep = tr["source"] != LEFT_OUT
        m2, p2 = ood.fit(tr[key][keep], k)
        others = ca["source"] != LEFT_OUT
        t2 = margin * np.quantile(
            ood.distance(ca[key][others], m2, p2), ood.CALIB_QUANTILE
        )
        held = ood.distance(
            np.concatenate([tr[key][~keep], va[key][va["source"] == LEFT_OUT]]), m2, p2
        )
        do = ood.distance(oo[key], mean, proj) > t
        print(
            f"{key:>4} k={k:<3} margin {margin:.2f}: val {np.mean(dv > t):.2%}, worst source "
            f"{worst:.1%}, {LEFT_OUT} left out {np.mean(held > t2):.1%}; photos fit "
            f"{do[~test & photo].mean():.0%} test {do[test & photo].mean():.0%}; synthetic test "
            f"{do[test & ~photo].mean():.0%}, with the other checks {(do | gates)[test & ~photo].mean():.1%}"
        )
    kinds = collections.Counter(oo["kind"][test])
    print("test part:", dict(kinds))


if __name__ == "__main__":
    main()
