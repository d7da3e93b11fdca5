#!/usr/bin/env bash
# Device call 2 of the 2026-12-02 ninth session, one H200, issue 16:
# 1. busy_probe.py on siglip's throughput call (batch 256): where the 7 % between the profiled kernel sum (16.1 ms)
#    and the timed 17.38 ms goes: idle gaps in a back-to-back profile, or clocks (nvidia-smi during a sustained run);
# 2. siglip's training step: full fine-tuning with `task.fused_norm` + `task.gelu_kernel` against transformers and
#    the best native step so far, then the frozen tower under bf16 autocast with `task.fused_norm`;
# 3. llavanext's frozen tower under bf16 autocast with `task.fused_norm` (its LayerNorms at width 1152 are
#    Inductor's looped reductions otherwise).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv,noheader;
  python3 -c "import torch, transformers, timm, triton; print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version(), transformers.__version__, timm.__version__, 'triton', triton.__version__)"; } > $OUT/env.txt 2>&1
timeout 150 python3 experiments/gpu_speed/busy_probe.py --presets siglip --out $OUT/busy_siglip.json > $OUT/busy.log 2>&1
echo "busy probe done at ${SECONDS}s" >> $OUT/env.txt
mkdir -p /tmp/lev
for spec in siglip:230:256:native_fused_norm_gelu_kernel_full,hf_full,native_no_fused_gelu_train_full,native_fused_norm_frozen_tower,hf_frozen_tower,native_levers_frozen_tower \
            llavanext:220:64:native_fused_norm_frozen_tower,hf_frozen_tower,native_levers_frozen_tower; do
  IFS=: read p b tb vars <<< "$spec"
  left=$(( 565 - SECONDS )); [ $left -lt 70 ] && break; [ $b -gt $(( left - 10 )) ] && b=$(( left - 10 ))
  timeout $(( b + 15 )) python3 experiments/gpu_speed/run_levers.py --presets $p --train-presets $p --train-batch $tb \
      --sections training --train-attention cudnn_safe --train-sweep fused_gelu_train --train-fused-norm \
      --train-profile --train-variants $vars --budget-s $b --out /tmp/lev > /tmp/lev_$p.log 2>&1
  cp /tmp/lev/$p.json $OUT/ 2>/dev/null
  grep -h "img/s\|rror\|GPU time\|every native" /tmp/lev_$p.log | tail -14 > $OUT/lev_$p.tail 2>&1
  echo "$p done at ${SECONDS}s" >> $OUT/env.txt
done
echo "call wall ${SECONDS}s" >> $OUT/env.txt
