#!/usr/bin/env bash
# The issue-5 GPU session on a 2-GPU host, as run on 2026-11-28 (one call of the device tool; ~6 min):
#   GPU 0: training-step throughput, vtlab vs transformers tower (bf16-mixed, compiled), then factor 4
#   GPU 1: accuracy vs tokens, factors 1, 2, 8 (one `task=train` process per factor)
#   then:  DDP on both GPUs (trainer=ddp trainer.devices=2)
# Results are tarred into $OUT/results.tgz after every phase (the device returns only a few files).
# Usage on the host (after installing vtlab and the hydra/omegaconf wheels):  OUT=/tmp/out bash gpu_session.sh
# CPU dry run of the plumbing:  SMOKE=1 OUT=/tmp/out bash experiments/training/gpu_session.sh
set -u
R=$(cd "$(dirname "$0")/../.." && pwd)
W=/tmp/vtlab_gpu_session; rm -rf "$W"; mkdir -p "$W" "$OUT"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
PY=${PYTHON:-python3}
MODEL=smolvlm; TP_ARGS="--batch 64 --steps 10 --warmup 3 --repeats 2 --modes compile"
ACC_SETS=(--set data.task=count --set task.compile=false --set data.train_size=25600 --set data.val_size=1024
          --set trainer.max_epochs=1 --set data.num_workers=6)
DDP_SETS="data.task=count data.train_size=8192 data.val_size=512 task.batch_size=64 task.compile=false trainer.max_epochs=1 data.num_workers=4"
if [ -n "${SMOKE:-}" ]; then
  MODEL=smolvlm_debug; TP_ARGS="--device cpu --precision 32-true --batch 4 --steps 2 --warmup 1 --repeats 1 --modes eager"
  ACC_SETS=(--set data.task=count --set task.compile=false --set data.train_size=64 --set data.val_size=32
            --set trainer.max_epochs=1 --set task.batch_size=16 --set trainer.accelerator=cpu)
  DDP_SETS="data.task=count data.train_size=32 data.val_size=16 task.batch_size=8 trainer.max_epochs=1 trainer.accelerator=cpu trainer.strategy=ddp trainer.devices=2"
fi
pack() { (cd "$W" && tar czf "$OUT/results.tgz" --exclude='*.ckpt' --exclude='checkpoints' . 2>/dev/null); }
nvidia-smi --query-gpu=index,name,memory.total --format=csv > "$W/gpus.csv" 2>/dev/null
"$PY" -c "import torch, lightning, transformers; print('torch', torch.__version__, 'lightning', lightning.__version__, 'transformers', transformers.__version__)" > "$W/versions.txt"
t0=$(date +%s)
(
  CUDA_VISIBLE_DEVICES=0 "$PY" "$R/experiments/training/train_throughput.py" --model $MODEL $TP_ARGS --out "$W/throughput" > "$W/throughput.log" 2>&1
  echo "throughput done $(( $(date +%s) - t0 ))s" >> "$W/timeline.txt"
  CUDA_VISIBLE_DEVICES=0 "$PY" "$R/experiments/training/accuracy_vs_tokens.py" --model $MODEL --factors 4 "${ACC_SETS[@]}" --out "$W/acc_gpu0" > "$W/acc_gpu0.log" 2>&1
  echo "gpu0 acc done $(( $(date +%s) - t0 ))s" >> "$W/timeline.txt"
) &
g0=$!
CUDA_VISIBLE_DEVICES=1 "$PY" "$R/experiments/training/accuracy_vs_tokens.py" --model $MODEL --factors 1,2,8 "${ACC_SETS[@]}" --out "$W/acc_gpu1" > "$W/acc_gpu1.log" 2>&1
echo "gpu1 acc done $(( $(date +%s) - t0 ))s" >> "$W/timeline.txt"
pack
wait $g0
pack
cd "$W" && CUDA_VISIBLE_DEVICES=0,1 "$PY" -m vtlab +model=$MODEL task=train trainer=ddp trainer.devices=2 logger=csv $DDP_SETS out_dir="$W/ddp2" > "$W/ddp2.log" 2>&1
echo "ddp done rc=$? $(( $(date +%s) - t0 ))s" >> "$W/timeline.txt"
pack
cat "$W/timeline.txt"; tail -n 5 "$W/throughput/results.md" 2>/dev/null; cat "$W"/acc_gpu*/results.md 2>/dev/null | grep '^|'; tail -n 3 "$W/ddp2.log"
