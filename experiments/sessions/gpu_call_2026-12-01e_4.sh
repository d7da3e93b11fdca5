#!/usr/bin/env bash
# Device call 4 of the 2026-12-01 (fifth) session, one H200, issue 16: fp8 with static (calibrated) activation scales,
# and row scales with the bias in the GEMM epilogue. The gpu-marked fp8 tests, the quick_train checkpoint's accuracy
# at fp8 static / row (call 3 has bf16-mixed, fp32 and tensor), then fp8 static / tensor / row against the bf16 levers
# per preset, as long as the session's device time lasts.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader;
  python3 -c "import torch, transformers, timm; print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version(), transformers.__version__, timm.__version__)"; } > $OUT/env.txt 2>&1
timeout 90 python3 -m pytest -q -m gpu tests/test_fp8.py -p no:cacheprovider > $OUT/pytest_fp8.log 2>&1
echo "pytest done at ${SECONDS}s" >> $OUT/env.txt
ckpt=.fp8ckpt/quick_train/checkpoints/last.ckpt
for s in static row; do
  timeout 60 python3 -m vtlab +model=smolvlm_debug connector.factor=2 data.task=count data.train_size=2048 data.val_size=256 \
      task=eval task.ckpt_path=$ckpt trainer.accelerator=gpu logger=none task.dtype=fp8 task.fp8_scaling=$s \
      out_dir=/tmp/eval_fp8_$s > /tmp/eval_fp8_$s.log 2>&1
  cp /tmp/eval_fp8_$s/results.json $OUT/eval_fp8_$s.json 2>/dev/null || tail -c 1500 /tmp/eval_fp8_$s.log > $OUT/eval_fp8_$s.err
done
echo "evals done at ${SECONDS}s" >> $OUT/env.txt
mkdir -p /tmp/lev
for spec in siglip:95 smolvlm:95 llavanext:140; do
  p=${spec%%:*}; b=${spec##*:}
  left=$(( 350 - SECONDS )); [ $left -lt 70 ] && break; [ $b -gt $(( left - 10 )) ] && b=$(( left - 10 ))
  timeout $(( b + 10 )) python3 experiments/gpu_speed/run_levers.py --presets $p --lever-presets $p --sections levers \
      --lever-variants all_levers,fp8_static,fp8_tensor,fp8_row --budget-s $b --out /tmp/lev > /tmp/lev_$p.log 2>&1
  cp /tmp/lev/$p.json $OUT/ 2>/dev/null
  echo "$p levers done at ${SECONDS}s" >> $OUT/env.txt
done
for p in siglip smolvlm llavanext; do grep -h "img/s\|error\|Error" /tmp/lev_$p.log | tail -8; done > $OUT/levers_tail.log 2>&1
echo "call wall ${SECONDS}s" >> $OUT/env.txt
