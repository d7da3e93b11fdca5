#!/usr/bin/env bash
# Device call 3 of the 2026-12-02 ninth session, one H200, issue 16:
# 1. training_kernel_sweep.py at llavanext's and siglip's training shapes: bias_gelu forward / backward and add_ln_bwd
#    per launch (tile, warps, programs per SM) against Inductor's kernels (call 2: our bias_gelu_bwd 0.381 ms per
#    call on siglip against Inductor's two passes 0.248 + 0.126);
# 2. the full-fine-tuning step with the sweep's fastest launches (run_levers.py --train-kernel-launch), native first:
#    siglip at batch 256, then llavanext at batch 64, each against transformers in the same process.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv,noheader;
  python3 -c "import torch, transformers, timm, triton; print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version(), transformers.__version__, timm.__version__, 'triton', triton.__version__)"; } > $OUT/env.txt 2>&1
timeout 150 python3 experiments/gpu_speed/training_kernel_sweep.py --presets siglip,llavanext --out $OUT/train_kernels.json \
    > $OUT/train_kernels.log 2>&1
echo "sweep done at ${SECONDS}s" >> $OUT/env.txt
mkdir -p /tmp/lev
for spec in siglip:150:256:native_fused_norm_gelu_kernel_full,hf_full,native_fused_norm_full \
            llavanext:260:64:native_fused_norm_gelu_kernel_full,hf_full; do
  IFS=: read p b tb vars <<< "$spec"
  left=$(( 570 - SECONDS )); [ $left -lt 90 ] && break; [ $b -gt $(( left - 10 )) ] && b=$(( left - 10 ))
  launch=""
  python3 -c "import json,sys; sys.exit(0 if 'choice' in json.load(open('$OUT/train_kernels.json')).get('$p', {}) else 1)" 2>/dev/null \
      && launch="--train-kernel-launch $OUT/train_kernels.json"
  echo "$p launch: ${launch:-defaults}" >> $OUT/env.txt
  timeout $(( b + 15 )) python3 experiments/gpu_speed/run_levers.py --presets $p --train-presets $p --train-batch $tb \
      --sections training --train-attention cudnn_safe --train-sweep fused_gelu_train --train-fused-norm \
      --train-profile --train-variants $vars --budget-s $b $launch --out /tmp/lev > /tmp/lev_$p.log 2>&1
  cp /tmp/lev/$p.json $OUT/ 2>/dev/null
  grep -h "img/s\|rror\|GPU time\|every native" /tmp/lev_$p.log | tail -14 > $OUT/lev_$p.tail 2>&1
  echo "$p done at ${SECONDS}s" >> $OUT/env.txt
done
echo "call wall ${SECONDS}s" >> $OUT/env.txt
