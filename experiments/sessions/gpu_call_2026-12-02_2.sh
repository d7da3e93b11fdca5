#!/usr/bin/env bash
# Device call 2 of the 2026-12-02 (seventh) session, one H200, issue 16: the residual stream after the graph-break
# fix (2825618: `task.residual_gemm`, Triton shifted LayerNorm decided at import) against every earlier inference
# lever and transformers / timm compiled, one process per preset, throughput and batch 1 with CUDA graphs. The
# variants are timed inside the throughput section (call 1 ran out of budget before its lever sweep).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader;
  python3 -c "import torch, transformers, timm, triton; print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version(), transformers.__version__, timm.__version__, 'triton', triton.__version__)";
  git log -1 --format='%H %s' 2>/dev/null | cut -c1-80; } > $OUT/env.txt 2>&1
mkdir -p /tmp/lev
for spec in llavanext:320:residual_gemm,residual_gemm_torch_ln smolvlm:200:residual_gemm; do
  IFS=: read p b vars <<< "$spec"
  left=$(( 570 - SECONDS )); [ $left -lt 60 ] && break; [ $b -gt $(( left - 10 )) ] && b=$(( left - 10 ))
  timeout $(( b + 20 )) python3 experiments/gpu_speed/run_levers.py --presets $p --lever-presets $p \
      --sections throughput,latency_bs1 --residual-levers --residual-variants $vars \
      --budget-s $b --out /tmp/lev > /tmp/lev_$p.log 2>&1
  cp /tmp/lev/$p.json $OUT/ 2>/dev/null
  grep -h "img/s\| ms\|rror\|residual\|cudagraph" /tmp/lev_$p.log | tail -24 > $OUT/lev_$p.tail 2>&1
  echo "$p done at ${SECONDS}s" >> $OUT/env.txt
done
echo "call wall ${SECONDS}s" >> $OUT/env.txt
