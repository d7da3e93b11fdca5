#!/usr/bin/env bash
# Device call 3 of the 2026-12-01 (third) session, one H200: the 13 VQA-study cells that call 2 did not start (its
# 17 finished cells come in call2_cells.tgz, its TTFT rows in call2_results.json), then issue 16's smolvlm training
# step and the largest batch that fits (run_levers.py --sections training,max_batch --train-extra) with what is left.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; } > $OUT/env.txt 2>&1
mkdir -p /tmp/vqa && tar xzf experiments/vqa_study/call2_cells.tgz -C /tmp/vqa
timeout 330 python3 experiments/vqa_study/run.py --out /tmp/vqa --jobs 15 --steps 2000 --budget-s 60 \
    --set model.longest_edge=64 --ttft-from experiments/vqa_study/call2_results.json > /tmp/vqa_study.log 2>&1
echo "vqa done at ${SECONDS}s" >> $OUT/env.txt
( cd /tmp/vqa && tail -20 /tmp/vqa_study.log > train/study_tail.log
  find train \( -name results.json -o -name metrics.csv -o -name study_tail.log \) -print0 | tar czf $OUT/vqa_cells.tgz --null -T -
  cp results.md $OUT/vqa_results.md; cp results.json $OUT/vqa_results.json )
left=$(( 545 - SECONDS ))
if [ $left -gt 100 ]; then
  timeout $left python3 experiments/gpu_speed/run_levers.py --presets smolvlm --sections training,max_batch --train-extra \
      --budget-s $(( left - 20 )) --total-s $(( left - 10 )) --out /tmp/lev > /tmp/lev.log 2>&1
  cp /tmp/lev/smolvlm.json $OUT/ 2>/dev/null; tail -40 /tmp/lev.log > $OUT/levers_tail.log
fi
echo "call wall ${SECONDS}s" >> $OUT/env.txt
