"""Export — the contract with the device.

From a run's ``best.pt`` this writes, for the float32 model and its int8 (QDQ) quantization:

- ``<name>-f32.onnx`` / ``<name>-int8.onnx``: static input shape, opset 17, standard-domain ops
  only (tract loads no ``com.microsoft`` contrib op);
- ``<name>-<precision>.json``: the manifest (validated against ``models/manifest.schema.json``)
  with every preprocessing step, the calibration temperature, the decision thresholds, the
  sha256 of the .onnx and the metrics of that exact file measured with onnxruntime;
- ``<name>-<precision>.reference.json`` plus ``reference/<name>/<image>.png``: for a handful
  of sample images, the exact preprocessed input (uint8 PNG, before ``normalize``) and the
  onnxruntime output, so the device can prove it computes the same thing.

Export fails, naming the check, when PyTorch and onnxruntime disagree (float: max abs
difference of probabilities >= 1e-4) or when int8 drifts from float (argmax agreement or mask
agreement below 99%) — unless the caller accepts the drift explicitly.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import onnx
import torch
from PIL import Image

from . import __version__, metrics, ood, preprocess
from .config import Config, config_from_dict
from .data import CLASSES, load_rgb
from .evaluate import (
    evaluate_classification,
    evaluate_segmentation,
    model_input,
    onnx_logits_fn,
)
from .loader import lesion_masks_dir
from .models import build_model
from .samples import load_samples, split_samples
from .splits import select

OPSET = 17
STANDARD_DOMAINS = ("", "ai.onnx")
# Op types quantized to int8, all standard ops. Clip/Relu must be among them: the quantizer
# then folds ReLU6/ReLU into the [0, 6] / [0, inf) range of the preceding Conv's output instead
# of spending the uint8 range on negative pre-activations (measured on EfficientNet-Lite0:
# argmax agreement with float 79% -> 94%; U-Net mask agreement 95.5% -> 98.5%).
# ConvTranspose stays float: per-axis dequantization on its weights is the least-trodden path.
QUANTIZED_OPS = ["Conv", "Gemm", "MatMul", "Clip", "Relu", "Add", "Concat", "MaxPool"]
FLOAT_TOLERANCE = 1e-4
OOD_TOLERANCE = 1e-3  # relative: the distance sums 64 squares of float32 products
INT8_MIN_AGREEMENT = 0.99

DATA_LICENSES = {
    "default": "HAM10000 images: CC BY-NC 4.0 (Tschandl et al. 2018); ISIC archive images: "
    "CC-0 / CC-BY per the ISIC Archive",
}
WEIGHTS_LICENSE = "CC BY-NC 4.0 (trained on HAM10000: non-commercial use only)"


class ExportError(Exception):
    """An export check failed; the message names the check and the numbers."""


def schema_path() -> Path:
    env = os.environ.get("DERMAEDGE_MANIFEST_SCHEMA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "models" / "manifest.schema.json"


def validate_manifest(manifest: dict) -> None:
    import jsonschema

    path = schema_path()
    if not path.is_file():
        raise ExportError(f"{path}: manifest schema not found (set DERMAEDGE_MANIFEST_SCHEMA)")
    schema = json.loads(path.read_text())
    try:
        jsonschema.validate(manifest, schema)
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise ExportError(f"manifest {where}: {e.message}") from e


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_checkpoint(path: Path) -> tuple[torch.nn.Module, dict, Config]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError as e:
        raise ExportError(f"{path}: checkpoint not found") from e
    cfg = config_from_dict(ckpt["config"])
    m = cfg.model
    model = build_model(cfg.task, m.arch, cfg.data.image_size, False, m.dropout, 0, m.width)
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model, ckpt, cfg


def check_domains(path: Path) -> None:
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    bad = sorted({n.domain for n in model.graph.node if n.domain not in STANDARD_DOMAINS})
    if bad:
        raise ExportError(f"{path}: uses non-standard op domain(s) {bad}; tract cannot load them")


def export_onnx(
    model: torch.nn.Module, size: int, path: Path, output_names: str | list[str]
) -> None:
    dummy = torch.zeros(1, 3, size, size)
    raw = path.with_suffix(".raw.onnx")
    if isinstance(output_names, str):
        output_names = [output_names]
    torch.onnx.export(
        model,
        (dummy,),
        str(raw),
        input_names=["input"],
        output_names=output_names,
        opset_version=OPSET,
        dynamo=False,
    )
    try:
        fold_constants(raw, path)
    finally:
        raw.unlink(missing_ok=True)
    check_domains(path)


def fold_constants(src: Path, dst: Path) -> None:
    """Fold the exporter's shape arithmetic (e.g. the static 'same' padding) into constants.

    onnxruntime's basic graph optimisations only fold constants and fuse into standard ops;
    the opset imports it adds for domains the graph does not use are dropped again.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
    save_without_unused_opsets(onnx.load(str(dst)), dst)


def save_without_unused_opsets(model: onnx.ModelProto, path: Path) -> None:
    used = {n.domain for n in model.graph.node} | {""}
    keep = [o for o in model.opset_import if o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    onnx.save(model, str(path))


def quantize_int8(
    float_path: Path, int8_path: Path, calib: list[np.ndarray], keep_float: list[str] = ()
) -> None:
    """QDQ int8; the nodes named in `keep_float` stay float32 (the OOD distance: its
    whitening spreads a few units of feature over a wide range that int8 would flatten)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"input": x}

    raw = int8_path.with_suffix(".raw.onnx")
    try:
        quantize_static(
            str(float_path),
            str(raw),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=QUANTIZED_OPS,
            nodes_to_exclude=list(keep_float),
        )
        save_without_unused_opsets(onnx.load(str(raw)), int8_path)
    finally:
        raw.unlink(missing_ok=True)
    check_domains(int8_path)


def ood_nodes(path: Path) -> list[str]:
    """The nodes of the OOD distance: those the wrapper adds outside the classifier."""
    return [n.name for n in onnx.load(str(path)).graph.node if not n.name.startswith("/model/")]


def check_ood_parity(path: Path, xs: list[np.ndarray], torch_d: np.ndarray) -> None:
    dist = onnx_logits_fn(path, output=1)
    ort_d = np.concatenate([dist(x) for x in xs])
    rel = float(np.max(np.abs(ort_d - torch_d) / np.maximum(np.abs(torch_d), 1e-6)))
    if rel >= OOD_TOLERANCE:
        raise ExportError(
            f"{path}: PyTorch and onnxruntime OOD distances differ by {rel:.2e} relative "
            f"(limit {OOD_TOLERANCE:g})"
        )
    print(f"parity float32: OOD distance max relative difference {rel:.2e}")


def ood_metrics(path: Path, held_out: list, steps: list, masks_dir, block: dict) -> dict:
    """How often this file's OOD decision refuses the held-out dermoscopy, per source."""
    d = ood.onnx_distances(path, held_out, steps, masks_dir)
    t = block["threshold"]
    by_source = ood.refusal_by_source(d, [s.source for s in held_out], t)
    print(f"OOD: {np.mean(d > t):.2%} of {len(d)} held-out images over the threshold {t:.1f}")
    return {
        "false_refusal": float(np.mean(d > t)),
        "false_refusal_by_source": by_source,
        "distance_quantiles": {q: float(np.quantile(d, float(q))) for q in ("0.5", "0.9", "0.99")},
    }


def _probs(logits: np.ndarray, task: str) -> np.ndarray:
    if task == "classification":
        return metrics.softmax(logits)
    return 1 / (1 + np.exp(-logits.astype(np.float64)))


def export(
    ckpt_path: Path,
    out_dir: Path,
    name: str,
    version: str,
    reference_images: list[Path],
    data_root: str = "",
    int8: bool = True,
    parity_images: int = 32,
    calib_images: int = 64,
    allow_int8_drift: bool = False,
    eval_split: str = "val",
) -> list[Path]:
    """Export float32 (and int8) ONNX + manifests + reference outputs; returns manifest paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, ckpt, cfg = load_checkpoint(ckpt_path)
    if data_root:
        cfg.data.root = data_root
    run_dir = Path(ckpt_path).parent
    if (run_dir / "split.csv").exists():
        cfg.data.split_file = str(run_dir / "split.csv")
    task, size, steps = cfg.task, cfg.data.image_size, ckpt["steps"]
    is_cls = task == "classification"
    samples = load_samples(cfg)
    assign = split_samples(cfg, samples, None)
    held_out = select(samples, assign, eval_split)
    train_set = select(samples, assign, "train")
    calib_set = select(samples, assign, "calib")
    if not held_out:
        raise ExportError(f"the {eval_split} split is empty: nothing to check the export on")
    masks_dir = lesion_masks_dir(cfg)

    def inputs(subset: list) -> list[np.ndarray]:
        return [model_input(s, steps, masks_dir) for s in subset]

    rng = np.random.default_rng(0)
    parity_set = [held_out[i] for i in rng.permutation(len(held_out))[:parity_images]]
    parity_x = inputs(parity_set)
    f32 = out_dir / f"{name}-f32.onnx"
    ood_block = None
    if is_cls:
        # The classifier carries its own out-of-distribution distance (ood.py).
        # Its threshold is chosen on the calib split, or on the evaluation split of a run
        # without one (as the melanoma operating point is); the manifest says which.
        ood_split = "calib" if calib_set else eval_split
        ood_set = calib_set or held_out
        wrapped, ood_block = ood.fit_for_export(model, train_set, ood_set, steps, masks_dir)
        ood_block["threshold_split"] = ood_split
        export_onnx(wrapped, size, f32, ["logits", ood.OUTPUT])
        with torch.no_grad():
            outs = [wrapped(torch.from_numpy(x)) for x in parity_x]
        wrapped.remove_hook()
        torch_out = np.concatenate([o[0].numpy() for o in outs])
        check_ood_parity(f32, parity_x, np.concatenate([o[1].numpy() for o in outs]))
    else:
        export_onnx(model, size, f32, "logits")
        with torch.no_grad():
            torch_out = np.concatenate([model(torch.from_numpy(x)).numpy() for x in parity_x])

    # Parity: PyTorch vs onnxruntime on held-out images.
    ort_f32 = onnx_logits_fn(f32)
    ort_out = np.concatenate([ort_f32(x) for x in parity_x])
    diff = float(np.abs(_probs(torch_out, task) - _probs(ort_out, task)).max())
    if diff >= FLOAT_TOLERANCE:
        raise ExportError(
            f"{f32}: PyTorch and onnxruntime probabilities differ by {diff:.2e} "
            f"(limit {FLOAT_TOLERANCE:g})"
        )
    print(f"parity float32: max |dp| = {diff:.2e} over {len(parity_x)} images")
    variants = [("float32", f32, {"max_abs_diff_vs_pytorch": diff})]

    if int8:
        q = out_dir / f"{name}-int8.onnx"
        quant_set = [train_set[i] for i in rng.permutation(len(train_set))[:calib_images]]
        quantize_int8(f32, q, inputs(quant_set), ood_nodes(f32) if is_cls else [])
        q_out = np.concatenate([onnx_logits_fn(q)(x) for x in parity_x])
        if is_cls:
            agreement = float(np.mean(q_out.argmax(1) == ort_out.argmax(1)))
            what = "argmax agreement"
        else:
            agreement = float(np.mean((q_out > 0) == (ort_out > 0)))
            what = "mask agreement"
        print(f"parity int8: {what} {agreement:.4f} over {len(parity_x)} images")
        if agreement < INT8_MIN_AGREEMENT and not allow_int8_drift:
            raise ExportError(
                f"{q}: int8 {what} with float is {agreement:.2%} "
                f"(< {INT8_MIN_AGREEMENT:.0%}); calibrate on more images or ship "
                "float32 only"
            )
        variants.append(("int8", q, {what.replace(" ", "_") + "_vs_float32": agreement}))

    ref_dir = out_dir / "reference" / name
    ref_dir.mkdir(parents=True, exist_ok=True)
    manifests = []
    for precision, path, parity in variants:
        fn = onnx_logits_fn(path)
        eval_dir = run_dir / "export-eval" / path.stem  # figures stay with the run
        temperature = float(ckpt.get("temperature", 1.0))
        if is_cls:
            # The melanoma operating point comes from the calib split where the run has one,
            # so the figures at it are measured on images it was not chosen on.
            mel_threshold = None
            if calib_set:
                crep = evaluate_classification(
                    fn,
                    calib_set,
                    steps,
                    temperature,
                    eval_dir / "calib",
                    tta=cfg.train.tta,
                    masks_dir=masks_dir,
                )
                mel_threshold = crep["melanoma"]["threshold"]
            rep = evaluate_classification(
                fn,
                held_out,
                steps,
                temperature,
                eval_dir,
                tta=cfg.train.tta,
                masks_dir=masks_dir,
                mel_threshold=mel_threshold,
            )
            summary = {
                k: rep[k]
                for k in (
                    "n",
                    "balanced_accuracy",
                    "balanced_accuracy_ci95",
                    "accuracy",
                    "mean_auc",
                    "ece",
                )
            }
            summary["melanoma"] = rep["melanoma"]
            summary["per_class"] = rep["per_class"]
        else:
            rep = evaluate_segmentation(fn, held_out, steps, eval_dir)
            summary = {k: v for k, v in rep.items() if k != "per_image"}
        summary["split"] = eval_split
        summary["parity"] = parity
        manifest = _manifest(
            cfg, ckpt, name, version, precision, path, steps, summary, rep, train_set
        )
        if ood_block is not None:
            manifest["ood"] = dict(ood_block)
            manifest["ood"]["threshold"] = ood.threshold_for(
                path, ood_set, steps, masks_dir, ood_block
            )
            summary["ood"] = ood_metrics(path, held_out, steps, masks_dir, manifest["ood"])
        manifest["reference"] = f"{path.stem}.reference.json"
        write_reference(path, fn, reference_images, steps, ref_dir, out_dir, task)
        manifest = metrics.json_safe(manifest)
        validate_manifest(manifest)
        mpath = path.with_suffix(".json")
        mpath.write_text(json.dumps(manifest, indent=2, allow_nan=False) + "\n")
        manifests.append(mpath)
        key = "balanced_accuracy" if is_cls else "thresholded_jaccard"
        print(f"wrote {mpath}: {key} {summary[key]:.4f} on {summary['n']} {eval_split} images")
    return manifests


def _manifest(cfg, ckpt, name, version, precision, path, steps, summary, rep, train_set) -> dict:
    size = cfg.data.image_size
    is_cls = cfg.task == "classification"
    counts = {}
    for s in train_set:
        key = CLASSES[s.label] if is_cls else "pairs"
        counts[key] = counts.get(key, 0) + 1
    m = {
        "schema_version": 1,
        "name": name,
        "version": version,
        "task": cfg.task,
        "architecture": cfg.model.arch,
        "precision": precision,
        "file": path.name,
        "sha256": sha256(path),
        "opset": OPSET,
        "input": {
            "name": "input",
            "shape": [1, 3, size, size],
            "layout": "NCHW",
            "color": "RGB",
            "dtype": "float32",
        },
        "preprocessing": steps,
        "output": {
            "name": "logits",
            "shape": [1, len(CLASSES)] if is_cls else [1, 1, size, size],
            "kind": "logits",
            "activation": "softmax" if is_cls else "sigmoid",
        },
        "license": WEIGHTS_LICENSE,
        "training": {
            "data": f"{cfg.data.root} ({cfg.data.layout} layout)",
            "data_license": DATA_LICENSES["default"],
            "images": counts,
            "config": cfg.to_dict(),
            "trainer_version": __version__,
        },
        "metrics": summary,
        "created": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if is_cls:
        m["classes"] = list(CLASSES)
        split = ckpt.get("temperature_split", "val")
        m["calibration"] = {
            "temperature": float(ckpt.get("temperature", 1.0)),
            "fitted_on": f"{'calibration' if split == 'calib' else 'validation'} split, NLL",
        }
        m["tta"] = {"horizontal_flip": bool(cfg.train.tta)}
        mel = rep["melanoma"]
        threshold = mel["threshold"] if np.isfinite(mel["threshold"]) else 0.5
        m["decision"] = {
            "melanoma_threshold": float(threshold),
            "melanoma_target_specificity": float(mel["target_specificity"]),
        }
    else:
        m["decision"] = {"mask_threshold": 0.5}
    return m


def write_reference(
    model_path: Path, fn, images: list[Path], steps: list, ref_dir: Path, out_dir: Path, task: str
) -> None:
    """Reference inputs (exact uint8 PNGs before normalize) and onnxruntime outputs."""
    cases = []
    norm = steps[-1]
    dist = onnx_logits_fn(model_path, output=1) if task == "classification" else None
    for image in images:
        img = load_rgb(Path(image))
        # Lesion crops need the segmenter's mask; references cover the mask-free steps.
        pre = preprocess.apply_steps(img, steps, None, stop_before="normalize")
        png = ref_dir / f"{Path(image).stem}.png"
        Image.fromarray(pre).save(png)
        x = preprocess.normalize(pre, norm["mean"], norm["std"])
        logits = fn(x)
        case = {
            "image": Path(image).name,
            "input": str(png.relative_to(out_dir)),
            "output_shape": list(logits.shape),
        }
        if task == "classification":
            case["output"] = [float(v) for v in logits.ravel()]
            case["ood_distance"] = float(dist(x).ravel()[0])
        else:
            stride = 8
            case["output_stride"] = stride
            case["output"] = [float(v) for v in logits[0, 0, ::stride, ::stride].ravel()]
            case["mask_fraction"] = float((logits > 0).mean())
            mask_png = ref_dir / f"{Path(image).stem}.{model_path.stem}.mask.png"
            Image.fromarray(((logits[0, 0] > 0) * 255).astype(np.uint8)).save(mask_png)
            case["mask"] = str(mask_png.relative_to(out_dir))
        cases.append(case)
    doc = {
        "model": model_path.name,
        "sha256": sha256(model_path),
        "tolerance": {"probability_max_abs_diff": FLOAT_TOLERANCE, "int8_mask_agreement": 0.99},
        "cases": cases,
    }
    model_path.with_suffix(".reference.json").write_text(json.dumps(doc, indent=1) + "\n")
