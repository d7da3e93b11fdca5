#!/usr/bin/env bash
# Device call 3 of the 2026-12-01 (fourth) session, one H200, issue 16: what call 2 left out of the training-step
# table under cudnn_safe: llavanext against transformers (post-LN last layer on both sides), siglip without the
# fused fc1+GELU training epilogue and frozen, and smolvlm's remaining one-lever-off variants, in that order.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader; } > $OUT/env.txt 2>&1
mkdir -p /tmp/lev
run() {  # preset, budget, extra args
  local p=$1 b=$2; shift 2
  timeout $(( b + 20 )) python3 experiments/gpu_speed/run_levers.py --presets $p --train-presets $p --sections training \
      --train-attention cudnn_safe --budget-s $b --out /tmp/lev "$@" > /tmp/lev_$p.log 2>&1
  echo "$p done at ${SECONDS}s" >> $OUT/env.txt
}
run llavanext 290 --train-sweep fused_gelu_train \
    --train-variants native_no_fused_gelu_train_full,hf_full,native_levers_frozen_tower,hf_frozen_tower
run siglip 130 --train-batch 256 --train-sweep fused_gelu_train \
    --train-variants native_no_fused_gelu_train_full,hf_full,native_levers_frozen_tower,hf_frozen_tower
left=$(( 530 - SECONDS ))
[ $left -gt 60 ] && run smolvlm $(( left - 20 )) \
    --train-sweep fused_gelu_train,fused_gelu_train+compile_optimizer,fused_gelu_train+patch_gemm \
    --train-variants native_no_fused_gelu_train_full,native_no_fused_gelu_train+compile_optimizer_full,native_no_fused_gelu_train+patch_gemm_full,hf_full
cp /tmp/lev/*.json $OUT/ 2>/dev/null
for p in llavanext siglip smolvlm; do tail -25 /tmp/lev_$p.log; done > $OUT/levers_tail.log 2>&1
echo "call wall ${SECONDS}s" >> $OUT/env.txt
