#!/usr/bin/env bash
# Device call 2 of the 2026-12-01 (second) session, one H200: issue 13's connector-zoo study again (call 1 lost
# its table: the whole script was timed out inside the bench, before the report; run.py now writes the table as
# soon as the trainings end), then issue 16's llavanext compiled throughput with the levers.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, transformers, timm, lightning; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'transformers', transformers.__version__, 'timm', timm.__version__, 'lightning', lightning.__version__)"; } > $OUT/env.txt 2>&1
timeout 440 python3 experiments/connector_zoo/run.py --out /tmp/zoo --jobs 18 --budget-s 240 > $OUT/zoo.log 2>&1
cp /tmp/zoo/results.md /tmp/zoo/results.json /tmp/zoo/accuracy_vs_tokens.png $OUT/ 2>/dev/null
echo "zoo done at ${SECONDS}s" >> $OUT/env.txt
left=$(( 570 - SECONDS ))
if [ $left -gt 90 ]; then
  timeout $left python3 experiments/gpu_speed/run_levers.py --presets llavanext --sections throughput \
      --budget-s $(( left - 15 )) --out /tmp/lev > /tmp/lev.log 2>&1
  cp /tmp/lev/llavanext.json $OUT/ 2>/dev/null; tail -30 /tmp/lev.log > $OUT/levers_tail.log
fi
echo "call wall ${SECONDS}s" >> $OUT/env.txt
