#!/usr/bin/env bash
# Tenth session, second device call (issue 16).
# 1. every gpu-marked test (call 1's pytest output did not come back: printed to stdout here too);
# 2. siglip: the issue's harness table (throughput with task.residual_gemm, batch-1 latency) and the frozen-tower step
#    under autocast (fused_norm, every earlier lever, transformers) and both sides in bf16;
# (smolvlm and llavanext full fine-tuning: the third call)
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv,noheader;
  python3 -c "import torch, transformers, timm, triton; print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version(), transformers.__version__, timm.__version__, 'triton', triton.__version__)"; } > $OUT/env.txt 2>&1
timeout 150 python3 -m pytest -q -m gpu tests/test_levers.py tests/test_gpu.py tests/test_fp8.py tests/test_measure_honesty.py \
    tests/test_fastpaths.py tests/test_fused_norm.py -p no:cacheprovider > $OUT/pytest_gpu.log 2>&1
tail -25 $OUT/pytest_gpu.log
echo "tests done at ${SECONDS}s" >> $OUT/env.txt
mkdir -p /tmp/lev
b=120; timeout $(( b + 15 )) python3 experiments/gpu_speed/run_levers.py --presets siglip --lever-presets siglip \
    --sections throughput,latency_bs1 --residual-levers --residual-variants residual_gemm --budget-s $b --out /tmp/lev/thr \
    > /tmp/lev_thr.log 2>&1
mkdir -p $OUT/thr; cp /tmp/lev/thr/siglip.json $OUT/thr/ 2>/dev/null
grep -h "img/s\| ms\|rror" /tmp/lev_thr.log | tail -16 | tee $OUT/lev_siglip_thr.tail
echo "siglip throughput done at ${SECONDS}s" >> $OUT/env.txt
for spec in siglip:170:256:native_fused_norm_frozen_tower,hf_frozen_tower,native_levers_frozen_tower_bf16,hf_frozen_tower_bf16; do
  IFS=: read p b tb vars <<< "$spec"
  left=$(( 565 - SECONDS )); [ $left -lt 70 ] && break; [ $b -gt $(( left - 10 )) ] && b=$(( left - 10 ))
  extra=""; [ $p = siglip ] && extra="--train-frozen-bf16"
  timeout $(( b + 15 )) python3 experiments/gpu_speed/run_levers.py --presets $p --train-presets $p --train-batch $tb \
      --sections training --train-attention cudnn_safe --train-sweep fused_gelu_train --train-fused-norm $extra \
      --train-profile --train-variants $vars --budget-s $b --out /tmp/lev > /tmp/lev_$p.log 2>&1
  cp /tmp/lev/$p.json $OUT/ 2>/dev/null
  grep -h "img/s\|rror\|GPU time\|every native\|^| native\|^| hf" /tmp/lev_$p.log | tail -16 | tee $OUT/lev_$p.tail
  echo "$p done at ${SECONDS}s" >> $OUT/env.txt
done
echo "call wall ${SECONDS}s" >> $OUT/env.txt; cat $OUT/env.txt
