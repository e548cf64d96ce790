"""Bare onnxruntime inference time of the shipped models, for the ratio in scripts/bench.sh.

Usage: python scripts/ort_bench.py MODELS_DIR PRECISION THREADS ITERATIONS IMAGE
Prints one JSON object: median milliseconds of the segmenter and of one classifier run.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from dermaedge_train import preprocess


def main() -> None:
    models, precision, threads, iterations, image = sys.argv[1:6]
    suffix = {"float32": "f32", "int8": "int8"}[precision]
    frame = np.asarray(Image.open(image).convert("RGB").resize((1280, 960), Image.BILINEAR))
    out = {"precision": precision, "threads": int(threads), "onnxruntime": ort.__version__}
    for name in ("segmenter", "classifier"):
        manifest = json.loads((Path(models) / f"{name}-{suffix}.json").read_text())
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(Path(models) / manifest["file"]), opts,
                                    providers=["CPUExecutionProvider"])
        x = preprocess.apply_steps(frame, manifest["preprocessing"])
        feed = {sess.get_inputs()[0].name: x}
        times = []
        for i in range(int(iterations) + 2):
            t = time.perf_counter()
            sess.run(None, feed)
            if i >= 2:
                times.append((time.perf_counter() - t) * 1e3)
        out[f"{name}_bare_ms"] = float(np.median(times))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
