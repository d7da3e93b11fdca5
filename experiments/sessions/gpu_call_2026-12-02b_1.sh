#!/usr/bin/env bash
# Device call 1 of the 2026-12-02 eighth session (prepared in the seventh), one H200, issue 16: the training step with the
# frozen tower kept in bf16 outside autocast (`task.frozen_tower_bf16`, run_levers.py --train-frozen-bf16), native
# and transformers alike, against the bf16-autocast frozen and full fine-tuning steps, siglip and llavanext (the
# two presets short of 1.25x in the frozen-tower cell), one process per preset.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader;
  python3 -c "import torch, transformers, timm, triton; print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version(), transformers.__version__, timm.__version__, 'triton', triton.__version__)"; } > $OUT/env.txt 2>&1
mkdir -p /tmp/lev
for spec in llavanext:300:64 siglip:220:256; do
  IFS=: read p b tb <<< "$spec"
  left=$(( 560 - SECONDS )); [ $left -lt 60 ] && break; [ $b -gt $(( left - 10 )) ] && b=$(( left - 10 ))
  timeout $(( b + 15 )) python3 experiments/gpu_speed/run_levers.py --presets $p --train-presets $p --train-batch $tb --sections training \
      --train-attention cudnn_safe --train-frozen-bf16 \
      --train-variants native_levers_frozen_tower,hf_frozen_tower,native_levers_frozen_tower_bf16,hf_frozen_tower_bf16 \
      --budget-s $b --out /tmp/lev > /tmp/lev_$p.log 2>&1
  cp /tmp/lev/$p.json $OUT/ 2>/dev/null
  grep -h "img/s\|rror" /tmp/lev_$p.log | tail -12 > $OUT/lev_$p.tail 2>&1
  echo "$p done at ${SECONDS}s" >> $OUT/env.txt
done
echo "call wall ${SECONDS}s" >> $OUT/env.txt
