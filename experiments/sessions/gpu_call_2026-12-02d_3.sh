#!/usr/bin/env bash
# Tenth session, third device call (issue 16): full fine-tuning with both training kernels (task.fused_norm +
# task.gelu_kernel, the defaults proposed) against transformers: smolvlm (not timed with them yet) and llavanext
# again (call 1: 1.251x, the first time over the goal).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv,noheader;
  python3 -c "import torch, transformers, timm, triton; print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version(), transformers.__version__, timm.__version__, 'triton', triton.__version__)"; } > $OUT/env.txt 2>&1
LIMIT=${LIMIT:-480}
mkdir -p /tmp/lev
for spec in smolvlm:170:64:native_fused_norm_gelu_kernel_full,hf_full llavanext:250:64:native_fused_norm_gelu_kernel_full,hf_full; do
  IFS=: read p b tb vars <<< "$spec"
  left=$(( LIMIT - SECONDS )); [ $left -lt 100 ] && break; [ $b -gt $(( left - 10 )) ] && b=$(( left - 10 ))
  timeout $(( b + 15 )) python3 experiments/gpu_speed/run_levers.py --presets $p --train-presets $p --train-batch $tb \
      --sections training --train-attention cudnn_safe --train-sweep fused_gelu_train --train-fused-norm \
      --train-profile --train-variants $vars --budget-s $b --out /tmp/lev > /tmp/lev_$p.log 2>&1
  cp /tmp/lev/$p.json $OUT/ 2>/dev/null
  grep -h "img/s\|rror\|GPU time\|every native\|^| native\|^| hf" /tmp/lev_$p.log | tail -16 | tee $OUT/lev_$p.tail
  echo "$p done at ${SECONDS}s" >> $OUT/env.txt
done
echo "call wall ${SECONDS}s" >> $OUT/env.txt; cat $OUT/env.txt
