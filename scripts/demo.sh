#!/usr/bin/env bash
# The trainer end to end at small CPU settings: train the classifier and the segmenter on
# ../shared/data (or DATA=...), export float32 + int8 ONNX with manifests and reference
# outputs into runs/demo/models, and print their metrics. A few minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
DATA="${DATA:-../shared/data}"
OUT="${OUT:-runs/demo}"
if [ ! -f "$DATA/cls/labels.csv" ] || [ ! -f "$DATA/seg/pairs.csv" ]; then
    echo "demo: no dataset at $DATA (want cls/labels.csv and seg/pairs.csv); set DATA=..." >&2
    exit 2
fi
refs=(tests/samples/ISIC_0001100.jpg tests/samples/ISIC_0000900.jpg tests/samples/ISIC_0011593.jpg)
for task in classifier segmenter; do
    dermaedge-train train --config "trainer/configs/cpu-small-$task.yaml" \
        --set "data.root=$DATA" --out "$OUT/$task"
    dermaedge-train export "$OUT/$task/best.pt" --out "$OUT/models" --name "$task" \
        --version 0.0.0-demo --reference "${refs[@]}" --allow-int8-drift
done
python - "$OUT/models" <<'PY'
import json, sys, pathlib
for m in sorted(pathlib.Path(sys.argv[1]).glob("*-*.json")):
    if m.name.endswith(".reference.json"):
        continue
    d = json.loads(m.read_text())
    keys = ("balanced_accuracy", "ece") if d["task"] == "classification" else (
        "thresholded_jaccard", "dice")
    print(f"{m.name:24s} " + "  ".join(f"{k} {d['metrics'][k]:.3f}" for k in keys)
          + f"  parity {d['metrics']['parity']}")
PY
