#!/usr/bin/env bash
# The whole chain on the built-in tiny models, on the CPU, from the bundled prompts:
# generate -> label -> inspect -> precompute -> train (MaPO) -> eval -> run report.
# Usage: scripts/demo.sh [OUTPUT_DIR]   (`make demo` runs it inside the project's venv)
# Rerunning resumes: finished stages are skipped, training restarts (--overwrite).
set -euo pipefail
OUT=${1:-demo-output}
HERE="$(cd "$(dirname "$0")/.." && pwd)"
PROMPTS="$HERE/examples/prompts.txt"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
# Tiny models on a few cores: one thread per process avoids torch's thread contention.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT"
: > "$OUT/commands.txt"

run() {
    { printf '+'; printf ' %q' "$@"; printf '\n'; } | tee -a "$OUT/commands.txt"
    "$@"
}

echo "== 1. generate Pick-Style pairs (cartoon preferred) with tiny-sdxl"
run mapo-data generate --model tiny-sdxl --prompts "$PROMPTS" --output "$OUT/pairs" \
    --recipe style --style cartoon --num-inference-steps 4 --resolution 64 --shard-size 8 --batch-size 4

echo "== 2. label them (the styled image is chosen) and look at the data"
run mapo-data label --input "$OUT/pairs" --output "$OUT/pick-style" --target style
run mapo-data inspect "$OUT/pick-style" --html "$OUT/pick-style.html"

echo "== 3. precompute VAE latents and text embeddings"
run mapo-data precompute --input "$OUT/pick-style" --output "$OUT/latents" --model tiny-sdxl --resolution 64

echo "== 4. train with MaPO (full UNet fine-tune)"
run mapo-train --data "$OUT/latents" --model tiny-sdxl --output-dir "$OUT/run" --objective mapo \
    --max-steps 300 --batch-size 4 --learning-rate 1e-3 --checkpointing-steps 100 --validation-steps 100 \
    --validation-prompts "a cat sitting on a windowsill in the afternoon sun" \
    --validation-prompts "a lighthouse on a rocky coast at dusk" --validation-inference-steps 4 \
    --validation-metrics style,clip --validation-style cartoon --validation-tiny-scorers --overwrite

echo "== 5. evaluate the trained model against its base (tiny random scorers)"
run mapo-eval --candidate "$OUT/run" --prompts "$PROMPTS" --output "$OUT/eval" \
    --metrics aesthetic,hps,pickscore,clip,style,safety --style cartoon --tiny-scorers \
    --num-inference-steps 4 --resolution 64 --seeds 2 --overwrite

echo "== 6. run report"
python "$HERE/scripts/demo_report.py" "$OUT"
echo "evaluation report: $OUT/eval/report.html"
echo "demo finished: outputs in $OUT"
