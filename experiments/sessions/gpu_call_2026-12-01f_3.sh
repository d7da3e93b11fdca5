#!/usr/bin/env bash
# Device call 3 of the 2026-12-01 (sixth) session, one H200, issue 16: the shipped residual stream
# (`task.residual_gemm`, vtlab.models.fastpaths + the Triton shifted LayerNorm of vtlab.models.kernels) against every
# earlier inference lever and transformers / timm compiled, one process per preset (llavanext also at batch 1, and
# with torch's LayerNorm left to Inductor); then the gpu-marked fast-path tests.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader;
  python3 -c "import torch, transformers, timm, triton; print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version(), transformers.__version__, timm.__version__, 'triton', triton.__version__)"; } > $OUT/env.txt 2>&1
mkdir -p /tmp/lev
for spec in llavanext:240:throughput,levers,latency_bs1:residual_gemm,residual_gemm_torch_ln smolvlm:130:throughput,levers:residual_gemm siglip:80:throughput,levers:residual_gemm; do
  IFS=: read p b secs vars <<< "$spec"
  left=$(( 470 - SECONDS )); [ $left -lt 60 ] && break; [ $b -gt $(( left - 10 )) ] && b=$(( left - 10 ))
  timeout $(( b + 20 )) python3 experiments/gpu_speed/run_levers.py --presets $p --lever-presets $p --sections $secs \
      --lever-variants all_levers --residual-levers --residual-variants $vars --budget-s $b --out /tmp/lev > /tmp/lev_$p.log 2>&1
  cp /tmp/lev/$p.json $OUT/ 2>/dev/null
  grep -h "img/s\| ms\|error\|Error\|residual" /tmp/lev_$p.log | tail -20 > $OUT/lev_$p.tail 2>&1
  echo "$p done at ${SECONDS}s" >> $OUT/env.txt
done
left=$(( 500 - SECONDS ))
[ $left -gt 30 ] && timeout $left python3 -m pytest -q -m gpu tests/test_fastpaths.py -p no:cacheprovider > $OUT/pytest_fastpaths.log 2>&1
echo "call wall ${SECONDS}s" >> $OUT/env.txt
