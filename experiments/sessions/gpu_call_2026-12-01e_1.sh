#!/usr/bin/env bash
# Device call 1 of the 2026-12-01 (fifth) session, one H200, issue 16: the towers' attention and fc1+GELU GEMM op by
# op at their own shapes (experiments/gpu_speed/kernel_shapes.py), the gpu-marked tests (cudnn_safe has not run on a
# GPU yet), and the llavanext lever sweep (SDPA backends on the whole tower, head dim 72).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader;
  python3 -c "import torch, transformers, timm; print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version(), transformers.__version__, timm.__version__)"; } > $OUT/env.txt 2>&1
timeout 230 python3 experiments/gpu_speed/kernel_shapes.py --budget-s 200 --out $OUT/kernel_shapes.json > $OUT/kernel_shapes.log 2>&1
echo "kernel_shapes done at ${SECONDS}s" >> $OUT/env.txt
timeout 100 python3 -m pytest -q -x -m gpu tests/test_gpu.py -p no:cacheprovider > $OUT/pytest_gpu.log 2>&1
echo "pytest done at ${SECONDS}s" >> $OUT/env.txt
left=$(( 560 - SECONDS ))
mkdir -p /tmp/lev
[ $left -gt 90 ] && timeout $left python3 experiments/gpu_speed/run_levers.py --presets llavanext --lever-presets llavanext \
    --sections levers --budget-s $(( left - 25 )) --out /tmp/lev > /tmp/lev.log 2>&1
cp /tmp/lev/*.json $OUT/ 2>/dev/null; tail -30 /tmp/lev.log > $OUT/levers_tail.log
echo "call wall ${SECONDS}s" >> $OUT/env.txt
