#!/usr/bin/env bash
# Prepared 2026-12-02 (ninth session) for the next session's first device call, not yet run; issue 16. The ninth
# session's device time ran out before its last changes ran on a GPU:
# 1. the gpu-marked tests: the one-graph tests of the bool(list) fix (uses_stream / uses_fused_norm broke Dynamo's
#    graph on torch 2.11: levers_h200_2026-12-02c/call4/graph_breaks.json), the bf16 tower with both training
#    kernels compiled at an MLP width Inductor pads (the bias_gelu ops now take padded rows: flexible_layout);
# 2. mlp_layout_probe.py: llavanext's MLP with the GELU kernel, with no copies left, against Inductor's GELU;
# 3. llavanext's full-fine-tuning step with both kernels (and `task.fused_norm` alone, the default now) against
#    transformers, native first, ~130 s per variant.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv,noheader;
  python3 -c "import torch, transformers, timm, triton; print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version(), transformers.__version__, timm.__version__, 'triton', triton.__version__)"; } > $OUT/env.txt 2>&1
timeout 90 python3 -m pytest -q -m gpu tests/test_fused_norm.py tests/test_fastpaths.py -p no:cacheprovider > $OUT/pytest_gpu.txt 2>&1
echo "tests done at ${SECONDS}s" >> $OUT/env.txt
timeout 90 python3 experiments/gpu_speed/mlp_layout_probe.py --out $OUT/mlp_layout.json > $OUT/mlp_layout.log 2>&1
echo "mlp probe done at ${SECONDS}s" >> $OUT/env.txt
mkdir -p /tmp/lev
b=$(( 560 - SECONDS ))
timeout $(( b + 15 )) python3 experiments/gpu_speed/run_levers.py --presets llavanext --train-presets llavanext --train-batch 64 \
    --sections training --train-attention cudnn_safe --train-sweep fused_gelu_train --train-fused-norm \
    --train-profile --train-variants native_fused_norm_gelu_kernel_full,hf_full,native_fused_norm_full --budget-s $b \
    --out /tmp/lev > /tmp/lev_llavanext.log 2>&1
cp /tmp/lev/llavanext.json $OUT/ 2>/dev/null
grep -h "img/s\|rror\|GPU time\|every native" /tmp/lev_llavanext.log | tail -14 > $OUT/lev_llavanext.tail 2>&1
echo "call wall ${SECONDS}s" >> $OUT/env.txt
