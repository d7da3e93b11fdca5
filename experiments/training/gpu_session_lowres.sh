#!/usr/bin/env bash
# The second issue-5 accuracy session on a 4-GPU host (one call of the device tool; ~7 min), after the first
# (gpu_session_4gpu.sh) showed that from random init nothing leaves chance at 512 px within 1000 steps:
# the same smolvlm tower fed smaller frames (model.input_size, position embeddings interpolated), where the
# patch grid is 8x8 (128 px) or 16x16 (256 px), on the fine task `count_plus`. GPU i runs factor F_i:
#   RECIPE=a (run 2): the accuracy script's defaults of that day (lr 1e-3 connector + head, 3e-4 tower, 100 warm-up
#     steps; set explicitly here since the defaults changed);
#     128 px seeds 0 and 1 (3 epochs of 64k images, 3072 steps), then 256 px seed 0 (3 epochs of 32k)
#   RECIPE=b (run 3): DeiT-scaled learning rates for a from-scratch ViT at batch 64 (lr 2e-4, tower
#     5e-5, 500 warm-up steps); 128 px count_plus (3072 steps), 128 px `count` (1 epoch), 256 px count_plus
#   RECIPE=c (default; prepared, never run: superseded by gpu_session_glyph13.sh, which found the cause): lr 1e-4 for connector + head and tower, 500 warm-up steps
#     (the CPU diagnosis' setting that leaves chance); 128 px count_plus, 5 epochs of 64k images (5120 steps),
#     seeds 0 and 1 (~3.5 min each at ~1700 images/s per H100)
# Results are tarred into $OUT/results.tgz after every phase.
# Usage on the host (after installing the hydra/omegaconf wheels):  OUT=/tmp/out bash gpu_session_lowres.sh
# CPU dry run of the plumbing:  SMOKE=1 OUT=/tmp/out bash experiments/training/gpu_session_lowres.sh
set -u
R=$(cd "$(dirname "$0")/../.." && pwd)
W=/tmp/vtlab_gpu_session; rm -rf "$W"; mkdir -p "$W" "$OUT"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
PY=${PYTHON:-python3}
MODEL=smolvlm
FACTORS=(1 2 4 8)
COMMON=(--set task.compile=false --set data.task=count_plus --set data.val_size=2048 --set data.num_workers=14
        --set trainer.max_epochs=3 --set data.glyph_size=null)  # the default glyph (5 px at 128-256 px), as run
RECIPE=${RECIPE:-c}
if [ "$RECIPE" = a ]; then
  COMMON+=(--set task.lr=1e-3 --set task.tower_lr=3e-4 --set task.warmup_steps=100)
elif [ "$RECIPE" = b ]; then
  COMMON+=(--set task.lr=2e-4 --set task.tower_lr=5e-5 --set task.warmup_steps=500)
elif [ "$RECIPE" = c ]; then
  COMMON+=(--set task.lr=1e-4 --set task.tower_lr=1e-4 --set task.warmup_steps=500 --set trainer.max_epochs=5)
fi
P128=(--set model.input_size=128 --set data.train_size=65536)
P128C=(--set model.input_size=128 --set data.train_size=65536 --set data.task=count --set trainer.max_epochs=1)
P256=(--set model.input_size=256 --set data.train_size=32768)
if [ -n "${SMOKE:-}" ]; then
  MODEL=smolvlm_debug
  COMMON=(--set task.compile=false --set data.task=count_plus --set data.val_size=16 --set task.batch_size=8
          --set trainer.accelerator=cpu --set trainer.max_epochs=1 --set data.glyph_size=null)
  P128=(--set model.input_size=32 --set data.train_size=32)
  P256=(--set model.input_size=64 --set data.train_size=32)
  P128C=(--set model.input_size=32 --set data.train_size=32 --set data.task=count)
fi
pack() { (cd "$W" && tar czf "$OUT/results.tgz" --exclude='*.ckpt' --exclude='checkpoints' . 2>/dev/null); }
nvidia-smi --query-gpu=index,name,memory.total --format=csv > "$W/gpus.csv" 2>/dev/null
"$PY" -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)" > "$W/versions.txt"
t0=$(date +%s)
acc() {  # acc <name> <factor> <seeds> <args...>
  local name=$1 f=$2 seeds=$3; shift 3
  "$PY" "$R/experiments/training/accuracy_vs_tokens.py" --model $MODEL --factors "$f" --seeds "$seeds" "${COMMON[@]}" "$@" \
    --out "$W/$name" > "$W/${name}_f$f.log" 2>&1
  echo "recipe $RECIPE: $name f$f seeds $seeds done $(( $(date +%s) - t0 ))s" >> "$W/timeline.txt"
}
pids=()
for i in "${!FACTORS[@]}"; do
  f=${FACTORS[$i]}
  (
    export CUDA_VISIBLE_DEVICES=$i
    if [ "$RECIPE" = a ]; then
      acc px128 "$f" 0 "${P128[@]}"; acc px128 "$f" 1 "${P128[@]}"; acc px256 "$f" 0 "${P256[@]}"
    elif [ "$RECIPE" = c ]; then
      acc px128 "$f" 0 "${P128[@]}"; acc px128 "$f" 1 "${P128[@]}"
    else
      acc px128 "$f" 0 "${P128[@]}"; acc px128_count "$f" 0 "${P128C[@]}"; acc px256 "$f" 0 "${P256[@]}"
    fi
  ) &
  pids+=($!)
  if [ -n "${SMOKE:-}" ]; then wait "$!"; pids=(); fi
done
for p in "${pids[@]}"; do wait "$p"; pack; done
for name in px128 px128_count px256; do  # rebuild each table and plot over all factors (finished cells are skipped)
  "$PY" "$R/experiments/training/accuracy_vs_tokens.py" --model $MODEL --summary-only --out "$W/$name" \
    > "$W/${name}_summary.log" 2>&1
done
pack
cat "$W/timeline.txt"; cat "$W"/px*/results.md 2>/dev/null | grep '^|'
