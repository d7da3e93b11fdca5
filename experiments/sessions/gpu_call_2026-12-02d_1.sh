#!/usr/bin/env bash
# Tenth session, first device call (issue 16): the ninth session's prepared checks (gpu_call_next_kernel_checks.sh)
# plus siglip's throughput after the graph-break fix.
# 1. gpu-marked tests: the one-graph tests (bool(list) fix), the bf16 tower with both training kernels compiled at
#    an MLP width Inductor pads (the bias_gelu ops take padded rows: flexible_layout);
# 2. mlp_layout_probe.py: llavanext's MLP with the GELU kernel against Inductor's GELU, its kernels listed;
# 3. busy_probe.py siglip: throughput native (one graph now) vs transformers and timm, clocks;
# 4. llavanext's full-fine-tuning step: both kernels, transformers, fused_norm alone (the default), native first.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
{ date -u; git rev-parse --short HEAD 2>/dev/null; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv,noheader;
  python3 -c "import torch, transformers, timm, triton; print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version(), transformers.__version__, timm.__version__, 'triton', triton.__version__)"; } > $OUT/env.txt 2>&1
timeout 100 python3 -m pytest -q -m gpu tests/test_fused_norm.py tests/test_fastpaths.py -p no:cacheprovider > $OUT/pytest_gpu.txt 2>&1
echo "tests done at ${SECONDS}s" >> $OUT/env.txt
timeout 80 python3 experiments/gpu_speed/mlp_layout_probe.py --out $OUT/mlp_layout.json > $OUT/mlp_layout.log 2>&1
echo "mlp probe done at ${SECONDS}s" >> $OUT/env.txt
timeout 130 python3 experiments/gpu_speed/busy_probe.py --presets siglip --out $OUT/busy_siglip.json > $OUT/busy.log 2>&1
echo "busy probe done at ${SECONDS}s" >> $OUT/env.txt
mkdir -p /tmp/lev
b=$(( 570 - SECONDS ))
timeout $(( b + 15 )) python3 experiments/gpu_speed/run_levers.py --presets llavanext --train-presets llavanext --train-batch 64 \
    --sections training --train-attention cudnn_safe --train-sweep fused_gelu_train --train-fused-norm \
    --train-profile --train-variants native_fused_norm_gelu_kernel_full,hf_full,native_fused_norm_full --budget-s $b \
    --out /tmp/lev > /tmp/lev_llavanext.log 2>&1
cp /tmp/lev/llavanext.json $OUT/ 2>/dev/null
grep -h "img/s\|rror\|GPU time\|every native" /tmp/lev_llavanext.log | tail -14 > $OUT/lev_llavanext.tail 2>&1
tail -c 3000 /tmp/lev_llavanext.log > $OUT/lev_llavanext.logtail 2>&1
echo "call wall ${SECONDS}s" >> $OUT/env.txt
