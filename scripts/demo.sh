#!/usr/bin/env bash
# The whole chain on the built-in tiny models, on the CPU, from the bundled prompts.
# Usage: scripts/demo.sh [OUTPUT_DIR]   (make demo runs it inside the project's venv)
set -euo pipefail
OUT=${1:-demo-output}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
mkdir -p "$OUT"
PROMPTS="$(dirname "$0")/../examples/prompts.txt"

echo "== generate: Pick-Style pairs (cartoon preferred) with tiny-sdxl"
mapo-data generate --model tiny-sdxl --prompts "$PROMPTS" --output "$OUT/pairs" \
    --recipe style --style cartoon --num-inference-steps 4 --resolution 64 --shard-size 8 --batch-size 4

echo "demo finished: outputs in $OUT"
