#!/usr/bin/env bash
# Prepared 2026-12-02 (eighth session) for the next session's device call, not yet run: the full-fine-tuning step
# with vtlab.models.kernels' training kernels (`task.fused_norm` + `task.gelu_kernel`, and fused_norm alone) against
# transformers in the same process, the GPU time per kernel kind of each. The eighth session's call 3 ran this with
# transformers first and budgets too small, and every native variant was skipped: here the native variants come first
# (--train-variants keeps its order) and each preset has the time its compiles take (llavanext ~130 s per variant).
# First, experiments/gpu_speed/sdpa_copy_probe.py at llavanext's and siglip's attention shapes.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader;
  python3 -c "import torch, transformers, timm, triton; print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version(), transformers.__version__, timm.__version__, 'triton', triton.__version__)"; } > $OUT/env.txt 2>&1
# where llavanext's strided copies come from (11.3 ms of ~330 in the eighth session's profile): one attention layer
timeout 60 python3 experiments/gpu_speed/sdpa_copy_probe.py --presets llavanext,siglip --backends cudnn \
    --out $OUT/sdpa_copy_probe.json > /tmp/probe.log 2>&1
echo "probe done at ${SECONDS}s" >> $OUT/env.txt
mkdir -p /tmp/lev
for spec in llavanext:330:64:native_fused_norm_gelu_kernel_full,hf_full,native_fused_norm_full \
            siglip:190:256:native_fused_norm_gelu_kernel_full,hf_full,native_no_fused_gelu_train_full; do
  IFS=: read p b tb vars <<< "$spec"
  left=$(( 570 - SECONDS )); [ $left -lt 90 ] && break; [ $b -gt $(( left - 10 )) ] && b=$(( left - 10 ))
  timeout $(( b + 15 )) python3 experiments/gpu_speed/run_levers.py --presets $p --train-presets $p --train-batch $tb \
      --sections training --train-attention cudnn_safe --train-sweep fused_gelu_train --train-fused-norm \
      --train-profile --train-variants $vars --budget-s $b --out /tmp/lev > /tmp/lev_$p.log 2>&1
  cp /tmp/lev/$p.json $OUT/ 2>/dev/null
  grep -h "img/s\|rror\|GPU time\|every native" /tmp/lev_$p.log | tail -14 > $OUT/lev_$p.tail 2>&1
  echo "$p done at ${SECONDS}s" >> $OUT/env.txt
done
echo "call wall ${SECONDS}s" >> $OUT/env.txt
