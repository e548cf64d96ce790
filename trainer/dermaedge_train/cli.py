"""``dermaedge-train``: train, evaluate, export, score, pack/unpack data, benchmark.

Errors in the user's data, config or files end the command with one line naming the file or
key and what is wrong, and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .config import ConfigError, load_config
from .data import DataError


def _config(args) -> object:
    return load_config(Path(args.config) if args.config else None, args.set)


def cmd_train(args) -> None:
    from .train import train

    cfg = _config(args)
    best = train(cfg, Path(args.out), resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"best checkpoint: {best}")


def cmd_evaluate(args) -> None:
    from .evaluate import (
        evaluate_classification,
        evaluate_segmentation,
        onnx_logits_fn,
        torch_logits_fn,
    )
    from .export import load_checkpoint
    from .loader import lesion_masks_dir
    from .samples import load_samples, split_samples
    from .splits import select

    model, ckpt, cfg = load_checkpoint(Path(args.checkpoint))
    if args.data:
        cfg.data.root = args.data
        cfg.data.split_file = ""
    elif (Path(args.checkpoint).parent / "split.csv").exists():
        cfg.data.split_file = str(Path(args.checkpoint).parent / "split.csv")
    cfg.data.limit = 0
    samples = load_samples(cfg)
    if not args.data:
        samples = select(samples, split_samples(cfg, samples, None), args.split)
    fn = onnx_logits_fn(Path(args.onnx)) if args.onnx else torch_logits_fn(model)
    out = Path(args.out)
    if cfg.task == "classification":
        rep = evaluate_classification(
            fn,
            samples,
            ckpt["steps"],
            float(ckpt.get("temperature", 1.0)),
            out,
            tta=not args.no_tta,
            masks_dir=lesion_masks_dir(cfg),
        )
        print(
            f"{len(samples)} images: BMA {rep['balanced_accuracy']:.4f} "
            f"(95% CI {rep['balanced_accuracy_ci95'][0]:.3f}-"
            f"{rep['balanced_accuracy_ci95'][1]:.3f}), melanoma AUC "
            f"{rep['melanoma']['auc']:.4f}, ECE {rep['ece']:.4f}; predictions in "
            f"{out / 'predictions.csv'}"
        )
    else:
        rep = evaluate_segmentation(fn, samples, ckpt["steps"], out)
        print(
            f"{len(samples)} images: thresholded Jaccard {rep['thresholded_jaccard']:.4f}, "
            f"Jaccard {rep['jaccard']:.4f}, Dice {rep['dice']:.4f}"
        )


def cmd_export(args) -> None:
    from .export import export

    export(
        Path(args.checkpoint),
        Path(args.out),
        args.name,
        args.version,
        [Path(p) for p in args.reference],
        data_root=args.data or "",
        int8=not args.no_int8,
        allow_int8_drift=args.allow_int8_drift,
        eval_split=args.split,
    )


def cmd_score(args) -> None:
    from .evaluate import SUMMARY, score_csv

    rep = score_csv(Path(args.predictions), Path(args.truth), Path(args.out))
    print(json.dumps({k: rep[k] for k in SUMMARY}, indent=2))


def cmd_device_eval(args) -> None:
    from .device_eval import device_eval, device_eval_segmentation

    paths = (Path(args.binary), Path(args.models), Path(args.data), Path(args.out))
    split_file = Path(args.split_file) if args.split_file else None
    common = {"split_file": split_file, "which": args.split, "precision": args.precision}
    if args.task == "segmentation":
        rep = device_eval_segmentation(*paths, **common)
        keys = ("n", "refused", "jaccard", "thresholded_jaccard", "thresholded_jaccard_ci95")
        keys += ("dice",)
    else:
        rep = device_eval(*paths, source=args.source, **common)
        keys = ("images", "classified", "coverage", "false_not_dermoscopic", "recapture_reasons")
        keys += ("balanced_accuracy",)
        keys += ("balanced_accuracy_ci95", "official_balanced_accuracy", "ece", "melanoma")
    print(json.dumps({k: rep[k] for k in keys if k in rep}, indent=2, default=float))


def cmd_ood_set(args) -> None:
    from .oodset import build_ood_set

    rows = build_ood_set(Path(args.out), args.per_kind, [Path(p) for p in args.photos], args.seed)
    kinds = sorted({r["kind"] for r in rows})
    print(f"{len(rows)} frames ({', '.join(kinds)}) in {args.out}/images, kinds in kinds.csv")


def cmd_ood_eval(args) -> None:
    from .oodset import ood_eval

    rep = ood_eval(
        Path(args.binary),
        Path(args.models),
        Path(args.ood),
        Path(args.out),
        args.part,
        args.precision,
    )
    print(
        f"{rep['frames']} frames ({rep['part']}): {rep['classified']} classified, "
        f"melanoma flag on {rep['melanoma_flag']}"
    )
    for kind, k in rep["kinds"].items():
        print(
            f"  {kind:14s} refused {k['refused_fraction']:6.1%} of {k['frames']:4d}, "
            f"melanoma flag {k['melanoma_flag']}"
        )


def cmd_predict_masks(args) -> None:
    import numpy as np
    from PIL import Image

    from .data import load_classification, load_rgb
    from .evaluate import segment_full, torch_logits_fn
    from .export import load_checkpoint

    model, ckpt, cfg = load_checkpoint(Path(args.checkpoint))
    if cfg.task != "segmentation":
        raise DataError(f"{args.checkpoint}: a {cfg.task} checkpoint, not a segmenter")
    fn = torch_logits_fn(model)
    samples = load_classification(Path(args.data), require_all_classes=False)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for s in samples:
        mask = segment_full(fn, load_rgb(s.image), ckpt["steps"])
        Image.fromarray((mask * 255).astype(np.uint8)).save(out / f"{s.image_id}.png")
    print(f"{len(samples)} masks in {out} (use with data.lesion_crop.masks_dir)")


def cmd_pack(args) -> None:
    from .shards import pack

    for p in pack(Path(args.root), Path(args.out), args.max_mb):
        print(p)


def cmd_unpack(args) -> None:
    from .shards import unpack

    print(f"{unpack([Path(p) for p in args.shards], Path(args.dest))} files restored")


def cmd_check_data(args) -> None:
    from .data import load_mask, load_rgb
    from .samples import load_samples

    cfg = _config(args)
    samples = load_samples(cfg)
    for s in samples:
        img = load_rgb(s.image)
        if hasattr(s, "mask"):
            load_mask(s.mask, img.shape[:2])
    print(f"{len(samples)} samples decode cleanly")


def cmd_bench(args) -> None:
    from .bench import bench

    results = []
    for arch in args.arch:
        cfg = _config(args)
        cfg.model.arch = arch
        cfg.task = "segmentation" if arch.startswith("unet") else "classification"
        results.append(bench(cfg, args.steps, with_data=not args.synthetic_only))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dermaedge-train", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp):
        sp.add_argument("--config", help="YAML config (defaults when omitted)")
        sp.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config key, e.g. --set train.epochs=5",
        )

    sp = sub.add_parser("train", help="train a classifier or segmenter")
    with_config(sp)
    sp.add_argument("--out", required=True, help="run directory")
    sp.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    sp.set_defaults(fn=cmd_train)

    sp = sub.add_parser("evaluate", help="metrics, ISIC predictions CSV and figures")
    sp.add_argument("checkpoint", help="a run's best.pt")
    sp.add_argument("--onnx", help="evaluate this exported file instead of the checkpoint")
    sp.add_argument("--data", help="evaluate on all of this dataset instead of the run's split")
    sp.add_argument("--split", default="val", choices=["train", "val", "test", "calib"])
    sp.add_argument("--no-tta", action="store_true")
    sp.add_argument("--out", required=True)
    sp.set_defaults(fn=cmd_evaluate)

    sp = sub.add_parser("export", help="ONNX float32 + int8, manifests, reference outputs")
    sp.add_argument("checkpoint")
    sp.add_argument("--out", required=True, help="models directory")
    sp.add_argument("--name", required=True, help="model name, e.g. classifier")
    sp.add_argument("--version", required=True)
    sp.add_argument("--reference", nargs="*", default=[], help="sample images for references")
    sp.add_argument("--data", help="dataset root, when not where the run found it")
    sp.add_argument(
        "--split",
        default="val",
        choices=["val", "test"],
        help="split the manifest's metrics are measured on",
    )
    sp.add_argument("--no-int8", action="store_true")
    sp.add_argument(
        "--allow-int8-drift",
        action="store_true",
        help="write the int8 model even when it disagrees with float on >1%%",
    )
    sp.set_defaults(fn=cmd_export)

    sp = sub.add_parser("score", help="score an ISIC-format predictions CSV")
    sp.add_argument("predictions")
    sp.add_argument("--truth", required=True, help="one-hot truth CSV (evaluate writes one)")
    sp.add_argument("--out", required=True)
    sp.set_defaults(fn=cmd_score)

    sp = sub.add_parser(
        "device-eval", help="score the shipped models through the device's pipeline"
    )
    sp.add_argument("--binary", default="target/release/dermaedge", help="dermaedge binary")
    sp.add_argument("--models", default="models", help="folder with the .onnx and manifests")
    sp.add_argument("--precision", default="float32", choices=["float32", "int8"])
    sp.add_argument(
        "--task",
        default="classification",
        choices=["classification", "segmentation"],
        help="score the classifier (default) or the lesion masks",
    )
    sp.add_argument("--data", required=True, help="dataset root (cls/ or seg/ inside)")
    sp.add_argument("--split-file", help="a training run's split.csv")
    sp.add_argument("--split", default="val", choices=["train", "val", "test", "calib"])
    sp.add_argument("--source", default="", help="only images of this source (leave-one-out)")
    sp.add_argument("--out", required=True)
    sp.set_defaults(fn=cmd_device_eval)

    sp = sub.add_parser("ood-set", help="build a set of frames that are not dermoscopy")
    sp.add_argument("--out", required=True)
    sp.add_argument("--per-kind", type=int, default=20, help="synthetic frames per kind")
    sp.add_argument("--photos", nargs="*", default=[], help="folders of ordinary photos")
    sp.add_argument("--seed", type=int, default=0)
    sp.set_defaults(fn=cmd_ood_set)

    sp = sub.add_parser("ood-eval", help="what the device says about an ood-set, per kind")
    sp.add_argument("--binary", default="target/release/dermaedge", help="dermaedge binary")
    sp.add_argument("--models", default="models", help="folder with the .onnx and manifests")
    sp.add_argument("--precision", default="float32", choices=["float32", "int8"])
    sp.add_argument("--ood", required=True, help="a folder ood-set wrote")
    sp.add_argument("--part", default="test", choices=["fit", "test", ""])
    sp.add_argument("--out", required=True)
    sp.set_defaults(fn=cmd_ood_eval)

    sp = sub.add_parser("predict-masks", help="segment a classification dataset's images")
    sp.add_argument("checkpoint", help="a segmenter run's best.pt")
    sp.add_argument("--data", required=True, help="classification dataset root")
    sp.add_argument("--out", required=True, help="folder for <image id>.png masks")
    sp.set_defaults(fn=cmd_predict_masks)

    sp = sub.add_parser("pack", help="pack a dataset folder into .npz shards")
    sp.add_argument("root")
    sp.add_argument("--out", required=True)
    sp.add_argument("--max-mb", type=float, default=48.0)
    sp.set_defaults(fn=cmd_pack)

    sp = sub.add_parser("unpack", help="restore a dataset folder from shards")
    sp.add_argument("shards", nargs="+")
    sp.add_argument("--dest", required=True)
    sp.set_defaults(fn=cmd_unpack)

    sp = sub.add_parser("check-data", help="decode every image and mask of the dataset")
    with_config(sp)
    sp.set_defaults(fn=cmd_check_data)

    sp = sub.add_parser("bench", help="training throughput (img/s) per architecture")
    with_config(sp)
    sp.add_argument("--arch", nargs="+", default=["efficientnet_lite0"])
    sp.add_argument("--steps", type=int, default=30)
    sp.add_argument("--synthetic-only", action="store_true")
    sp.add_argument("--out", help="write the results as JSON")
    sp.set_defaults(fn=cmd_bench)

    args = p.parse_args(argv)
    try:
        args.fn(args)
    except (ConfigError, DataError) as e:
        print(f"dermaedge-train: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - export/check failures are user-facing too
        from .export import ExportError

        if isinstance(e, ExportError):
            print(f"dermaedge-train: {e}", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
