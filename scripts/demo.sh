#!/usr/bin/env bash
# The whole chain in the miniature world, on the CPU, through the real CLIs:
# generate -> label -> inspect -> precompute -> train (MaPO) -> eval -> run report.
# The base model is the built-in shapes-sdxl (pretrained on the world, committed): plain prompts
# give the default look; the Pick-Style pairs teach it the cartoon look, and the world's judges
# measure how far it went on captions it never saw.
# Usage: scripts/demo.sh [OUTPUT_DIR]   (`make demo` runs it inside the project's venv)
# Rerunning resumes: finished stages are skipped, training and eval restart (--overwrite).
set -euo pipefail
OUT=${1:-demo-output}
HERE="$(cd "$(dirname "$0")/.." && pwd)"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
# Tiny models on a few cores: one thread per process avoids torch's thread contention.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT/prompts"
: > "$OUT/commands.txt"

run() {
    { printf '+'; printf ' %q' "$@"; printf '\n'; } | tee -a "$OUT/commands.txt"
    "$@"
}
# Low guidance keeps prompt following after training (README, "The miniature world"); batch
# invariance (bit-identical images whatever the batch) would cost ~4x here.
GEN=(--model shapes-sdxl --resolution 64 --num-inference-steps 12 --guidance-scale 3 --no-batch-invariant)

echo "== 0. the world's captions: 48 to make pairs from (x2), 12 held out for evaluation"
run python -m world captions --split train --repeat 2 --output "$OUT/prompts/train.txt"
run python -m world captions --split heldout --output "$OUT/prompts/heldout.txt"

echo "== 1. generate Pick-Style pairs with shapes-sdxl: image 0 with 'Disney style animated image.', image 1 plain"
run mapo-data generate --prompts "$OUT/prompts/train.txt" --keep-duplicates --output "$OUT/pairs" \
    --recipe style --style cartoon "${GEN[@]}" --shard-size 48 --batch-size 16

echo "== 2. label them (the styled image is chosen; the world's style judge verifies it) and look at the data"
run mapo-data label --input "$OUT/pairs" --output "$OUT/pick-style" --target style --verify world-style
run mapo-data inspect "$OUT/pick-style" --html "$OUT/pick-style.html"

echo "== 3. precompute VAE latents and text embeddings"
run mapo-data precompute --input "$OUT/pick-style" --output "$OUT/latents" --model shapes-sdxl --resolution 64

echo "== 4. train with MaPO (full UNet fine-tune); validation on held-out captions, scored by the world's judges"
run mapo-train --data "$OUT/latents" --model shapes-sdxl --output-dir "$OUT/run" --objective mapo \
    --max-steps 300 --batch-size 8 --learning-rate 2e-4 --checkpointing-steps 100 --validation-steps 100 \
    --validation-prompts "a red circle at the top left" --validation-prompts "a blue square at the bottom left" \
    --validation-prompts "a yellow triangle at the top right" --validation-inference-steps 12 --validation-guidance-scale 3 \
    --validation-metrics world-style,world-prompt --validation-style cartoon --overwrite

echo "== 5. evaluate the trained model against its base on the held-out captions (paired seeds)"
run mapo-eval --candidate "$OUT/run" --prompts "$OUT/prompts/heldout.txt" --output "$OUT/eval" \
    --metrics world-style,world-prompt --style cartoon "${GEN[@]:2}" --seeds 4 --batch-size 24 --overwrite

echo "== 6. run report"
python "$HERE/scripts/demo_report.py" "$OUT"
echo "evaluation report: $OUT/eval/report.html"
echo "demo finished: outputs in $OUT"
