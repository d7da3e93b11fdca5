#!/usr/bin/env bash
# Issue-5 accuracy sessions 4a and 4b (one call of the device tool each on a 2-GPU host, ~5-8 min). After 32
# trainings at chance (runs 1-3), a CPU probe (results/cpu_probe_glyph_size_2026-11-28) showed that the
# attention-pool head cannot learn count_plus even from raw pixel patches when the default 5 px glyph sits in a
# 16 px patch at 128 px, but learns it with 13 px glyphs (the glyph-to-patch ratio of the 512 px default). So:
# the smolvlm tower at 128 px (8x8 patches; model.input_size, interpolated position embeddings),
# data.glyph_size=13, count_plus, full fine-tuning from random init, batch 64, 8 epochs of 32k images
# (4096 steps, val on 1024 images after each epoch), warm-up 500, stopped gracefully by trainer.max_time if
# late. Every (recipe, seed, factor) cell is its own process; cells alternate between the GPUs and all run at once.
#   RUN=4a: the recipes lr 1e-4 / tower 1e-4 and lr 3e-4 / tower 1e-4, seed 0, with PyTorch's own SDPA
#     choice (cuDNN on Hopper; task.attention_backend=auto): 5 of 8 cells died of NaN gradients.
#     (As run, from this script's first version: recipe i on GPU i, 3 data workers per cell.)
#   RUN=4b (default): lr 1e-4 / tower 1e-4, seeds 0, 1, 2, with the train task's default SDPA set
#     (task.attention_backend=no_cudnn); first runs sdpa_nan_check.py (seconds) on GPU 0.
# Results are tarred into $OUT/results.tgz at the end.
# Usage on the host (after installing the hydra/omegaconf wheels):  OUT=/tmp/out bash gpu_session_glyph13.sh
# CPU dry run of the plumbing:  SMOKE=1 OUT=/tmp/out bash experiments/training/gpu_session_glyph13.sh
# shellcheck source=session_env.sh
source "$(dirname "$0")/session_env.sh"
MODEL=smolvlm
RUN=${RUN:-4b}
FACTORS=(1 2 4 8)
MAX_TIME=${MAX_TIME:-00:00:07:30}
COMMON=(--set task.compile=false --set data.task=count_plus --set data.glyph_size=13 --set model.input_size=128
        --set data.train_size=32768 --set data.val_size=1024 --set data.num_workers=2 --set trainer.max_epochs=8
        --set task.warmup_steps=500 --set trainer.max_time=$MAX_TIME)
if [ "$RUN" = 4a ]; then
  COMMON+=(--set task.attention_backend=auto)
  CELLS=("lr1e-4 0 --set task.lr=1e-4 --set task.tower_lr=1e-4" "lr3e-4 0 --set task.lr=3e-4 --set task.tower_lr=1e-4")
else
  CELLS=("lr1e-4 0 --set task.lr=1e-4 --set task.tower_lr=1e-4" "lr1e-4 1 --set task.lr=1e-4 --set task.tower_lr=1e-4"
         "lr1e-4 2 --set task.lr=1e-4 --set task.tower_lr=1e-4")
fi
if [ -n "${SMOKE:-}" ]; then
  MODEL=smolvlm_debug
  COMMON=(--set task.compile=false --set data.task=count_plus --set data.val_size=16 --set task.batch_size=8
          --set trainer.accelerator=cpu --set trainer.max_epochs=1 --set model.input_size=64 --set data.train_size=32
          --set data.num_workers=0 --set data.glyph_size=5 --set trainer.max_time=$MAX_TIME)
fi
nvidia-smi --query-gpu=index,name,memory.total --format=csv > "$W/gpus.csv" 2>/dev/null
"$PY" -c "import torch, lightning; print('torch', torch.__version__, 'cudnn', torch.backends.cudnn.version(), 'lightning', lightning.__version__)" > "$W/versions.txt"
if [ "$RUN" = 4b ] && [ -z "${SMOKE:-}" ]; then
  CUDA_VISIBLE_DEVICES=0 "$PY" "$R/experiments/training/sdpa_nan_check.py" --out "$W/sdpa_nan_check.json" > "$W/sdpa_nan_check.log" 2>&1
fi
t0=$(date +%s)
pids=(); i=0
for cell in "${CELLS[@]}"; do
  read -r name seed recipe <<< "$cell"
  for f in "${FACTORS[@]}"; do
    (
      export CUDA_VISIBLE_DEVICES=$(( i % 2 ))
      # shellcheck disable=SC2086
      "$PY" "$R/experiments/training/accuracy_vs_tokens.py" --model $MODEL --factors "$f" --seeds "$seed" "${COMMON[@]}" \
        $recipe --out "$W/$name" > "$W/${name}_s${seed}_f$f.log" 2>&1
      echo "$name seed $seed f$f (GPU $(( i % 2 ))) done $(( $(date +%s) - t0 ))s" >> "$W/timeline.txt"
    ) &
    pids+=($!); i=$(( i + 1 ))
    if [ -n "${SMOKE:-}" ]; then wait "$!"; pids=(); fi
  done
done
for p in "${pids[@]}"; do wait "$p"; done
nvidia-smi > "$W/nvidia-smi.txt" 2>/dev/null
for name in $(printf '%s\n' "${CELLS[@]}" | cut -d' ' -f1 | sort -u); do  # one table and plot per recipe
  "$PY" "$R/experiments/training/accuracy_vs_tokens.py" --model $MODEL --summary-only --out "$W/$name" > "$W/${name}_summary.log" 2>&1
done
(cd "$W" && tar czf "$OUT/results.tgz" --exclude='*.ckpt' --exclude='checkpoints' .)
cat "$W/timeline.txt"; cat "$W"/lr*/results.md 2>/dev/null | grep '^|'; grep -c "'dq': 0, 'dk': 0, 'dv': 0" "$W/sdpa_nan_check.log" 2>/dev/null
grep -v "'dq': 0, 'dk': 0, 'dv': 0" "$W/sdpa_nan_check.log" 2>/dev/null | head -20
