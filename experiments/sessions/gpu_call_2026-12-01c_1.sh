#!/usr/bin/env bash
# Device call 1 of the 2026-12-01 (third) session, one H200: issue 13's 15 connector-zoo cells that did not start
# on 2026-12-01 (seed 2 of perceiver, qformer, c_abstractor, ldp, avgpool; the 39 earlier cells and the bench rows
# come from --resume-from), then the first 15 cells of issue 15's VQA study (seed 0 of all 10 configurations, seed 1
# of five), 2000 steps each. The VQA cells' own results.json / metrics.csv come back as one tarball, so that call 2
# can run the remaining 15 cells and the TTFT bench over the same folder.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, transformers, timm, peft, lightning; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'transformers', transformers.__version__, 'timm', timm.__version__, 'peft', peft.__version__, 'lightning', lightning.__version__)"; } > $OUT/env.txt 2>&1
OMP_NUM_THREADS=1 timeout 240 python3 experiments/connector_zoo/run.py --out /tmp/zoo --jobs 15 --budget-s 60 \
    --resume-from experiments/connector_zoo/results_h200_2026-12-01/results.json > $OUT/zoo.log 2>&1
cp /tmp/zoo/results.md /tmp/zoo/results.json /tmp/zoo/accuracy_vs_tokens.png $OUT/ 2>/dev/null
echo "zoo done at ${SECONDS}s" >> $OUT/env.txt
left=$(( 565 - SECONDS ))
timeout $left python3 experiments/vqa_study/run.py --out /tmp/vqa --jobs 15 --steps 2000 --budget-s 30 > /tmp/vqa_study.log 2>&1
echo "vqa done at ${SECONDS}s" >> $OUT/env.txt
cd /tmp/vqa && { tail -20 /tmp/vqa_study.log > train/study_tail.log
  find train \( -name results.json -o -name metrics.csv -o -name study_tail.log \) -print0 | tar czf $OUT/vqa_cells.tgz --null -T -
  cp results.md $OUT/vqa_results.md; tail -3 train/pixel_unshuffle-f1-s0/train.log > $OUT/vqa_cell_tail.log; }
echo "call wall ${SECONDS}s" >> $OUT/env.txt
