#!/usr/bin/env bash
# Device call 3 of the 2026-12-02 eighth session, one H200, issue 16: the full-fine-tuning step with both training
# kernels of vtlab.models.kernels (`task.fused_norm`: residual add + LayerNorm; `task.gelu_kernel`: fc1's bias + GELU
# with the bias gradient reduced in the same backward pass) against transformers in the same process, with the GPU
# time per kernel kind; llavanext, siglip at batch 256, then smolvlm with what is left; the gpu-marked tests of the
# kernels first.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader;
  python3 -c "import torch, transformers, timm, triton; print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version(), transformers.__version__, timm.__version__, 'triton', triton.__version__)"; } > $OUT/env.txt 2>&1
timeout 80 python3 -m pytest -q -m gpu tests/test_fused_norm.py -p no:cacheprovider > $OUT/pytest_gpu.txt 2>&1
echo "tests done at ${SECONDS}s" >> $OUT/env.txt
mkdir -p /tmp/lev
for spec in llavanext:250:64 siglip:110:256 smolvlm:150:64; do
  IFS=: read p b tb <<< "$spec"
  left=$(( 515 - SECONDS )); [ $left -lt 90 ] && break; [ $b -gt $(( left - 10 )) ] && b=$(( left - 10 ))
  timeout $(( b + 15 )) python3 experiments/gpu_speed/run_levers.py --presets $p --train-presets $p --train-batch $tb \
      --sections training --train-attention cudnn_safe --train-fused-norm --train-profile \
      --train-variants hf_full,native_fused_norm_gelu_kernel_full \
      --budget-s $b --out /tmp/lev > /tmp/lev_$p.log 2>&1
  cp /tmp/lev/$p.json $OUT/ 2>/dev/null
  grep -h "img/s\|rror\|GPU time\|every native" /tmp/lev_$p.log | tail -14 > $OUT/lev_$p.tail 2>&1
  echo "$p done at ${SECONDS}s" >> $OUT/env.txt
done
echo "call wall ${SECONDS}s" >> $OUT/env.txt
