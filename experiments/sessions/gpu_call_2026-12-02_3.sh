#!/usr/bin/env bash
# Device call 3 of the 2026-12-02 (seventh) session, one H200, issue 16: the shifted LayerNorm's launch per shape
# (ln_launch_sweep.py), then the residual stream with the fastest launch per shape (run_levers.py --ln-table)
# against transformers / timm compiled, one process per preset: llavanext throughput, smolvlm batch 1, siglip
# throughput and batch 1.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader;
  python3 -c "import torch, transformers, timm, triton; print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version(), transformers.__version__, timm.__version__, 'triton', triton.__version__)"; } > $OUT/env.txt 2>&1
timeout 120 python3 experiments/gpu_speed/ln_launch_sweep.py --out $OUT/ln_sweep.json > $OUT/ln_sweep.log 2>&1
echo "sweep done at ${SECONDS}s" >> $OUT/env.txt
table=""; [ -s $OUT/ln_sweep.json ] && table="--ln-table $OUT/ln_sweep.json"
mkdir -p /tmp/lev
for spec in llavanext:200:throughput:residual_gemm smolvlm:85:latency_bs1:residual_gemm siglip:140:throughput,latency_bs1:residual_gemm; do
  IFS=: read p b secs vars <<< "$spec"
  left=$(( 560 - SECONDS )); [ $left -lt 60 ] && break; [ $b -gt $(( left - 10 )) ] && b=$(( left - 10 ))
  timeout $(( b + 15 )) python3 experiments/gpu_speed/run_levers.py --presets $p --lever-presets $p \
      --sections $secs --residual-levers --residual-variants $vars $table --budget-s $b --out /tmp/lev > /tmp/lev_$p.log 2>&1
  cp /tmp/lev/$p.json $OUT/ 2>/dev/null
  grep -h "img/s\| ms\|rror\|residual\|cudagraph" /tmp/lev_$p.log | tail -24 > $OUT/lev_$p.tail 2>&1
  echo "$p done at ${SECONDS}s" >> $OUT/env.txt
done
echo "call wall ${SECONDS}s" >> $OUT/env.txt
