#!/usr/bin/env bash
# Device call 1 of the 2026-12-01 (second) session, one H200: issue 13's connector-zoo study (accuracy vs tokens,
# 6 kinds x 3 budgets x 3 seeds, then task=bench of the same cells on a quiet GPU), then issue 16's llavanext
# compiled throughput with the levers. Only small result files are copied to $OUT (the device returns 8 files).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, transformers, timm, lightning; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'transformers', transformers.__version__, 'timm', timm.__version__, 'lightning', lightning.__version__)"; } > $OUT/env.txt 2>&1
ZOO_BUDGET=${ZOO_BUDGET:-250}
timeout 420 python3 experiments/connector_zoo/run.py --out /tmp/zoo --jobs 16 --budget-s $ZOO_BUDGET > $OUT/zoo.log 2>&1
cp /tmp/zoo/results.md /tmp/zoo/results.json /tmp/zoo/accuracy_vs_tokens.png $OUT/ 2>/dev/null
left=$(( 560 - SECONDS ))
if [ $left -gt 90 ]; then
  timeout $left python3 experiments/gpu_speed/run_levers.py --presets llavanext --sections numerics,throughput \
      --budget-s $(( left - 20 )) --out /tmp/lev > /tmp/lev.log 2>&1
  cp /tmp/lev/llavanext.json $OUT/ 2>/dev/null; tail -40 /tmp/lev.log > $OUT/levers_tail.log
fi
echo "call wall ${SECONDS}s" >> $OUT/env.txt
