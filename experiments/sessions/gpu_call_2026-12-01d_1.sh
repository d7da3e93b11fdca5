#!/usr/bin/env bash
# Device call 1 of the 2026-12-01 (fourth) session, one H200, issue 16: (1) cuDNN's SDPA backward over the key-length
# grid (sdpa_nan_check.py --grid), which decides the cudnn_safe rule; (2) the smolvlm training step under no_cudnn,
# cudnn and cudnn_safe, with a kernel breakdown by kind and the gradients' error vs fp32; (3) siglip with inductor
# max-autotune on every side.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader;
  python3 -c "import torch; print(torch.__version__, torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"; } > $OUT/env.txt 2>&1
timeout 90 python3 experiments/training/sdpa_nan_check.py --grid --shifts 0,-100,-150 --backends cudnn,flash \
    --out $OUT/sdpa_nan_grid.json > /tmp/nan.log 2>&1; tail -3 /tmp/nan.log >> $OUT/env.txt
echo "grid done at ${SECONDS}s" >> $OUT/env.txt
mkdir -p /tmp/lev
timeout 330 python3 experiments/gpu_speed/run_levers.py --presets smolvlm --sections training,grad_numerics \
    --train-attention no_cudnn,cudnn,cudnn_safe --train-profile --top-kernels 15 --budget-s 300 --out /tmp/lev > /tmp/lev_train.log 2>&1
echo "training done at ${SECONDS}s" >> $OUT/env.txt
left=$(( 560 - SECONDS ))
if [ $left -gt 80 ]; then
  timeout $left python3 experiments/gpu_speed/run_levers.py --presets siglip --sections autotune \
      --budget-s $(( left - 15 )) --out /tmp/lev > /tmp/lev_at.log 2>&1
fi
cp /tmp/lev/*.json $OUT/ 2>/dev/null
{ tail -30 /tmp/lev_train.log; tail -30 /tmp/lev_at.log; } > $OUT/levers_tail.log 2>&1
echo "call wall ${SECONDS}s" >> $OUT/env.txt
