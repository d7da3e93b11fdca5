#!/usr/bin/env bash
# Device call 2 of the 2026-12-01 (sixth) session, one H200, issue 16: residual_stream.py's levers (Inductor's
# persistent reductions up to width 4096; the residual add in the out-projection / fc2 GEMMs, bias carried in a
# running vector) on top of every inference lever, with transformers / timm compiled plainly and under the same
# Inductor heuristic, in one process per preset; llavanext also at batch 1 (CUDA graphs).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader;
  python3 -c "import torch, transformers, timm, triton; print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version(), transformers.__version__, timm.__version__, 'triton', triton.__version__)"; } > $OUT/env.txt 2>&1
mkdir -p /tmp/lev
for spec in llavanext:300:throughput,levers,latency_bs1 siglip:215:throughput,levers; do
  IFS=: read p b secs <<< "$spec"
  left=$(( 575 - SECONDS )); [ $left -lt 80 ] && break; [ $b -gt $(( left - 10 )) ] && b=$(( left - 10 ))
  timeout $(( b + 20 )) python3 experiments/gpu_speed/run_levers.py --presets $p --lever-presets $p --sections $secs \
      --lever-variants all_levers --residual-levers --budget-s $b --out /tmp/lev > /tmp/lev_$p.log 2>&1
  cp /tmp/lev/$p.json $OUT/ 2>/dev/null
  grep -h "img/s\| ms\|error\|Error\|wide\|residual" /tmp/lev_$p.log | tail -25 > $OUT/lev_$p.tail 2>&1
  echo "$p done at ${SECONDS}s" >> $OUT/env.txt
done
echo "call wall ${SECONDS}s" >> $OUT/env.txt
