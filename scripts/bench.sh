#!/usr/bin/env bash
# The analysis benchmark: tract pipeline vs onnxruntime on the same models, float32 and int8,
# 1 and 2 threads. Prints a Markdown table (the README's) and writes runs/bench/*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
MODELS="${MODELS:-models}"
ITER="${ITER:-20}"
IMAGE=tests/samples/ISIC_0001100.jpg
mkdir -p runs/bench
cargo build --release --quiet
bin="$CARGO_TARGET_DIR/release/dermaedge"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "binary: $(du -k "$bin" | cut -f1) KiB stripped (release profile)"
echo
echo "| precision | threads | load ms | decode | quality | segment | lesion | classify | measure | pipeline p50 | p90 | peak RSS MB | ORT bare (seg + cls x runs) | pipeline / ORT bare | tract/ORT seg | tract/ORT cls |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for precision in float32 int8; do
    for threads in 1 2; do
        t=runs/bench/tract-$precision-$threads.json
        o=runs/bench/ort-$precision-$threads.json
        "$bin" bench --models "$MODELS" --precision "$precision" --threads "$threads" \
            --iterations "$ITER" --image "$IMAGE" > "$t"
        python scripts/ort_bench.py "$MODELS" "$precision" "$threads" "$ITER" "$IMAGE" > "$o"
        python - "$t" "$o" <<'PY'
import json, sys
t = json.load(open(sys.argv[1])); o = json.load(open(sys.argv[2]))
m = t["median"]; runs = t["classifier_runs_per_frame"]
ort_bare = o["segmenter_bare_ms"] + runs * o["classifier_bare_ms"]
print(f"| {t['precision']} | {t['threads']} | {t['load_ms']:.0f} | {m['decode_ms']:.1f} | "
      f"{m['quality_ms']:.1f} | {m['segment_ms']:.1f} | {m['lesion_ms']:.1f} | "
      f"{m['classify_ms']:.1f} | {m['measure_ms']:.1f} | {m['total_ms']:.1f} | "
      f"{t['p90_total_ms']:.1f} | {t['peak_rss_mb']:.0f} | {ort_bare:.1f} | "
      f"{m['total_ms'] / ort_bare:.2f} | {t['segmenter_bare_ms'] / o['segmenter_bare_ms']:.2f} | "
      f"{t['classifier_bare_ms'] / o['classifier_bare_ms']:.2f} |")
PY
    done
done
echo
echo "Where tract spends the bare inference time (1 thread, ms per run, top operators):"
for precision in float32 int8; do
    python - runs/bench/tract-$precision-1.json <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))
for model in ("segmenter", "classifier"):
    ops = ", ".join(f"{o['op']} {o['ms']:.1f} ({o['nodes']})" for o in t[f"{model}_ops"])
    print(f"- {t['precision']} {model} ({t[model + '_bare_ms']:.1f} ms): {ops}")
PY
done
