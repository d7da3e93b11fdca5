#!/usr/bin/env bash
# Device call 1 of the 2026-12-01 (sixth) session, one H200, issue 16: fc1 + bias + tanh GELU as our own persistent
# TMA Triton GEMM (experiments/gpu_speed/triton_gemm.py) against cuBLASLt's GELU epilogue and Inductor's persistent
# TMA template, op alone at the three presets' shapes; then in the siglip and llavanext towers (throughput and bs1).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader;
  python3 -c "import torch, transformers, timm, triton; print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version(), transformers.__version__, timm.__version__, 'triton', triton.__version__)"; } > $OUT/env.txt 2>&1
timeout 250 python3 experiments/gpu_speed/kernel_shapes.py --sections gemm --presets siglip,llavanext,smolvlm \
    --gemm-variants bias_only,gelu_epilogue,triton_persistent,max_autotune_tma --budget-s 230 --out $OUT/ks.json > $OUT/ks.log 2>&1
echo "kernel_shapes done at ${SECONDS}s" >> $OUT/env.txt
mkdir -p /tmp/lev
for spec in siglip:150 llavanext:170; do
  p=${spec%%:*}; b=${spec##*:}
  left=$(( 560 - SECONDS )); [ $left -lt 80 ] && break; [ $b -gt $(( left - 10 )) ] && b=$(( left - 10 ))
  timeout $(( b + 15 )) python3 experiments/gpu_speed/run_levers.py --presets $p --lever-presets $p --sections levers,latency_bs1 \
      --lever-variants all_levers --triton-gelu --budget-s $b --out /tmp/lev > /tmp/lev_$p.log 2>&1
  cp /tmp/lev/$p.json $OUT/ 2>/dev/null
  grep -h "img/s\|ms\|error\|Error\|triton" /tmp/lev_$p.log | tail -15 > $OUT/lev_$p.tail 2>&1
  echo "$p levers done at ${SECONDS}s" >> $OUT/env.txt
done
echo "call wall ${SECONDS}s" >> $OUT/env.txt
