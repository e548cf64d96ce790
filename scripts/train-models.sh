#!/usr/bin/env bash
# Train the classifier and the segmenter and export them (float32 + int8 ONNX, manifests,
# reference outputs) into one models folder.
#
#   scripts/train-models.sh                   # cpu-small configs -> runs/demo/models (~2 min, 2 cores)
#   PROFILE=dev OUT=runs/dev VERSION=0.1.0-dev MODELS=models scripts/train-models.sh
#                                             # the development models committed in models/
#
# PROFILE picks trainer/configs/$PROFILE-{classifier,segmenter}.yaml; DATA the dataset root.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
DATA="${DATA:-../shared/data}"
PROFILE="${PROFILE:-cpu-small}"
OUT="${OUT:-runs/demo}"
MODELS="${MODELS:-$OUT/models}"
VERSION="${VERSION:-0.0.0-demo}"
if [ ! -f "$DATA/cls/labels.csv" ] || [ ! -f "$DATA/seg/pairs.csv" ]; then
    echo "train-models: no dataset at $DATA (want cls/labels.csv and seg/pairs.csv); set DATA=..." >&2
    exit 2
fi
refs=(tests/samples/ISIC_0001100.jpg tests/samples/ISIC_0000900.jpg tests/samples/ISIC_0011593.jpg)
for task in segmenter classifier; do
    dermaedge-train train --config "trainer/configs/$PROFILE-$task.yaml" \
        --set "data.root=$DATA" --out "$OUT/$task"
    dermaedge-train export "$OUT/$task/best.pt" --out "$MODELS" --name "$task" \
        --version "$VERSION" --reference "${refs[@]}" --allow-int8-drift
done
python - "$MODELS" <<'PY'
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
