#!/usr/bin/env bash
# Device call 3 of the 2026-12-01 (fifth) session, one H200, issue 16: fp8 with per-row scales. The gpu-marked fp8
# tests, the accuracy of one task=train checkpoint (+experiment=quick_train, trained on CPU, carried in .fp8ckpt/)
# evaluated at bf16-mixed, fp32 and fp8 (row / tensor scales) on the embedded synthetic set, then the throughput
# of fp8 (row / tensor) against the bf16 levers on every preset (run_levers.py --sections levers).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader;
  python3 -c "import torch, transformers, timm; print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version(), transformers.__version__, timm.__version__)"; } > $OUT/env.txt 2>&1
timeout 150 python3 -m pytest -q -m gpu tests/test_fp8.py -p no:cacheprovider > $OUT/pytest_fp8.log 2>&1
echo "pytest done at ${SECONDS}s" >> $OUT/env.txt
ckpt=.fp8ckpt/quick_train/checkpoints/last.ckpt
ev() {  # name, overrides
  local name=$1; shift
  timeout 90 python3 -m vtlab +model=smolvlm_debug connector.factor=2 data.task=count data.train_size=2048 data.val_size=256 \
      task=eval task.ckpt_path=$ckpt trainer.accelerator=gpu logger=none out_dir=/tmp/eval_$name "$@" > /tmp/eval_$name.log 2>&1
}
ev bf16_mixed
ev fp32 trainer.precision=32-true
ev fp8_row task.dtype=fp8 task.fp8_scaling=row
ev fp8_tensor task.dtype=fp8 task.fp8_scaling=tensor
python3 - > $OUT/fp8_eval.json 2>> $OUT/env.txt <<'PY'
import json, pathlib
out = {}
for name in ("bf16_mixed", "fp32", "fp8_row", "fp8_tensor"):
    p = pathlib.Path(f"/tmp/eval_{name}/results.json")
    out[name] = json.loads(p.read_text()) if p.is_file() else {"error": pathlib.Path(f"/tmp/eval_{name}.log").read_text()[-1500:]}
print(json.dumps(out, indent=1))
PY
echo "evals done at ${SECONDS}s" >> $OUT/env.txt
mkdir -p /tmp/lev
for spec in siglip:110 smolvlm:120 llavanext:150; do
  p=${spec%%:*}; b=${spec##*:}
  left=$(( 575 - SECONDS )); [ $left -lt 60 ] && break; [ $b -gt $(( left - 15 )) ] && b=$(( left - 15 ))
  timeout $(( b + 15 )) python3 experiments/gpu_speed/run_levers.py --presets $p --lever-presets $p --sections levers \
      --lever-variants all_levers,fp8_row,fp8_tensor --budget-s $b --out /tmp/lev > /tmp/lev_$p.log 2>&1
  echo "$p levers done at ${SECONDS}s" >> $OUT/env.txt
done
cp /tmp/lev/siglip.json /tmp/lev/smolvlm.json /tmp/lev/llavanext.json $OUT/ 2>/dev/null
for p in siglip smolvlm llavanext; do grep -h "img/s\|error\|Error" /tmp/lev_$p.log | tail -8; done > $OUT/levers_tail.log 2>&1
echo "call wall ${SECONDS}s" >> $OUT/env.txt
