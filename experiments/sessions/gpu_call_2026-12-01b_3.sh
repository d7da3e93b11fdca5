#!/usr/bin/env bash
# Device call 3 of the 2026-12-01 (second) session, one H200: issue 15's VQA study (experiments/vqa_study/run.py:
# 10 configurations x 3 seeds of task=finetune on data=vqa, then TTFT from task=bench with the LM on a quiet GPU).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, transformers, peft, lightning; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'transformers', transformers.__version__, 'peft', peft.__version__, 'lightning', lightning.__version__)"; } > $OUT/env.txt 2>&1
timeout 530 python3 experiments/vqa_study/run.py --out /tmp/vqa --jobs 15 --budget-s 200 > $OUT/study.log 2>&1
cp /tmp/vqa/results.md /tmp/vqa/results.json /tmp/vqa/accuracy_vs_tokens.png $OUT/ 2>/dev/null
tail -4 /tmp/vqa/train/pixel_unshuffle-f1-s0/train.log > $OUT/cell_tail.log 2>/dev/null
cp /tmp/vqa/train/pixel_unshuffle-f1-s0/csv/metrics.csv $OUT/metrics_f1_s0.csv 2>/dev/null
echo "call wall ${SECONDS}s" >> $OUT/env.txt
