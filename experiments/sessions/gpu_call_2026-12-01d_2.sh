#!/usr/bin/env bash
# Device call 2 of the 2026-12-01 (fourth) session, one H200, issue 16: the training step under cudnn_safe (cuDNN in
# the native layers where its backward is clean, no_cudnn elsewhere and for transformers) on every preset, full
# fine-tuning and frozen tower, with each training lever switched off in turn on smolvlm.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader; } > $OUT/env.txt 2>&1
mkdir -p /tmp/lev
run() {  # preset, budget, extra args
  local p=$1 b=$2; shift 2
  timeout $(( b + 20 )) python3 experiments/gpu_speed/run_levers.py --presets $p --train-presets $p --sections training --train-attention cudnn_safe \
      --budget-s $b --out /tmp/lev "$@" > /tmp/lev_$p.log 2>&1
  echo "$p done at ${SECONDS}s" >> $OUT/env.txt
}
run smolvlm 210 --train-sweep fused_gelu_train,patch_gemm,compile_optimizer --train-profile --top-kernels 20
run siglip 130 --train-batch 256 --train-sweep fused_gelu_train
left=$(( 555 - SECONDS ))
[ $left -gt 90 ] && run llavanext $(( left - 25 )) --train-sweep fused_gelu_train
cp /tmp/lev/*.json $OUT/ 2>/dev/null
for p in smolvlm siglip llavanext; do tail -25 /tmp/lev_$p.log; done > $OUT/levers_tail.log 2>&1
echo "call wall ${SECONDS}s" >> $OUT/env.txt
