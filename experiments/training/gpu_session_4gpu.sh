#!/usr/bin/env bash
# The issue-5 accuracy + DDP session on a 4-GPU host (one call of the device tool; ~8 min):
#   phase 1, GPU i runs factor F_i (1, 2, 4, 8): coarse task `count` (1 epoch of 16k images), then the fine
#            task `count_plus` (2 epochs of 32k images); one `task=train` process per cell
#   phase 2: DDP on GPUs 0,1 (trainer=ddp trainer.devices=2) and, at the same time, the same job on GPU 2 alone
# Results are tarred into $OUT/results.tgz after every phase (the device returns only a few files).
# Usage on the host (after installing the hydra/omegaconf wheels):  OUT=/tmp/out bash gpu_session_4gpu.sh
# CPU dry run of the plumbing:  SMOKE=1 OUT=/tmp/out bash experiments/training/gpu_session_4gpu.sh
set -u
R=$(cd "$(dirname "$0")/../.." && pwd)
W=/tmp/vtlab_gpu_session; rm -rf "$W"; mkdir -p "$W" "$OUT"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
PY=${PYTHON:-python3}
MODEL=smolvlm
FACTORS=(1 2 4 8)
COMMON=(--set task.compile=false --set data.val_size=1024 --set data.num_workers=10
        --set model.input_size=512 --set data.glyph_size=null  # the native frame and glyph (defaults of that day)
        --set task.lr=1e-3 --set task.tower_lr=1e-4 --set task.warmup_steps=100)
COARSE=(--set data.task=count --set data.train_size=16384 --set trainer.max_epochs=1)
FINE=(--set data.task=count_plus --set data.train_size=32000 --set trainer.max_epochs=2)
DDP_SETS="data.task=count data.train_size=8192 data.val_size=512 task.batch_size=64 task.compile=false trainer.max_epochs=1 data.num_workers=8"
if [ -n "${SMOKE:-}" ]; then
  MODEL=smolvlm_debug
  COMMON=(--set task.compile=false --set data.val_size=16 --set task.batch_size=8 --set trainer.accelerator=cpu
          --set model.input_size=64 --set data.glyph_size=null)
  COARSE=(--set data.task=count --set data.train_size=32 --set trainer.max_epochs=1)
  FINE=(--set data.task=count_plus --set data.train_size=32 --set trainer.max_epochs=1)
  DDP_SETS="data.task=count data.train_size=32 data.val_size=16 task.batch_size=8 trainer.max_epochs=1 trainer.accelerator=cpu"
fi
pack() { (cd "$W" && tar czf "$OUT/results.tgz" --exclude='*.ckpt' --exclude='checkpoints' . 2>/dev/null); }
nvidia-smi --query-gpu=index,name,memory.total --format=csv > "$W/gpus.csv" 2>/dev/null
"$PY" -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)" > "$W/versions.txt"
t0=$(date +%s)
pids=()
for i in "${!FACTORS[@]}"; do
  f=${FACTORS[$i]}
  (
    export CUDA_VISIBLE_DEVICES=$i
    "$PY" "$R/experiments/training/accuracy_vs_tokens.py" --model $MODEL --factors "$f" "${COMMON[@]}" "${COARSE[@]}" \
      --out "$W/acc_count" > "$W/acc_count_f$f.log" 2>&1
    echo "count f$f done $(( $(date +%s) - t0 ))s" >> "$W/timeline.txt"
    "$PY" "$R/experiments/training/accuracy_vs_tokens.py" --model $MODEL --factors "$f" "${COMMON[@]}" "${FINE[@]}" \
      --out "$W/acc_count_plus" > "$W/acc_count_plus_f$f.log" 2>&1
    echo "count_plus f$f done $(( $(date +%s) - t0 ))s" >> "$W/timeline.txt"
  ) &
  pids+=($!)
  if [ -n "${SMOKE:-}" ]; then wait "$!"; pids=(); fi
done
for p in "${pids[@]}"; do wait "$p"; pack; done
# rebuild both tables and plots over all four factors (cells are skipped: they have results.json)
for t in count count_plus; do
  "$PY" "$R/experiments/training/accuracy_vs_tokens.py" --model $MODEL --factors "$(IFS=,; echo "${FACTORS[*]}")" \
    "${COMMON[@]}" --out "$W/acc_$t" > "$W/acc_${t}_summary.log" 2>&1
done
pack
cd "$W"
if [ -n "${SMOKE:-}" ]; then
  "$PY" -m vtlab +model=$MODEL task=train trainer=ddp trainer.devices=2 trainer.strategy=ddp logger=csv $DDP_SETS out_dir="$W/ddp2" > "$W/ddp2.log" 2>&1
  echo "ddp2 done rc=$? $(( $(date +%s) - t0 ))s" >> "$W/timeline.txt"
  "$PY" -m vtlab +model=$MODEL task=train logger=csv $DDP_SETS out_dir="$W/ddp1" > "$W/ddp1.log" 2>&1
  echo "ddp1 done rc=$? $(( $(date +%s) - t0 ))s" >> "$W/timeline.txt"
else
  (CUDA_VISIBLE_DEVICES=2 "$PY" -m vtlab +model=$MODEL task=train logger=csv $DDP_SETS out_dir="$W/ddp1" > "$W/ddp1.log" 2>&1
   echo "ddp1 (1 GPU) done rc=$? $(( $(date +%s) - t0 ))s" >> "$W/timeline.txt") &
  g=$!
  CUDA_VISIBLE_DEVICES=0,1 "$PY" -m vtlab +model=$MODEL task=train trainer=ddp trainer.devices=2 logger=csv $DDP_SETS out_dir="$W/ddp2" > "$W/ddp2.log" 2>&1
  echo "ddp2 done rc=$? $(( $(date +%s) - t0 ))s" >> "$W/timeline.txt"
  wait $g
fi
pack
cat "$W/timeline.txt"; cat "$W"/acc_count*/results.md 2>/dev/null | grep '^|'
grep -h '"train_images_per_s"\|"world_size"\|"val_acc"' "$W"/ddp*/results.json 2>/dev/null; tail -n 3 "$W/ddp2.log"
