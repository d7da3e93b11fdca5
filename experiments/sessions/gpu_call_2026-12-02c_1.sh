#!/usr/bin/env bash
# Device call 1 of the 2026-12-02 ninth session, one H200, issue 16: the gpu-marked tests of the refactored LayerNorm
# kernel (one `residual_ln` for inference and training), then sdpa_copy_probe.py at llavanext's and siglip's attention
# shapes (which ATen op makes llavanext's 11.3 ms of strided copies), then llavanext's full-fine-tuning step with
# `task.fused_norm` + `task.gelu_kernel` and `task.fused_norm` alone against transformers, native first, each with
# its GPU time per kernel kind (--train-profile). From experiments/sessions/gpu_call_next_training_kernels.sh, with
# llavanext given the whole call (~130 s per variant).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader;
  python3 -c "import torch, transformers, timm, triton; print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version(), transformers.__version__, timm.__version__, 'triton', triton.__version__)"; } > $OUT/env.txt 2>&1
timeout 100 python3 -m pytest -q -m gpu tests/test_fused_norm.py tests/test_fastpaths.py -p no:cacheprovider > $OUT/pytest_gpu.txt 2>&1
echo "tests done at ${SECONDS}s" >> $OUT/env.txt
timeout 60 python3 experiments/gpu_speed/sdpa_copy_probe.py --presets llavanext,siglip --backends cudnn \
    --out $OUT/sdpa_copy_probe.json > $OUT/probe.log 2>&1
echo "probe done at ${SECONDS}s" >> $OUT/env.txt
mkdir -p /tmp/lev
b=$(( 560 - SECONDS ))
timeout $(( b + 15 )) python3 experiments/gpu_speed/run_levers.py --presets llavanext --train-presets llavanext --train-batch 64 \
    --sections training --train-attention cudnn_safe --train-sweep fused_gelu_train --train-fused-norm \
    --train-profile --train-variants native_fused_norm_gelu_kernel_full,hf_full,native_fused_norm_full --budget-s $b \
    --out /tmp/lev > /tmp/lev_llavanext.log 2>&1
cp /tmp/lev/llavanext.json $OUT/ 2>/dev/null
grep -h "img/s\|rror\|GPU time\|every native" /tmp/lev_llavanext.log | tail -14 > $OUT/lev_llavanext.tail 2>&1
echo "call wall ${SECONDS}s" >> $OUT/env.txt
