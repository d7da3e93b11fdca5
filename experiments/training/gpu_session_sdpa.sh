#!/usr/bin/env bash
# Issue-5 session 6 (one call of the device tool, one GPU, ~5 min): what does the train task's SDPA default
# (task.attention_backend=no_cudnn, chosen because cuDNN's backward returned NaN gradients in run 4a) cost in
# training-step throughput? train_throughput.py (smolvlm at 512 px, factor 4, batch 64, full fine-tuning,
# bf16-mixed), eager and compiled, vtlab and transformers towers, first with SDPA restricted to no_cudnn, then
# with PyTorch's own choice (auto: cuDNN on Hopper). Results are tarred into $OUT/results.tgz after each part.
# CPU dry run of the plumbing:  SMOKE=1 OUT=/tmp/out bash experiments/training/gpu_session_sdpa.sh
# shellcheck source=session_env.sh
source "$(dirname "$0")/session_env.sh"
TP=(--batch 64 --steps 10 --warmup 3 --repeats 2 --modes eager,compile)
if [ -n "${SMOKE:-}" ]; then
  TP=(--model smolvlm_debug --device cpu --precision 32-true --batch 4 --steps 2 --warmup 1 --repeats 1 --modes eager)
fi
nvidia-smi --query-gpu=index,name,memory.total --format=csv > "$W/gpus.csv" 2>/dev/null
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cudnn', torch.backends.cudnn.version(), 'transformers', transformers.__version__)" > "$W/versions.txt"
t0=$(date +%s)
for backend in no_cudnn auto; do
  CUDA_VISIBLE_DEVICES=0 "$PY" "$R/experiments/training/train_throughput.py" "${TP[@]}" --attention-backend $backend \
    --out "$W/throughput_$backend" > "$W/throughput_$backend.log" 2>&1
  echo "$backend rc=$? $(( $(date +%s) - t0 ))s" >> "$W/timeline.txt"
  (cd "$W" && tar czf "$OUT/results.tgz" .)
done
cat "$W/timeline.txt"; grep -h '^|\|^#' "$W"/throughput_*/results.md
