#!/usr/bin/env bash
# Train the classifier and the segmenter and export them (float32 + int8 ONNX, manifests,
# reference outputs) into one models folder.
#
#   scripts/train-models.sh                   # cpu-small configs -> runs/demo/models (~2 min, 2 cores)
#   PROFILE=cpu VERSION=1.0.0 MODELS=models scripts/train-models.sh
#                                             # the shipped models: the 2-core CPU recipe,
#                                             # classifier 140 min, segmenter 25 min, runs in ~/.cache/dermaedge/runs/cpu
#   PROFILE=dev OUT=runs/dev VERSION=0.1.0-dev MODELS=models scripts/train-models.sh
#                                             # the development models (0.1.0-dev)
#
# PROFILE picks trainer/configs/$PROFILE-{classifier,segmenter}.yaml; DATA the dataset root.
# Interrupted? Run the same command again: an unfinished run resumes from its last.pt (at
# most train.checkpoint_minutes of work lost); a finished run (finished.json) is not trained
# again, only exported. Never train beside a cargo build: it runs 4-6x slower.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
DATA="${DATA:-../shared/data}"
PROFILE="${PROFILE:-cpu-small}"
if [ "$PROFILE" = cpu ]; then
    OUT="${OUT:-$HOME/.cache/dermaedge/runs/cpu}"
else
    OUT="${OUT:-runs/demo}"
fi
MODELS="${MODELS:-$OUT/models}"
VERSION="${VERSION:-0.0.0-demo}"
TASKS="${TASKS:-classifier segmenter}"
if [ ! -f "$DATA/cls/labels.csv" ] || [ ! -f "$DATA/seg/pairs.csv" ]; then
    echo "train-models: no dataset at $DATA (want cls/labels.csv and seg/pairs.csv); set DATA=..." >&2
    exit 2
fi
refs=(tests/samples/ISIC_0001100.jpg tests/samples/ISIC_0000900.jpg tests/samples/ISIC_0011593.jpg)
for task in $TASKS; do
    run="$OUT/$task"
    if [ -f "$run/finished.json" ]; then
        echo "== $task: $run/best.pt is finished; exporting it"
    else
        resume=()
        [ -f "$run/last.pt" ] && resume=(--resume) && echo "== $task: resuming $run"
        dermaedge-train train --config "trainer/configs/$PROFILE-$task.yaml" \
            --set "data.root=$DATA" --out "$run" "${resume[@]}"
    fi
    dermaedge-train export "$run/best.pt" --out "$MODELS" --name "$task" \
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
