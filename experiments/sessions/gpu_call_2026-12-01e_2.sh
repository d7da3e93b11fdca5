#!/usr/bin/env bash
# Device call 2 of the 2026-12-01 (fifth) session, one H200, issue 16: batch-1 pieces inside CUDA graphs and the
# attention forward + backward against math attention (kernel_shapes.py), llavanext batch-1 latency with SDPA pinned
# to efficient / flash in the tower, then siglip's training step without the fused GELU epilogue if time is left.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader;
  python3 -c "import torch, transformers, timm; print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version(), transformers.__version__, timm.__version__)"; } > $OUT/env.txt 2>&1
timeout 230 python3 experiments/gpu_speed/kernel_shapes.py --sections bs1_graphs,attention --budget-s 200 \
    --attention-variants cudnn_views,flash_views,efficient_views,math_bf16,math_bf16_compiled,math_fn,math_fn_compiled \
    --out $OUT/kernel_shapes.json > $OUT/kernel_shapes.log 2>&1
echo "kernel_shapes done at ${SECONDS}s" >> $OUT/env.txt
mkdir -p /tmp/lev
timeout 220 python3 experiments/gpu_speed/run_levers.py --presets llavanext --sections latency_bs1 \
    --latency-attention efficient,flash --budget-s 200 --out /tmp/lev > /tmp/lev_llavanext.log 2>&1
echo "llavanext latency done at ${SECONDS}s" >> $OUT/env.txt
left=$(( 555 - SECONDS ))
[ $left -gt 80 ] && timeout $left python3 experiments/gpu_speed/run_levers.py --presets siglip --train-presets siglip \
    --sections training --train-attention cudnn_safe --train-batch 256 --train-sweep fused_gelu_train \
    --train-variants native_no_fused_gelu_train_full,hf_full --budget-s $(( left - 20 )) --out /tmp/lev > /tmp/lev_siglip.log 2>&1
cp /tmp/lev/*.json $OUT/ 2>/dev/null
for p in llavanext siglip; do tail -20 /tmp/lev_$p.log; done > $OUT/levers_tail.log 2>&1
echo "call wall ${SECONDS}s" >> $OUT/env.txt
